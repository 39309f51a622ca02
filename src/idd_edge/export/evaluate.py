"""One validation loop for every format of a semantic model: PyTorch, ONNX fp32, ONNX int8, Hailo emulation.

Each format is wrapped as `predict(batch) -> labels`, where `batch` is (1, H, W, 3) float32 raw 0-255 RGB,
already resized to the model input: exactly what the calibration set holds and what the Hailo chip is fed
(its model script normalizes on the chip); software formats normalize with `to_model_input`. Scores come
from the training metrics (`idd_edge.seg.metrics`), so "mIoU" means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from idd_edge.errors import InputError
from idd_edge.export.onnx_io import labels_from_output, run_single
from idd_edge.export.quantize import to_model_input
from idd_edge.seg.metrics import segmentation_scores, update_confusion

#: (1, H, W, 3) float32 0-255 -> (H, W) int class ids.
Predictor = Callable[[np.ndarray], np.ndarray]


def torch_predictor(model: Any, mean: Sequence[float], std: Sequence[float]) -> Predictor:
    import torch

    model = model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            output = model(torch.from_numpy(to_model_input(batch, mean, std)))
        return labels_from_output(output.numpy())[0]

    return predict


def onnx_predictor(session: Any, mean: Sequence[float], std: Sequence[float]) -> Predictor:
    def predict(batch: np.ndarray) -> np.ndarray:
        return labels_from_output(run_single(session, to_model_input(batch, mean, std)))[0]

    return predict


def nhwc_labels(output: np.ndarray) -> np.ndarray:
    """(H, W) labels from one NHWC output of the Hailo emulator: class scores (argmax) or an on-chip argmax."""
    output = np.asarray(output)
    if output.ndim == 4:
        output = output[0]
    if output.ndim != 3:
        raise ValueError(f"expected an (H, W, C) emulator output, got shape {output.shape}")
    if output.shape[-1] == 1:
        return np.rint(output[..., 0]).astype(np.int64)
    return output.argmax(axis=-1)


def evaluate_semantic(
    predict: Predictor,
    dataset: Any,
    preprocess: Callable[[np.ndarray], np.ndarray],
    class_names: Sequence[str],
    max_images: int | None = None,
    desc: str = "evaluating",
) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU of `predict` on a validation `IDDSegDataset` (its reading,
    mask encoding and resize: at input resolution, masks resized nearest, void kept), plus per-class
    ground-truth pixel counts."""
    from idd_edge.seg.data import resize_mask

    count = len(dataset) if not max_images else min(len(dataset), int(max_images))
    if not count:
        raise InputError(getattr(dataset, "split_dir", None), "no validation image/mask pairs")
    num_classes = len(class_names)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for index in tqdm(range(count), desc=desc, leave=False):
        image, mask = dataset.load(index)
        batch = preprocess(image)[None]
        mask = resize_mask(mask, dataset.size)
        labels = predict(batch)
        if labels.shape != mask.shape:
            raise ValueError(f"prediction shape {labels.shape} differs from the mask's {mask.shape}")
        update_confusion(cm, labels, mask)
    scores = segmentation_scores(cm, class_names)
    scores["images"] = count
    scores["gt_pixels"] = {name: int(n) for name, n in zip(class_names, cm.sum(axis=1).tolist(), strict=True)}
    return scores


def validation_dataset(val_dir: Path, level: str, size_hw: tuple[int, int],
                       normalization: Mapping[str, Any] | None = None) -> Any:
    """The training code's validation dataset (plain resize, no augmentation), normalised as `normalization`
    (a `model.json` record; None: ImageNet) for the samples it yields."""
    from idd_edge.seg.data import IDDSegDataset

    return IDDSegDataset(val_dir, level, size_hw, augment=None, normalization=normalization)
