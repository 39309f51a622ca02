"""Calibration set: training images only, class-stratified, DFC format, coverage report, leakage check."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idd_edge.errors import StageError
from idd_edge.export.calibrate import (
    DFC_RECOMMENDED_IMAGES,
    build_calibration_set,
    content_hash,
    plot_coverage,
    select_stratified,
)
from idd_edge.export.preprocessing import resize_rgb
from idd_edge.labels import LEVEL_CLASS_NAMES
from tests.export_support import make_split, read_png_rgb

LEVEL = "level1"
CLASSES = LEVEL_CLASS_NAMES[LEVEL]
RARE = len(CLASSES) - 1  # "sky" appears in few training images


def _targets(size_hw=(16, 24)):
    return {f"resize_{size_hw[0]}x{size_hw[1]}": (lambda image: resize_rgb(image, size_hw), size_hw)}


@pytest.fixture
def splits(tmp_path):
    # The last class is rare: only every 6th training image contains it.
    make_split(tmp_path, "train", 24, len(CLASSES), seed=0, rare_class=RARE, rare_every=6)
    make_split(tmp_path, "val", 6, len(CLASSES), seed=1, rare_class=RARE, rare_every=2)
    make_split(tmp_path, "test", 4, len(CLASSES), seed=2)
    return tmp_path


def test_stratified_selection_takes_rare_classes_first():
    counts = np.zeros((20, 3), dtype=np.int64)
    counts[:, 0] = 100  # every image has class 0
    counts[7, 2] = 5  # one image has the rare class 2
    counts[[3, 9], 1] = 10
    chosen = select_stratified(counts, 3, seed=0)
    assert set(chosen) >= {7} and len(set(chosen) & {3, 9}) >= 1
    assert select_stratified(counts, 3, seed=0) == chosen  # deterministic for a seed


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 6), st.integers(0, 40), st.integers(0, 2**16))
def test_stratified_selection_properties(n_images, n_classes, num, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 3, size=(n_images, n_classes)) * rng.integers(0, 2, size=(n_images, n_classes))
    chosen = select_stratified(counts, num, seed)
    assert len(chosen) == len(set(chosen)) == min(num, n_images)
    assert all(0 <= i < n_images for i in chosen)
    if num >= n_classes:  # enough picks to show every class the pool has
        pool = counts.sum(axis=0) > 0
        assert ((counts[chosen] > 0).any(axis=0) >= pool).all()


def test_calibration_set_format_coverage_and_record(splits, caplog):
    out = splits / "calib"
    with caplog.at_level(logging.WARNING):
        record = build_calibration_set(splits / "train", splits / "val", [splits / "val", splits / "test"],
                                       _targets(), out, num_images=8, seed=0, level=LEVEL)
    array = np.load(out / "resize_16x24.npy", allow_pickle=False)
    assert array.shape == (8, 16, 24, 3) and array.dtype == np.uint8  # NHWC, converted to float32 at use
    assert array.max() > 1  # raw pixels, not normalized
    assert record["arrays"]["resize_16x24"]["dtype"] == "uint8"
    assert record["arrays"]["resize_16x24"]["shape"] == [8, 16, 24, 3]
    # Each stored image is the preprocessed training image it names.
    first = record["images"][0]
    np.testing.assert_array_equal(array[0], resize_rgb(read_png_rgb(splits / "train" / "images" / f"{first['stem']}.png"), (16, 24)))
    assert all(image["file"].startswith(str(splits / "train")) for image in record["images"])
    coverage = record["coverage"]
    assert coverage["missing_from_calibration"] == [] and coverage["classes_covered"] == len(CLASSES)
    assert coverage["per_class"][CLASSES[RARE]]["calibration_images"] >= 1
    shares = [c["calibration_share"] for c in coverage["per_class"].values()]
    assert sum(shares) == pytest.approx(1.0)
    assert record["leakage"]["held_out_images_checked"] == 10
    assert any(str(DFC_RECOMMENDED_IMAGES) in w for w in record["warnings"])
    assert any(str(DFC_RECOMMENDED_IMAGES) in r.message for r in caplog.records)
    assert json.loads((out / "calibration.json").read_text()) == record
    plot = plot_coverage(coverage, splits / "coverage.png")
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_a_preprocessing_with_fractional_pixels_is_refused_not_rounded(splits):
    size_hw = (16, 24)
    halves = {"resize_16x24": (lambda image: resize_rgb(image, size_hw) + 0.5, size_hw)}
    with pytest.raises(StageError, match="fractional"):
        build_calibration_set(splits / "train", splits / "val", [], halves, splits / "calib", num_images=4, seed=0,
                              level=LEVEL)
    assert not (splits / "calib" / "resize_16x24.npy").exists()  # the partial array is not left behind


def test_more_images_than_the_split_holds_uses_all_and_warns(splits):
    record = build_calibration_set(splits / "train", splits / "val", [], _targets(), splits / "calib",
                                   num_images=5000, seed=0, level=LEVEL)
    assert record["num_images"] == 24
    assert any("training split has 24" in w for w in record["warnings"])


def test_leakage_by_content_not_name(splits):
    # A training image copied into val under another name (and re-encoded: same pixels, new file).
    train_image = sorted((splits / "train" / "images").iterdir())[0]
    shutil.copy(train_image, splits / "val" / "images" / "other_name.png")
    with pytest.raises(StageError, match="also in validation/test"):
        build_calibration_set(splits / "train", splits / "val", [splits / "val", splits / "test"], _targets(),
                              splits / "calib", num_images=100, seed=0, level=LEVEL)
    assert not (splits / "calib" / "resize_16x24.npy").exists()  # failed before writing the arrays


def test_content_hash_ignores_file_name_and_encoding(splits):
    image = read_png_rgb(sorted((splits / "train" / "images").iterdir())[0])
    assert content_hash(image) == content_hash(image.copy())
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    assert content_hash(changed) != content_hash(image)
