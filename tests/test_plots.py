"""Plots: real PNG/SVG files written atomically, sized for 26 classes, worse classes drawn in red."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from idd_edge.labels import LEVEL_CLASS_NAMES
from idd_edge.seg.metrics import classify_deltas
from idd_edge.seg.plots import VERDICT_COLORS, plot_confusion, plot_iou_diff, plot_per_class_iou

LEVEL3 = LEVEL_CLASS_NAMES["level3"]


def _rgb(hex_color):
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))


def _pixels_of(path, hex_color, tolerance=3):
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(image - np.array(_rgb(hex_color))).max(axis=2) <= tolerance).sum())


def _no_temp_files(directory):
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_plot_for_26_classes(tmp_path, normalize):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 1000, size=(26, 26)) + np.diag(rng.integers(10_000, 50_000, size=26))
    cm[3] = 0  # a class absent from the ground truth: an empty row, not NaN
    out = plot_confusion(cm, LEVEL3, tmp_path / "sub" / "confusion.png", normalize=normalize)
    assert out == tmp_path / "sub" / "confusion.png"
    with Image.open(out) as image:
        width, height = image.size
    assert width >= 1200 and height >= 1200  # 26 rotated names + annotations need room
    assert _no_temp_files(out.parent)


def test_confusion_plot_scales_with_class_count(tmp_path):
    small = plot_confusion(np.eye(7, dtype=np.int64), LEVEL_CLASS_NAMES["level1"], tmp_path / "l1.png")
    large = plot_confusion(np.eye(26, dtype=np.int64), LEVEL3, tmp_path / "l3.png")
    assert Image.open(large).size[1] > Image.open(small).size[1]


def test_confusion_plot_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="2 class names"):
        plot_confusion(np.eye(3, dtype=np.int64), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        plot_confusion(np.eye(2, dtype=np.int64), ["a", "b"], tmp_path / "x.jpg")
    assert not list(tmp_path.iterdir())


def test_per_class_iou_plot_png_and_svg(tmp_path):
    ious = {name: (i / 30 if i % 5 else None) for i, name in enumerate(LEVEL3)}
    png = plot_per_class_iou(ious, tmp_path / "iou.png", title="kd_lraspp level3")
    assert Image.open(png).size[1] > 26 * 30  # one readable row per class
    svg = plot_per_class_iou(ious, tmp_path / "iou.svg")
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert _no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="no classes"):
        plot_per_class_iou({}, tmp_path / "empty.png")


def test_iou_diff_plot_highlights_worse_classes(tmp_path):
    a = {name: 0.5 for name in LEVEL3}
    b = dict(a, road=0.40, car=0.60, sky=0.503, wall=None)
    verdicts = classify_deltas({k: (None if b[k] is None else b[k] - a[k]) for k in a})
    assert verdicts["road"] == "worse" and verdicts["car"] == "better"
    assert verdicts["sky"] == "same" and verdicts["wall"] == "n/a"

    worse_png = plot_iou_diff(a, b, tmp_path / "diff.png", labels=("baseline", "kd"))
    assert _pixels_of(worse_png, VERDICT_COLORS["worse"]) > 100
    assert _pixels_of(worse_png, VERDICT_COLORS["better"]) > 100

    improved = dict(a, car=0.6)
    better_png = plot_iou_diff(a, improved, tmp_path / "better.png")
    assert _pixels_of(better_png, VERDICT_COLORS["worse"]) == 0
    assert _pixels_of(better_png, VERDICT_COLORS["better"]) > 100
    assert _no_temp_files(tmp_path)


def test_iou_diff_tolerance(tmp_path):
    a, b = {"x": 0.5, "y": 0.5}, {"x": 0.49, "y": 0.5}
    strict = plot_iou_diff(a, b, tmp_path / "strict.png", tolerance=0.001)
    lenient = plot_iou_diff(a, b, tmp_path / "lenient.png", tolerance=0.05)
    assert _pixels_of(strict, VERDICT_COLORS["worse"]) > 0
    assert _pixels_of(lenient, VERDICT_COLORS["worse"]) == 0
