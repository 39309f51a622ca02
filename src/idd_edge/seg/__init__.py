"""Semantic segmentation: models, training, distillation, evaluation and run comparison.

Nothing here may reach the network: backbones are built with `pretrained=False` and ImageNet weights
come only from local files (see `pretrained.py`); the Hugging Face hub is switched to offline mode
defensively in case a library tries anyway.

`build_model` and `load_trained` are importable from here for later stages; they load lazily so that
importing the package (the CLI does) does not import torch.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP threads that busy-wait between parallel regions (libgomp's default) made CPU training 10x
# slower on an oversubscribed 2-core machine (175 s instead of 16 s per epoch); passive waiting costs
# little on an idle one. Only effective before torch loads (the CLI imports torch lazily); export
# OMP_WAIT_POLICY=ACTIVE to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["build_model", "load_trained"]


def __getattr__(name: str) -> Any:
    if name == "build_model":
        from idd_edge.seg.models import build_model

        return build_model
    if name == "load_trained":
        from idd_edge.seg.trained import load_trained

        return load_trained
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
