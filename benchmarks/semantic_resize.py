"""Measurement: how far cv2 resizes are from the antialiased torchvision resize the gate used to certify on.

    .venv/bin/python benchmarks/semantic_resize.py           # table of mean |difference| in grey levels
    .venv/bin/python benchmarks/semantic_resize.py --json out.json

Why: the semantic input must be made by one function on the device (numpy + OpenCV, no torch) and in
training validation, calibration and the gate. This compares, on textured frames (a painted synthetic
road scene of the pipeline's generator, and seeded fine noise as the worst case), the old host resize
(torchvision `Resize(antialias=True)` on uint8) with cv2 `INTER_LINEAR` (the device's old resize) and cv2
`INTER_AREA`, and with `idd_edge_runtime.preprocess.resize_semantic` (the one function now used
everywhere). Figures: mean and max |difference| over all pixels and channels, in 0-255 grey levels, and
the median time of one resize on one CPU thread (what it costs per frame on the device, relatively).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.transforms import v2

from idd_edge_runtime.preprocess import resize_semantic

# (source W, H) -> (target W, H): real IDD frames to the seed's 512x512 input, the synthetic default's
# 256x144 frames to its 224x128 input, one axis enlarged while the other shrinks, both enlarged.
CASES = (((1280, 720), (512, 512)), ((256, 144), (224, 128)), ((320, 180), (224, 224)), ((200, 100), (400, 300)))


def torchvision_antialiased(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    return v2.Resize([height, width], antialias=True)(tensor).permute(1, 2, 0).numpy()


def frames(width: int, height: int) -> dict[str, np.ndarray]:
    from idd_edge.data.synth import make_scene

    _annotation, scene = make_scene(np.random.default_rng(0), width, height)
    noise = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return {"synthetic scene": scene, "noise": noise}


def median_ms(resize, runs: int = 30) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        resize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure() -> list[dict[str, object]]:
    cv2.setNumThreads(1)
    rows = []
    for (src_w, src_h), (dst_w, dst_h) in CASES:
        for frame_name, rgb in frames(src_w, src_h).items():
            reference = torchvision_antialiased(rgb, dst_w, dst_h).astype(np.int16)
            candidates = {
                "cv2 INTER_LINEAR": lambda: cv2.resize(rgb, (dst_w, dst_h), interpolation=cv2.INTER_LINEAR),
                "cv2 INTER_AREA": lambda: cv2.resize(rgb, (dst_w, dst_h), interpolation=cv2.INTER_AREA),
                "resize_semantic": lambda: resize_semantic(rgb, dst_w, dst_h),
            }
            for name, resize in candidates.items():
                diff = np.abs(resize().astype(np.int16) - reference)
                rows.append({"case": f"{src_w}x{src_h} -> {dst_w}x{dst_h}", "frame": frame_name, "resize": name,
                             "mean_abs_diff": round(float(diff.mean()), 2), "max_abs_diff": int(diff.max()),
                             "ms": round(median_ms(resize), 3)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = measure()
    print("| case | frame | vs torchvision antialiased | mean abs diff | max abs diff | ms (1 thread) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['frame']} | {row['resize']} | {row['mean_abs_diff']:.2f} | {row['max_abs_diff']} "
              f"| {row['ms']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
