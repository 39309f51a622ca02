"""Tiny inputs for the export/calibrate/quantize/gate/bundle tests: conv nets and split directories."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from idd_edge import atomic


class TinySegNet(nn.Module):
    """A 2-conv segmentation net returning (N, C, H, W) logits at input resolution (static resize)."""

    def __init__(self, num_classes: int = 4, size_hw: tuple[int, int] = (32, 32), seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, num_classes, 1))
        self.size_hw = size_hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.body(x), size=self.size_hw, mode="bilinear", align_corners=False)


def make_split(root: Path, split: str, count: int, num_classes: int, size_hw: tuple[int, int] = (24, 40),
               seed: int = 0, rare_class: int | None = None, rare_every: int = 0) -> list[Path]:
    """Write `count` random RGB images + masks under `root/<split>/{images,masks}`; returns image paths.

    Masks hold classes 0..num_classes-1 except `rare_class`, which only images with index % rare_every == 0
    contain (a small patch), plus a void (255) stripe.
    """
    rng = np.random.default_rng(seed)
    height, width = size_hw
    paths = []
    common = [c for c in range(num_classes) if c != rare_class]
    for index in range(count):
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        mask = rng.choice(common, size=(height, width)).astype(np.uint8)
        mask[:, :2] = 255
        if rare_class is not None and rare_every and index % rare_every == 0:
            mask[4:8, 4:8] = rare_class
        stem = f"drive{seed}_{split}{index:03d}"
        image_path = root / split / "images" / f"{stem}.png"
        atomic.write_png(image_path, image)
        atomic.write_png(root / split / "masks" / f"{stem}.png", mask)
        paths.append(image_path)
    return paths


def read_png_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
