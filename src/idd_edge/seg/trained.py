"""Trained weights for downstream stages: `<run_dir>/model.pt` (plain state dict) + `model.json`.

`model.json` says how to rebuild the network without any training code: the model config, class count,
input size, label level and class names, and the input normalisation (RGB, mean/std on the 0-255
pixel scale: `(pixel - mean) / std`, the form of the Hailo model script's `normalization` layer).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from idd_edge import atomic
from idd_edge.errors import InputError
from idd_edge.jsonfile import read_json
from idd_edge.seg.data import IMAGENET_MEAN, IMAGENET_STD
from idd_edge.seg.models import build_model, set_export_mode

WEIGHTS_NAME = "model.pt"
INFO_NAME = "model.json"
NORMALIZATION = {
    "color": "RGB",
    "mean": [round(m * 255, 3) for m in IMAGENET_MEAN],
    "std": [round(s * 255, 3) for s in IMAGENET_STD],
}


def save_trained(run_dir: Path, state_dict: Mapping[str, torch.Tensor], info: dict[str, Any],
                 normalization: Mapping[str, Any] = NORMALIZATION) -> None:
    """Atomically write the weights and their description (info must name model, classes, size, level);
    `normalization` is the input scaling the network was trained with (ImageNet unless said otherwise)."""
    for key in ("run", "model", "num_classes", "input_size", "label_level", "class_names"):
        if key not in info:
            raise ValueError(f"model info lacks {key!r}")
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, buffer)
    atomic.write_bytes(run_dir / WEIGHTS_NAME, buffer.getvalue())
    atomic.write_json(run_dir / INFO_NAME, {**info, "normalization": dict(normalization), "weights": WEIGHTS_NAME})


def read_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / INFO_NAME
    info = read_json(path, missing="trained model description not found; run the training stage first")
    for key in ("model", "num_classes", "input_size", "label_level"):
        if key not in info:
            raise InputError(path, f"missing key {key!r}")
    return info


def load_trained(run_dir: str | Path, input_size: tuple[int, int] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained network in eval + export mode (plain tensor output) and return it with its info.

    The network expects (N, 3, H, W) float input at `info["input_size"]` (or `input_size`: a network
    with fixed interpolation sizes, LR-ASPP, is rebuilt for it), normalised as `info["normalization"]`
    says, and returns (N, num_classes, H, W) logits."""
    run_dir = Path(run_dir)
    info = read_info(run_dir)
    model_cfg = dict(info["model"], pretrained=False)  # the trained weights replace any ImageNet init
    model = build_model(model_cfg, int(info["num_classes"]), tuple(input_size or info["input_size"]))
    weights = run_dir / WEIGHTS_NAME
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(weights, "trained weights not found; run the training stage first") from None
    except (RuntimeError, ValueError, EOFError) as exc:
        raise InputError(weights, f"cannot read weights: {exc}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(weights, f"weights do not fit {info['model'].get('name')}: {exc}") from None
    return set_export_mode(model.eval(), True), info
