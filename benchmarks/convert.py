"""Benchmark: polygon -> mask conversion vs a straightforward implementation of the official approach.

    .venv/bin/python benchmarks/convert.py [--images 12] [--objects 200] [--out /dev/shm]

Generates N 1920x1080 IDD annotations with ~200 objects each (`idd_edge.data.synth.make_scene` when that
module exists, else random plausible polygons: large stuff regions first, then smaller things, ~13%
deleted, some groups, float coordinates, some outside the frame) plus matching images, then times
  - reference: three PIL passes per file (label "L", instance "I", colour "RGBA"), each saved with PIL's
    default PNG compression (the official toolkit; instance saved as 16-bit since Pillow cannot write "I"),
  - ours: `convert_file` (one PIL pass + look-up tables + OpenCV PNG level 1 + atomic writes),
alternating file by file with the reference so both see the same machine load; asserts that semantic,
colour and instance pixels are identical; prints images/s per core (CPU time of this process, robust on
a shared machine; wall shown too) and the ratio; then converts a larger set with 1 and 2 worker
processes (`convert_all`) and prints the scaling.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from idd_edge.data import official
from idd_edge.data.convert import ConvertOptions, convert_all, convert_file, discover, run_pipeline
from idd_edge.labels import NAME_TO_LABEL

WIDTH, HEIGHT = 1920, 1080
ENCODING = "level3Id"

STUFF = ["road", "sky", "building", "vegetation", "sidewalk", "wall", "fence", "curb", "billboard", "pole",
         "traffic sign", "obs-str-bar-fallback", "fallback background", "drivable fallback"]
THINGS = ["car", "person", "motorcycle", "autorickshaw", "rider", "bus", "truck", "bicycle", "vehicle fallback"]


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float, vertices: int) -> list[list[float]]:
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = radius * rng.uniform(0.5, 1.0, vertices)
    xs, ys = cx + radii * np.cos(angles), cy + radii * np.sin(angles) * rng.uniform(0.4, 1.0)
    return np.round(np.stack([xs, ys], axis=1), 2).tolist()


def random_scene(rng: np.random.Generator, width: int, height: int, objects: int) -> dict:
    """A plausible IDD polygon document: stuff first (large), things after (smaller), ~13% deleted."""
    entries = []
    for index in range(objects):
        stuff = index < objects * 0.35
        name = str(rng.choice(STUFF if stuff else THINGS))
        if not stuff and rng.random() < 0.08:
            name += "group"
        radius = float(np.exp(rng.uniform(np.log(60), np.log(700)))) if stuff else float(np.exp(rng.uniform(np.log(8), np.log(220))))
        cx, cy = rng.uniform(-0.05, 1.05) * width, rng.uniform(-0.05, 1.05) * height
        polygon = _blob(rng, cx, cy, radius, int(rng.integers(6, 60)))
        entries.append({"label": name, "polygon": polygon, "deleted": int(rng.random() < 0.13), "id": index})
    return {"imgHeight": height, "imgWidth": width, "objects": entries}


def make_dataset(root: Path, images: int, objects: int, seed: int = 0, use_synth: bool = True) -> str:
    """Write the benchmark tree; returns which scene generator made it."""
    rng = np.random.default_rng(seed)
    make_scene = None
    if use_synth:
        try:
            from idd_edge.data.synth import make_scene  # the synthetic-data stage's generator, when present
        except ImportError:
            pass
    black = cv2.imencode(".jpg", np.zeros((HEIGHT, WIDTH, 3), np.uint8))[1].tobytes()
    for i in range(images):
        if make_scene is not None:
            # ~8 + 42 * density objects per scene (synth.py); the painted image is not needed here.
            document, _ = make_scene(rng, WIDTH, HEIGHT, density=max(objects - 8, 1) / 42)
        else:
            document = random_scene(rng, WIDTH, HEIGHT, objects)
        drive = str(i % 2)
        ann = root / "gtFine" / "train" / drive / f"{i:06d}_gtFine_polygons.json"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(json.dumps(document))
        img = root / "leftImg8bit" / "train" / drive / f"{i:06d}_leftImg8bit.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes(black)
    return "synth.make_scene" if make_scene is not None else "random polygons"


def reference_convert(annotation: Path, out_dir: Path) -> None:
    """The official approach: read JSON, three PIL passes, three PIL PNG saves (default compression)."""
    from PIL import Image

    document = json.loads(annotation.read_text())
    stem = annotation.name[: -len("_gtFine_polygons.json")]
    official.label_image(document, ENCODING).save(out_dir / f"{stem}_label.png")
    instance = np.asarray(official.instance_image(document, ENCODING)).astype(np.uint16)
    Image.fromarray(instance).save(out_dir / f"{stem}_instance.png")
    official.color_image(document).save(out_dir / f"{stem}_color.png")


def _check_identity(jobs, reference_dir: Path, ours_dir: Path) -> None:
    """Semantic, instance and colour pixels of ours equal the reference's, for every file."""
    from PIL import Image

    for job in jobs:
        folder = ours_dir / "gtFine" / job.split / job.drive
        ref = {kind: np.asarray(Image.open(reference_dir / f"{job.image_id}_{kind}.png"))
               for kind in ("label", "instance", "color")}
        label = cv2.imread(str(folder / f"{job.image_id}_gtFine_label{ENCODING}s.png"), cv2.IMREAD_UNCHANGED)
        instance = cv2.imread(str(folder / f"{job.image_id}_gtFine_instance{ENCODING}s.png"), cv2.IMREAD_UNCHANGED)
        color = cv2.cvtColor(cv2.imread(str(folder / f"{job.image_id}_gtFine_labelColors.png")), cv2.COLOR_BGR2RGB)
        assert np.array_equal(label, ref["label"]), f"semantic differs: {job.annotation}"
        assert np.array_equal(instance, ref["instance"]), f"instance differs: {job.annotation}"
        assert np.array_equal(color, ref["color"][..., :3]) and (ref["color"][..., 3] == 255).all(), job.annotation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds over all images")
    parser.add_argument("--scaling-images", type=int, default=48, help="images for the 1 vs 2 worker run")
    parser.add_argument("--random", action="store_true", help="random polygons instead of synth.make_scene")
    parser.add_argument("--out", default=None, help="scratch folder (default: a temp dir; /dev/shm avoids disk)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cv2.setNumThreads(1)  # per-core comparison

    scratch = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=args.out))
    try:
        root = scratch / "idd"
        generator = make_dataset(root, args.images, args.objects, use_synth=not args.random)
        jobs, _ = discover(root)
        listed = [json.loads((root / job.annotation).read_text())["objects"] for job in jobs]
        print(f"{len(jobs)} annotations {WIDTH}x{HEIGHT}, {np.mean([len(o) for o in listed]):.0f} objects each "
              f"({np.mean([sum(not x['deleted'] for x in o) for o in listed]):.0f} not deleted), {generator}, "
              f"encoding {ENCODING}, outputs semantic + instance + colour")

        # Per core: reference and ours alternate file by file, so both see the same load on a shared machine.
        reference_dir, ours_dir = scratch / "reference", scratch / "ours"
        reference_dir.mkdir()
        options = ConvertOptions(ours_dir, ENCODING, semantic=True, instance=True, color=True, panoptic=False)
        cpu = {"reference": 0.0, "ours": 0.0}
        wall = {"reference": 0.0, "ours": 0.0}
        for _ in range(args.rounds):
            for job in jobs:
                for name, convert in (("reference", lambda: reference_convert(root / job.annotation, reference_dir)),
                                      ("ours", lambda: convert_file(job, options))):
                    w, c = time.perf_counter(), time.process_time()
                    convert()
                    cpu[name] += time.process_time() - c
                    wall[name] += time.perf_counter() - w
        _check_identity(jobs, reference_dir, ours_dir)
        n = len(jobs) * args.rounds
        print(f"pixel identity: semantic, instance and colour identical on all {len(jobs)} files")
        print(f"{'':36s}{'CPU s/img':>10s}{'img/s/core':>12s}{'wall s/img':>12s}")
        for name, title in (("reference", "reference (3 PIL passes + PIL saves)"), ("ours", "ours (convert_file)")):
            print(f"{title:36s}{cpu[name] / n:10.3f}{n / cpu[name]:12.2f}{wall[name] / n:12.3f}")
        print(f"speed-up per core: {cpu['reference'] / cpu['ours']:.2f}x CPU time "
              f"({wall['reference'] / wall['ours']:.2f}x wall; target >= 3x)")

        # Scaling: a bigger set (the same scenes repeated), workers 1 and 2, after a warm-up that starts the
        # forkserver once (a one-time cost per process, reported separately).
        scaling_jobs = [jobs[i % len(jobs)] for i in range(args.scaling_images)]
        scaling_options = ConvertOptions(scratch / "scaling", ENCODING, semantic=True, instance=True, color=True)
        started = time.perf_counter()
        list(convert_all(scaling_jobs[:2], scaling_options, 2))
        print(f"worker start-up (forkserver, first pool in this process): {time.perf_counter() - started:.2f} s")
        rates = {}
        for workers in (1, 2):
            started = time.perf_counter()
            results = list(convert_all(scaling_jobs, scaling_options, workers))
            elapsed = time.perf_counter() - started
            rates[workers] = len(scaling_jobs) / elapsed
            worker_cpu = sum(r.cpu_seconds for r in results) / len(results)
            print(f"workers={workers}: {rates[workers]:6.2f} img/s wall over {len(scaling_jobs)} images, "
                  f"{worker_cpu:.3f} CPU s/img inside the workers")
        print(f"scaling 1 -> 2 workers: {rates[2] / rates[1]:.2f}x (ideal 2.00x) on {os.cpu_count()} visible cores, "
              f"load average {os.getloadavg()[0]:.1f} (a shared machine makes this noisy)")
        started = time.perf_counter()
        run_pipeline(root, scratch / "pipeline", ENCODING, do_instance=True, do_color=True, workers=2)
        print(f"run_pipeline workers=2 end to end (discovery, report): {len(jobs) / (time.perf_counter() - started):.2f} img/s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
