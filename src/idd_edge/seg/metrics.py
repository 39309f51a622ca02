"""Semantic segmentation metrics: confusion matrices, IoU scores, and merges between label levels.

Semantics follow the official IDD evaluator (AutoNUE/public-code), vectorised:
- The confusion matrix has rows = ground truth, columns = prediction. Pixels whose ground truth is the
  ignore value (void, 255) are skipped entirely, so a prediction on a void pixel is neither a true nor a
  false positive. This is the official rule "FP counted only where ground truth is a valid class" (the
  official code keeps void in a misc row and leaves that row out of FP).
- IoU = TP / (TP + FP + FN) per class. A class absent from both ground truth and prediction has no IoU
  (None) and is left out of the mean; the official code divides by zero there instead.
- Coarser levels are computed by merging the level3 matrix (rows and columns grouped by the coarser id
  of each finer class, from the label table in `idd_edge.labels`). The official level-1 code groups the
  level3 matrix with its level1->level2 index map (e.g. level1 "vehicle" := level2 ids 6,7,8, applied as
  level3 ids 6,7,8 = motorcycle, bicycle, autorickshaw): its level-1 scores are wrong. `merge_confusion`
  merges level3 -> level1 with the table, which equals scoring level-1 labels directly.

`confusion_matrix` / `update_confusion` accept numpy arrays or torch tensors; torch input is counted
with `torch.bincount` on the tensor's device, so a GPU evaluation loop can accumulate into a torch
confusion matrix without copying each batch to the host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from idd_edge.labels import LEVEL_ENCODING, VOID, level_lut, num_classes

__all__ = [
    "as_confusion_array",
    "classify_deltas",
    "confusion_matrix",
    "iou_deltas",
    "level_class_map",
    "merge_confusion",
    "segmentation_scores",
    "update_confusion",
]


def _is_torch(array: Any) -> bool:
    # Checked by module name so numpy-only callers never import torch.
    return type(array).__module__.startswith("torch")


def _check_pair(pred: Any, target: Any) -> None:
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    for name, array in (("prediction", pred), ("target", target)):
        if not _has_integer_dtype(array):
            raise TypeError(f"{name} must hold integer class ids, got dtype {array.dtype}")


def _has_integer_dtype(array: Any) -> bool:
    if _is_torch(array):
        torch = _torch()
        return not (array.dtype.is_floating_point or array.dtype.is_complex or array.dtype == torch.bool)
    return bool(np.issubdtype(array.dtype, np.integer))


def _torch():
    import torch

    return torch


def _bincount_torch(pred: Any, target: Any, n: int, ignore_index: int) -> Any:
    """(n, n) int64 torch confusion matrix on the inputs' device (GPU inputs are counted there)."""
    torch = _torch()
    if not _is_torch(pred):
        pred = torch.as_tensor(np.asarray(pred), device=target.device)
    if not _is_torch(target):
        target = torch.as_tensor(np.asarray(target), device=pred.device)
    _check_pair(pred, target)
    if pred.device.type == "cpu" and target.device.type == "cpu":
        # numpy's bincount on zero-copy views beats torch's CPU kernels several times over
        return torch.from_numpy(_bincount_numpy(pred.detach().numpy(), target.detach().numpy(), n, ignore_index))
    return _bincount_on_device(pred, target, n, ignore_index)


def _bincount_on_device(pred: Any, target: Any, n: int, ignore_index: int) -> Any:
    """The accelerator path: torch ops only, on `target`'s device (tests run it on CPU tensors)."""
    torch = _torch()
    _check_pair(pred, target)
    pred = pred.reshape(-1).to(device=target.device, dtype=torch.int64)
    target = target.reshape(-1).to(torch.int64)
    keep = (target >= 0) & (target < n)
    if pred.numel():
        # One host sync for both range checks (no data copy); bad values are only gathered on failure.
        pred_bad = (pred < 0) | (pred >= n)
        target_bad = ~keep & (target != ignore_index)
        flags = torch.stack((pred_bad.any(), target_bad.any())).tolist()
        if flags[0]:
            _raise_out_of_range("prediction", torch.unique(pred[pred_bad]).tolist(), n, ignore_index=None)
        if flags[1]:
            _raise_out_of_range("ground truth", torch.unique(target[target_bad]).tolist(), n, ignore_index)
    # Ignored pixels go to one extra bin instead of being masked out: boolean indexing would force a
    # host sync on the GPU to learn the result's size.
    index = torch.where(keep, target * n + pred, n * n)
    return torch.bincount(index, minlength=n * n + 1)[: n * n].reshape(n, n)


