"""Evaluation plots: confusion matrix heat map, per-class IoU bars, per-class IoU change between runs.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot global state, no display
needed), rendered to bytes and written atomically; the format follows the file suffix (png, svg, pdf).
Sizes grow with the class count so that the 26 level3 class names stay readable.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from idd_edge.atomic import write_bytes
from idd_edge.seg.metrics import DELTA_TOLERANCE, as_confusion_array, classify_deltas, iou_deltas

__all__ = ["VERDICT_COLORS", "plot_confusion", "plot_iou_diff", "plot_per_class_iou"]

WORSE_COLOR = "#c0392b"
BETTER_COLOR = "#2e86c1"
NEUTRAL_COLOR = "#95a5a6"
VERDICT_COLORS = {"worse": WORSE_COLOR, "better": BETTER_COLOR, "same": NEUTRAL_COLOR, "n/a": NEUTRAL_COLOR}
DPI = 120


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    image_format = path.suffix.lstrip(".").lower() or "png"
    if image_format not in {"png", "svg", "pdf"}:
        raise ValueError(f"{path}: plot format must be .png, .svg or .pdf")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=image_format, dpi=DPI)
    write_bytes(path, buffer.getvalue())
    return path


def plot_confusion(cm: Any, class_names: Sequence[str], path: str | os.PathLike, normalize: bool = True) -> Path:
    """Heat map of a confusion matrix (rows = ground truth, columns = prediction).

    With `normalize`, each row is divided by its ground-truth pixel count (so the diagonal is per-class
    recall, in percent); rows of classes absent from the ground truth stay empty.
    """
    cm = as_confusion_array(cm)
    n = cm.shape[0]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for a {n}x{n} confusion matrix")
    if normalize:
        row_sums = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm * 100.0, row_sums, out=np.zeros(cm.shape, dtype=float), where=row_sums > 0)
    else:
        values = cm.astype(float)
    side = max(5.0, 0.42 * n + 2.5)
    figure = _new_figure(side + 1.0, side)
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="Blues", vmin=0.0, vmax=100.0 if normalize else max(values.max(), 1.0))
    figure.colorbar(image, ax=axes, shrink=0.8, label="% of ground-truth pixels" if normalize else "pixels")
    axes.set_xticks(range(n), labels=class_names, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    axes.set_yticks(range(n), labels=class_names, fontsize=8)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title("Confusion matrix" + (" (row-normalised, %)" if normalize else " (pixels)"))
    threshold = values.max() / 2 if values.size else 0.0
    font_size = 7 if n <= 16 else 5
    for row in range(n):
        for col in range(n):
            value = values[row, col]
            if normalize and value < 0.5:
                continue  # blank rather than a wall of zeros
            if not normalize and value == 0:
                continue
            text = f"{value:.0f}" if normalize else _compact_count(int(value))
            axes.text(col, row, text, ha="center", va="center", fontsize=font_size,
                      color="white" if value > threshold else "black")
    return _save(figure, path)


def _compact_count(count: int) -> str:
    for divisor, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if count >= divisor:
            return f"{count / divisor:.1f}{suffix}"
    return str(count)


def plot_per_class_iou(per_class_iou: Mapping[str, float | None], path: str | os.PathLike,
                       title: str | None = None) -> Path:
    """Horizontal bars of per-class IoU (0..1 in, percent shown) with the mIoU as a dashed line;
    classes without an IoU are labelled "n/a"."""
    names = list(per_class_iou)
    if not names:
        raise ValueError("no classes to plot")
    values = [per_class_iou[name] for name in names]
    present = [v for v in values if v is not None]
    figure = _new_figure(7.5, max(3.0, 0.3 * len(names) + 1.2))
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    axes.barh(positions, [100 * (v or 0.0) for v in values], color=BETTER_COLOR, height=0.7)
    for position, value in zip(positions, values):
        label = "n/a" if value is None else f"{100 * value:.1f}"
        axes.text((100 * value if value is not None else 0) + 1, position, label, va="center", fontsize=7)
    if present:
        miou = 100 * sum(present) / len(present)
        axes.axvline(miou, color="black", linestyle="--", linewidth=1, label=f"mIoU {miou:.2f}%")
        axes.legend(loc="lower right", fontsize=8)
    axes.set_yticks(positions, labels=names, fontsize=8)
    axes.invert_yaxis()  # first class on top, as in the label tables
    axes.set_xlim(0, 105)
    axes.set_xlabel("IoU (%)")
    axes.set_title(title or "Per-class IoU")
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def plot_iou_diff(a: Mapping[str, float | None], b: Mapping[str, float | None], path: str | os.PathLike,
                  labels: tuple[str, str] = ("A", "B"), tolerance: float = DELTA_TOLERANCE) -> Path:
    """Bars of the per-class IoU change from run `a` to run `b` in points (b - a). Classes that got
    worse by more than `tolerance` (IoU 0..1) are red, better ones blue, the rest grey; classes
    without an IoU in either run are marked "n/a"."""
    deltas = iou_deltas(a, b)
    if not deltas:
        raise ValueError("no classes to plot")
    names = list(deltas)
    figure = _new_figure(7.5, max(3.0, 0.3 * len(names) + 1.4))
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    points = [0.0 if d is None else 100 * d for d in deltas.values()]
    verdicts = classify_deltas(deltas, tolerance)
    colors = [VERDICT_COLORS[verdict] for verdict in verdicts.values()]
    axes.barh(positions, points, color=colors, height=0.7)
    span = max([abs(p) for p in points] + [1.0])
    for position, delta, point in zip(positions, deltas.values(), points):
        text = "n/a" if delta is None else f"{point:+.1f}"
        offset = 0.02 * span if point >= 0 else -0.02 * span
        axes.text(point + offset, position, text, va="center", ha="left" if point >= 0 else "right", fontsize=7)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlim(-1.25 * span, 1.25 * span)
    axes.set_yticks(positions, labels=names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(f"IoU change, points ({labels[1]} - {labels[0]})")
    worse = sum(verdict == "worse" for verdict in verdicts.values())
    axes.set_title(f"Per-class IoU: {labels[1]} vs {labels[0]} ({worse} worse by > {100 * tolerance:g} pt)")
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)
