"""Small YOLOv8n-seg models for the yolo tests, built once per test session (shared by several modules).

An untrained model's head emits near-constant boxes and tied scores (its biases dominate), which would
make detection-by-detection comparisons depend on tie-breaking. The head's last convolutions are
therefore perturbed with fixed random weights: detections then vary in size, place, class and mask,
which is what a parity test needs. Post-processing parity does not care whether the model is good.
"""

from __future__ import annotations

import functools
from copy import deepcopy
from pathlib import Path

import numpy as np

from idd_edge.yolo.offline import import_ultralytics

NUM_CLASSES = 5
EXPORT_IMGSZ = 128


def build_model(num_classes: int = NUM_CLASSES, seed: int = 0):
    """A YOLOv8n-seg SegmentationModel (eval mode) with a perturbed head."""
    import_ultralytics()
    import torch
    from ultralytics.nn.tasks import SegmentationModel

    torch.manual_seed(seed)
    model = SegmentationModel("yolov8n-seg.yaml", nc=num_classes, verbose=False)
    head = model.model[-1]
    with torch.no_grad():
        for branch in (head.cv2, head.cv3, head.cv4):
            for sequence in branch:
                sequence[-1].weight.normal_(0.0, 0.05)
        for sequence in head.cv3:
            sequence[-1].bias.uniform_(-6.0, 1.0)
        for sequence in head.cv2:
            sequence[-1].bias.normal_(0.0, 1.0)
    model.names = {i: f"class_{i}" for i in range(num_classes)}
    return model.eval()


def save_checkpoint(model, path: Path) -> Path:
    """Save `model` the way Ultralytics' trainer saves best.pt (loadable with weights_only=True)."""
    import torch
    from ultralytics import __version__

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"epoch": -1, "model": deepcopy(model).half(), "ema": None, "updates": None, "optimizer": None,
         "train_args": {"task": "segment", "imgsz": EXPORT_IMGSZ}, "version": __version__},
        path,
    )
    return path


@functools.cache
def exported_model(base: Path) -> tuple[Path, Path]:
    """(checkpoint, export directory) of the perturbed model, exported once per session under `base`."""
    from idd_edge.yolo.export import ExportSettings, export

    checkpoint = save_checkpoint(build_model(), base / "perturbed.pt")
    out = base / "export"
    settings = ExportSettings(imgsz=EXPORT_IMGSZ, opset=11, parity_tolerance=1e-4)
    export(checkpoint, out, settings, {"conf_threshold": 0.5})
    return checkpoint, out


def street_image(height: int = 90, width: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth BGR test frame (not square, so the letterbox pads)."""
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 4)