def _bincount_numpy(pred: np.ndarray, target: np.ndarray, n: int, ignore_index: int) -> np.ndarray:
    pred, target = np.asarray(pred), np.asarray(target)
    _check_pair(pred, target)
    pred, target = pred.reshape(-1), target.reshape(-1)
    if pred.size and (pred.min() < 0 or pred.max() >= n):
        _raise_out_of_range("prediction", np.unique(pred[(pred < 0) | (pred >= n)]).tolist(), n, ignore_index=None)
    keep = target < n
    if np.issubdtype(target.dtype, np.signedinteger):
        keep &= target >= 0
    all_kept = bool(keep.all())
    if not all_kept:
        target_bad = ~keep & (target != ignore_index)
        if target_bad.any():
            _raise_out_of_range("ground truth", np.unique(target[target_bad]).tolist(), n, ignore_index)
    # Indices in a small integer type (n * n + n fits easily); values at ignored pixels may wrap around
    # but are overwritten with the extra bin n * n, which is dropped.
    index_type = np.int32 if n * (n + 1) < 2**31 else np.int64
    index = target.astype(index_type)
    index *= n
    index += pred.astype(index_type, copy=False)  # validated: 0..n-1
    if not all_kept:
        index[~keep] = n * n
    counts = np.bincount(index, minlength=n * n + 1)[: n * n]
    return counts.reshape(n, n).astype(np.int64, copy=False)


def _raise_out_of_range(what: str, values: list[int], n: int, ignore_index: int | None) -> None:
    shown = ", ".join(str(v) for v in values[:20]) + (", ..." if len(values) > 20 else "")
    allowed = f"0..{n - 1}" + ("" if ignore_index is None else f" or ignore value {ignore_index}")
    raise ValueError(f"{what} holds class ids outside {allowed}: {shown}")


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int = VOID) -> np.ndarray:
    """(C, C) int64 confusion matrix, rows = ground truth, columns = prediction.

    `pred` and `target` are integer numpy arrays or torch tensors of the same (any) shape. Pixels whose
    target is `ignore_index` are skipped. Raises ValueError for predictions outside 0..C-1 and for
    ground-truth values outside 0..C-1 other than `ignore_index` (naming the offending values).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if _is_torch(pred) or _is_torch(target):
        return _bincount_torch(pred, target, num_classes, ignore_index).cpu().numpy()
    return _bincount_numpy(pred, target, num_classes, ignore_index)


def update_confusion(cm: Any, pred: Any, target: Any, ignore_index: int = VOID) -> Any:
    """Add the counts of one batch to `cm` in place and return it.

    `cm` is a (C, C) int64 numpy array or torch tensor; a torch `cm` is updated on its own device
    (no host copy per batch when `cm`, `pred` and `target` live on the GPU).
    """
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {tuple(cm.shape)}")
    n = int(cm.shape[0])
    if _is_torch(cm):
        cm += _bincount_torch(pred, target, n, ignore_index).to(device=cm.device, dtype=cm.dtype)
    elif _is_torch(pred) or _is_torch(target):
        cm += _bincount_torch(pred, target, n, ignore_index).cpu().numpy().astype(cm.dtype, copy=False)
    else:
        cm += _bincount_numpy(pred, target, n, ignore_index).astype(cm.dtype, copy=False)
    return cm


def as_confusion_array(cm: Any) -> np.ndarray:
    """A validated (C, C) int64 numpy copy/view of a numpy or torch confusion matrix."""
    if _is_torch(cm):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    if not np.issubdtype(cm.dtype, np.integer):
        raise TypeError(f"confusion matrix must hold integer counts, got dtype {cm.dtype}")
    if (cm < 0).any():
        raise ValueError("confusion matrix holds negative counts")
    return cm.astype(np.int64, copy=False)


def segmentation_scores(cm: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU (all in 0..1) of a confusion matrix.

    Returns {"miou", "pixel_accuracy", "per_class_iou": {name: iou or None}}. A class that appears
    neither in the ground truth nor in the prediction gets None and is left out of the mean. With no
    counted pixels at all, "miou" and "pixel_accuracy" are None as well.
    """
    cm = as_confusion_array(cm)
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}x{cm.shape[0]} confusion matrix")
    true_positive = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - true_positive  # TP + FP + FN
    per_class: dict[str, float | None] = {}
    for name, tp, denominator in zip(class_names, true_positive.tolist(), union.tolist()):
        per_class[name] = tp / denominator if denominator else None
    present = [iou for iou in per_class.values() if iou is not None]
    total = int(cm.sum())
    return {
        "miou": math.fsum(present) / len(present) if present else None,
        "pixel_accuracy": int(true_positive.sum()) / total if total else None,
        "per_class_iou": per_class,
    }


