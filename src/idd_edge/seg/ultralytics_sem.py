"""Ultralytics YOLO26-sem as a network of this project: (N, 3, H, W) in, (N, C, H, W) logits out.

Ultralytics' `SemanticSegmentationModel` is rebuilt from its model YAML (shipped inside the package: no
checkpoint, no pickle, no network) and wrapped so that it behaves like the students: in eval mode its
`SemanticSegment` head returns stride-8 logits, which the wrapper resizes bilinearly to the input size
(the upsampling Ultralytics' own export adds), so evaluation, export, quantization and the device see
the same contract as for every other run. Training mode returns Ultralytics' own output (main and
auxiliary logits), so the wrapped model trains under Ultralytics' trainer unchanged.

Its input is RGB scaled to 0-1, Ultralytics' preprocessing: `NORMALIZATION` says so in the
`(pixel - mean) / std` form every consumer of `model.json` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from idd_edge.yolo.offline import import_ultralytics

ARCH = "ultralytics_sem"
#: Ultralytics feeds images as RGB / 255 (no mean subtraction), on the 0-255 scale of `model.json`.
NORMALIZATION = {"color": "RGB", "mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]}


class UltralyticsSemantic(nn.Module):
    """An Ultralytics semantic model returning logits at the input resolution in eval mode."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> Any:
        output = self.net(images)
        if self.training:
            return output
        return F.interpolate(output, size=images.shape[-2:], mode="bilinear", align_corners=False)


def build_semantic_net(model_yaml: str, num_classes: int) -> nn.Module:
    """Ultralytics' `SemanticSegmentationModel` of `model_yaml` (e.g. yolo26n-sem.yaml), randomly initialised."""
    import_ultralytics()
    from ultralytics.nn.tasks import SemanticSegmentationModel

    return SemanticSegmentationModel(model_yaml, nc=num_classes, verbose=False)


def build_ultralytics_sem(model_cfg: Mapping[str, Any], num_classes: int) -> UltralyticsSemantic:
    """The wrapped network of a `model.json` model config (`arch: ultralytics_sem`, `yaml: <model YAML>`)."""
    if "yaml" not in model_cfg:
        raise ValueError(f"{ARCH} model config needs `yaml` (the Ultralytics model YAML), got {dict(model_cfg)}")
    return UltralyticsSemantic(build_semantic_net(str(model_cfg["yaml"]), num_classes))
