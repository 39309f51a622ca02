"""Tiny real bundles for the runtime tests: ONNX models exported with torch, a manifest, the file layout.

The models are hand-wired so their answers are known in advance:
* semantic (64x64, ImageNet normalisation on the host): red -> person, green -> rider, blue -> sky,
  anything grey -> road. One variant ends in logits, one in an on-graph ArgMax.
* instance (128x128, YOLOv8-seg ONNX layout): a 4x4 grid of 32-pixel anchor boxes; a cell that is
  mostly red is a "person", mostly blue a "car", and each mask is the red (or blue) pixels.
torch is used here, in the tests, only: the runtime package never imports it.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from idd_edge_runtime.manifest import sha256_file

SEMANTIC_CLASSES = [
    {"name": "road", "color": [128, 64, 128]},
    {"name": "person", "color": [220, 20, 60]},
    {"name": "rider", "color": [255, 0, 0]},
    {"name": "sky", "color": [70, 130, 180]},
]
INSTANCE_CLASSES = [
    {"name": "person", "color": [255, 200, 0]},
    {"name": "car", "color": [0, 255, 255]},
]
IMAGENET = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
YOLO_NORMALIZATION = {"mean": [0, 0, 0], "std": [255, 255, 255]}
SEMANTIC_SIZE = 64
INSTANCE_SIZE = 128


def _export(module: Any, example: Any, path: Path, output_names: List[str]) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), example, str(path), input_names=["images"], output_names=output_names, opset_version=17, dynamo=False
        )


def export_semantic(path: Path, argmax: bool = False, size: int = SEMANTIC_SIZE) -> Path:
    """Colour-rule segmenter as ONNX: NCHW float input normalised with ImageNet mean/std on the host."""
    import torch

    # Scores in raw [0, 1] RGB: road 0.1, person r-g-b, rider g-r-b, sky b-r-g; folded into a 1x1 conv on
    # normalised input: raw_c = (x_c * std_c + mean_c) / 255.
    rules = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    bias = torch.tensor([0.1, 0.0, 0.0, 0.0])
    mean, std = torch.tensor(IMAGENET["mean"]), torch.tensor(IMAGENET["std"])

    class Segmenter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Conv2d(3, 4, 1)
            with torch.no_grad():
                self.head.weight.copy_((rules * std / 255.0)[:, :, None, None])
                self.head.bias.copy_(bias + (rules * mean / 255.0).sum(dim=1))

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            logits = self.head(x)
            return torch.argmax(logits, dim=1).to(torch.uint8) if argmax else logits

    _export(Segmenter(), torch.zeros(1, 3, size, size), path, ["labels" if argmax else "logits"])
    return path


def export_instance(path: Path, size: int = INSTANCE_SIZE) -> Path:
    """YOLOv8-seg-layout ONNX: output0 (1, 4+2+32, 16) and prototypes (1, 32, size/4, size/4)."""
    import torch

    cell = size // 4
    centres = (torch.arange(4, dtype=torch.float32) + 0.5) * cell
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    boxes = torch.stack([cx.flatten(), cy.flatten(), torch.full((16,), float(cell)), torch.full((16,), float(cell))])

    class TinyYoloSeg(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("boxes", boxes[None])

        def forward(self, x: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
            r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
            redness, blueness = r - (g + b) / 2, b - (r + g) / 2
            pool = torch.nn.functional.avg_pool2d
            scores = torch.cat([pool(redness, cell), pool(blueness, cell)], dim=1)  # (1, 2, 4, 4)
            probs = torch.sigmoid(20.0 * (scores - 0.3)).flatten(2)  # (1, 2, 16)
            coefficients = torch.cat([probs, torch.zeros(1, 30, 16)], dim=1)  # (1, 32, 16)
            output0 = torch.cat([self.boxes, probs, coefficients], dim=1)
            protos = 20.0 * (torch.cat([pool(redness, 4), pool(blueness, 4)], dim=1) - 0.3)
            protos = torch.cat([protos, torch.zeros(1, 30, size // 4, size // 4)], dim=1)
            return output0, protos

    _export(TinyYoloSeg(), torch.zeros(1, 3, size, size), path, ["output0", "output1"])
    return path


def input_spec(size: int, fmt: str, normalization: Dict[str, Any]) -> Dict[str, Any]:
    """A manifest `input` block: a HEF takes raw uint8 NHWC (normalisation runs on the chip), ONNX float32 NCHW."""
    hef = fmt == "hef"
    return {
        "width": size,
        "height": size,
        "layout": "NHWC" if hef else "NCHW",
        "dtype": "uint8" if hef else "float32",
        "normalization": None if hef else normalization,
    }


def semantic_entry(name: str, file: str, bundle: Path, argmax: bool = False, fmt: str = "onnx") -> Dict[str, Any]:
    return {
        "name": name,
        "role": "semantic",
        "format": fmt,
        "file": file,
        "sha256": sha256_file(bundle / file),
        "input": input_spec(SEMANTIC_SIZE, fmt, IMAGENET),
        "output": {"kind": "argmax" if argmax else "logits"},
        "classes": SEMANTIC_CLASSES,
        "gate": {"miou": 0.9, "threshold": 0.5, "passed": True},
    }


def instance_entry(name: str, file: str, bundle: Path, fmt: str = "onnx", size: int = INSTANCE_SIZE) -> Dict[str, Any]:
    return {
        "name": name,
        "role": "instance",
        "format": fmt,
        "file": file,
        "sha256": sha256_file(bundle / file),
        "input": input_spec(size, fmt, YOLO_NORMALIZATION),
        "output": {"kind": "yolov8-seg"},
        "classes": INSTANCE_CLASSES,
        "postprocess": {"conf": 0.5, "iou": 0.5, "reg_max": 16, "mask_dim": 32},
        "gate": {"mask_map50": 0.5, "passed": True},
    }


def manifest_dict(models: List[Dict[str, Any]], version: str = "v1", hailo: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {
        "format_version": 1,
        "version": version,
        "created": datetime(2025, 1, 31, 12, 0, tzinfo=timezone.utc).isoformat(),
        "label_level": "level2",
        "source": {"git_commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False, "dvc_data": {"data/splits": "abc123.dir"}},
        "hailo": hailo or {"hw_arch": None, "dfc_version": None, "hailort_version": None},
        "models": models,
    }


def write_manifest(bundle: Path, data: Dict[str, Any]) -> Path:
    path = bundle / "manifest.json"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


_EXPORTED: Dict[str, Path] = {}


def exported_models() -> Path:
    """The three test models, exported once per test process into a temporary folder."""
    import atexit
    import shutil
    import tempfile

    if "dir" not in _EXPORTED:
        folder = Path(tempfile.mkdtemp(prefix="idd-edge-runtime-models-"))
        atexit.register(shutil.rmtree, folder, True)
        export_semantic(folder / "seg-logits.onnx")
        export_semantic(folder / "seg-argmax.onnx", argmax=True)
        export_instance(folder / "yolo.onnx")
        _EXPORTED["dir"] = folder
    return _EXPORTED["dir"]


def build_onnx_bundle(bundle: Path, version: str = "v1") -> Path:
    """Bundle with two semantic models (logits, on-graph argmax) and the instance model, all ONNX."""
    import shutil

    (bundle / "models").mkdir(parents=True, exist_ok=True)
    for filename in ("seg-logits.onnx", "seg-argmax.onnx", "yolo.onnx"):
        shutil.copyfile(exported_models() / filename, bundle / "models" / filename)
    models = [
        semantic_entry("seg-logits", "models/seg-logits.onnx", bundle),
        semantic_entry("seg-argmax", "models/seg-argmax.onnx", bundle, argmax=True),
        instance_entry("yolo-tiny", "models/yolo.onnx", bundle),
    ]
    write_manifest(bundle, manifest_dict(models, version=version))
    return bundle


#: Where make_frame() puts its "person" (red) and "car" (blue): frame slices (rows, cols). At 160x120 the
#: letterbox scales by 0.8 and pads 16 rows on top, so these are exactly instance-model grid cells
#: (rows 1-2, column 0) and (row 1, column 3).
PERSON_REGION = (slice(20, 100), slice(0, 40))
CAR_REGION = (slice(20, 60), slice(120, 160))


def make_frame(width: int = 160, height: int = 120) -> np.ndarray:
    """BGR frame: grey road, a textured red block (a "person") and a blue block (a "car"; "sky" to the segmenter)."""
    frame = np.full((height, width, 3), 110, dtype=np.uint8)
    rows, cols = PERSON_REGION
    frame[rows, cols] = (0, 0, 230)
    frame[rows.start : rows.stop : 2, cols.start : cols.stop : 2] = (0, 0, 160)  # texture, so a blur is measurable
    frame[CAR_REGION] = (230, 0, 0)
    return frame


def write_video(path: Path, frames: int = 12, width: int = 160, height: int = 120, moving: bool = False, fps: float = 10.0) -> Path:
    """MJPG clip of make_frame(); `moving`: the blue "car" block slides 6 px right per frame, wrapping around
    right of the "person" (which stays where it is)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    base = make_frame(width, height)
    for index in range(frames):
        frame = base
        if moving:
            frame = base.copy()
            frame[CAR_REGION] = 110
            rows, cols = CAR_REGION
            free = PERSON_REGION[1].stop  # first column right of the person
            frame[rows, free + (np.arange(cols.start, cols.stop) - free + 6 * index) % (width - free)] = (230, 0, 0)
        writer.write(frame)
    writer.release()
    return path