def level_class_map(from_level: str, to_level: str) -> np.ndarray:
    """int64 array: train id of `from_level` -> train id of the coarser (or same) `to_level`."""
    for level in (from_level, to_level):
        if level not in LEVEL_ENCODING:
            raise ValueError(f"unknown label level {level!r}; choose one of {', '.join(LEVEL_ENCODING)}")
    n_from, n_to = num_classes(from_level), num_classes(to_level)
    if n_to > n_from:
        raise ValueError(f"cannot merge {from_level} ({n_from} classes) into the finer {to_level} ({n_to})")
    mapping = level_lut(LEVEL_ENCODING[from_level], to_level)[:n_from].astype(np.int64)
    if (mapping >= n_to).any():  # a finer class with no coarser class would silently vanish
        raise ValueError(f"label table leaves {from_level} classes {np.flatnonzero(mapping >= n_to).tolist()} "
                         f"without a {to_level} class")
    return mapping


def merge_confusion(cm: Any, from_level: str, to_level: str) -> np.ndarray:
    """Merge a `from_level` confusion matrix into the coarser `to_level` (level3 -> level2/level1,
    level2 -> level1) by summing rows and columns of the finer classes that share a coarser class."""
    cm = as_confusion_array(cm)
    mapping = level_class_map(from_level, to_level)
    if cm.shape[0] != mapping.size:
        raise ValueError(f"a {from_level} confusion matrix is {mapping.size}x{mapping.size}, got {cm.shape}")
    n_to = num_classes(to_level)
    membership = np.zeros((mapping.size, n_to), dtype=np.int64)
    membership[np.arange(mapping.size), mapping] = 1
    return membership.T @ cm @ membership


def iou_deltas(a: Mapping[str, float | None], b: Mapping[str, float | None]) -> dict[str, float | None]:
    """Per-class IoU change from run `a` to run `b` (b - a), in the order of `a` then classes only in
    `b`; None where either run has no IoU for the class."""
    names = list(a) + [name for name in b if name not in a]
    deltas: dict[str, float | None] = {}
    for name in names:
        before, after = a.get(name), b.get(name)
        deltas[name] = None if before is None or after is None else after - before
    return deltas


#: Default tolerance (IoU 0..1) below which a per-class change counts as noise, not as worse/better.
DELTA_TOLERANCE = 0.005


def classify_deltas(deltas: Mapping[str, float | None], tolerance: float = DELTA_TOLERANCE) -> dict[str, str]:
    """Label each per-class IoU change "worse", "better" (beyond `tolerance`), "same" or "n/a" (None)."""
    verdicts: dict[str, str] = {}
    for name, delta in deltas.items():
        if delta is None:
            verdicts[name] = "n/a"
        elif delta < -tolerance:
            verdicts[name] = "worse"
        elif delta > tolerance:
            verdicts[name] = "better"
        else:
            verdicts[name] = "same"
    return verdicts
