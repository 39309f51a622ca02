"""What each exported model expects at its input, read from its `export.json`.

The export stage records per model how a camera frame becomes its input (semantic models: resize to the
training size; YOLO: letterbox) and the normalization that follows (ImageNet mean/std or /255, on the
0-255 scale like the Hailo model script). Calibration, quantization, compilation and the gate read it
from here, so the four stages cannot disagree about an input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from idd_edge.errors import InputError
from idd_edge.jsonfile import read_json

PREPROCESS_KINDS = ("resize", "letterbox")


def load_exports(export_dir: Path) -> list[dict[str, Any]]:
    """Every `export_dir/<model>/export.json`, with `path` set to its ONNX file; sorted by model name."""
    if not export_dir.is_dir():
        raise InputError(export_dir, "export directory not found; run `idd-edge export` first")
    records = []
    for path in sorted(export_dir.glob("*/export.json")):
        record = read_json(path)
        for key in ("name", "role", "file", "input", "preprocess", "normalization", "hailo"):
            if key not in record:
                raise InputError(path, f"missing key {key!r}; re-run `idd-edge export`")
        if record["preprocess"] not in PREPROCESS_KINDS:
            raise InputError(path, f"preprocess must be one of {PREPROCESS_KINDS}, got {record['preprocess']!r}")
        record["path"] = str(path.parent / record["file"])
        records.append(record)
    if not records:
        raise InputError(export_dir, "no exported models (*/export.json); run `idd-edge export` first")
    return records


def input_hw(record: Mapping[str, Any]) -> tuple[int, int]:
    """(H, W) of a model's NCHW input."""
    shape = record["input"]["shape"]
    return int(shape[2]), int(shape[3])


def calibration_key(record: Mapping[str, Any]) -> str:
    """Name of the calibration array a model uses: models with the same preprocessing share one."""
    height, width = input_hw(record)
    return f"{record['preprocess']}_{height}x{width}"


def resize_rgb(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Semantic preprocessing: the frame resized to the input size by the device runtime's own function
    (`idd_edge_runtime.preprocess.resize_semantic`, which the training validation transform uses too), as
    float32 0-255. `tests/test_preprocessing_parity.py` checks device, gate and validation inputs agree."""
    from idd_edge_runtime.preprocess import resize_semantic

    height, width = size_hw
    return resize_semantic(np.ascontiguousarray(image), width, height).astype(np.float32)


def letterbox_rgb(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """YOLO preprocessing: the device runtime's letterbox (grey padding), as float32 0-255."""
    from idd_edge_runtime.letterbox import letterbox

    canvas, _geometry = letterbox(image, size_hw)
    return canvas.astype(np.float32)


def preprocess_fn(record: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """RGB uint8 frame -> (H, W, 3) float32 0-255 input of the model of `record`."""
    size_hw = input_hw(record)
    if record["preprocess"] == "letterbox":
        return lambda image: letterbox_rgb(image, size_hw)
    return lambda image: resize_rgb(image, size_hw)


Target = tuple[Callable[[np.ndarray], np.ndarray], tuple[int, int]]


def calibration_targets(records: list[Mapping[str, Any]]) -> dict[str, Target]:
    """One calibration array per distinct (preprocessing, input size) among the exported models."""
    return {calibration_key(record): (preprocess_fn(record), input_hw(record)) for record in records}
