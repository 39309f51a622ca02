"""Split organisation: seed layout, hard links, drive-qualified stems, unannotated test images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from idd_edge import atomic
from idd_edge.data.split import organize_splits
from idd_edge.errors import InputError


def _tree(tmp_path: Path, level_encoding: str = "level2Id") -> tuple[Path, Path]:
    raw, converted = tmp_path / "raw", tmp_path / "converted"
    frames = {"train": [("0", "000001"), ("1", "000001")], "val": [("2", "000007")], "test": [("3", "000009")]}
    for split, items in frames.items():
        for drive, img_id in items:
            ext = "jpg" if drive == "1" else "png"
            atomic.write_bytes(raw / "leftImg8bit" / split / drive / f"{img_id}_leftImg8bit.{ext}", b"img" + drive.encode())
            if split != "test":  # like real IDD: no test annotations
                mask = np.full((4, 6), int(drive), dtype=np.uint8)
                atomic.write_png(
                    converted / "gtFine" / split / drive / f"{img_id}_gtFine_label{level_encoding}s.png", mask
                )
    return raw, converted


def test_layout_links_and_summary(tmp_path: Path) -> None:
    raw, converted = _tree(tmp_path)
    summary = organize_splits(raw, converted, tmp_path / "splits", "level2")
    root = tmp_path / "splits" / "IDDL2"
    assert sorted(p.name for p in (root / "train" / "images").iterdir()) == ["0_000001.png", "1_000001.jpg"]
    assert sorted(p.name for p in (root / "train" / "masks").iterdir()) == ["0_000001.png", "1_000001.png"]
    # hard links, not copies: same inode as the source
    source = raw / "leftImg8bit" / "train" / "0" / "000001_leftImg8bit.png"
    assert os.stat(root / "train" / "images" / "0_000001.png").st_ino == os.stat(source).st_ino
    assert summary.pairs == {"train": 2, "val": 1, "test": 0}
    assert summary.images_without_mask["test"] == ["3_000009"]
    assert (root / "test" / "images" / "3_000009.png").exists()
    assert json.loads((root / "split_summary.json").read_text())["pairs"]["train"] == 2


def test_switching_level_replaces_previous_dataset(tmp_path: Path) -> None:
    raw, converted = _tree(tmp_path, "level2Id")
    organize_splits(raw, converted, tmp_path / "splits", "level2")
    _, converted3 = _tree(tmp_path / "l3", "level3Id")
    organize_splits(raw, converted3, tmp_path / "splits", "level3")
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == ["IDDL3"]


def test_masks_of_another_encoding_are_a_clear_error(tmp_path: Path) -> None:
    raw, converted = _tree(tmp_path, "level3Id")
    with pytest.raises(InputError, match=r"no \*_gtFine_labellevel2Ids.png masks for level level2"):
        organize_splits(raw, converted, tmp_path / "splits", "level2")
    assert not (tmp_path / "splits" / "IDDL2").exists()


def test_missing_roots_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no leftImg8bit"):
        organize_splits(tmp_path / "nope", tmp_path, tmp_path / "splits", "level2")


def _image_tree(tmp_path: Path) -> tuple[Path, Path]:
    """Decodable frames: 3 training pairs (one a JPEG, as IDD Part II), 1 val pair, 8x12 pixels."""
    import cv2

    raw, converted = tmp_path / "raw", tmp_path / "converted"
    rng = np.random.default_rng(0)
    for split, drives in {"train": ["0", "1", "2"], "val": ["5"]}.items():
        for drive in drives:
            pixels = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
            ext = "jpg" if drive == "1" else "png"
            path = raw / "leftImg8bit" / split / drive / f"000001_leftImg8bit.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), pixels)
            mask = np.full((8, 12), 255, dtype=np.uint8)
            mask[:, :6], mask[4:, 6:] = 3, 7
            atomic.write_png(converted / "gtFine" / split / drive / "000001_gtFine_labellevel2Ids.png", mask)
    return raw, converted


@pytest.mark.parametrize("workers", [1, 2])
def test_train_scale_stores_resized_training_pairs_and_links_the_rest(tmp_path: Path, workers: int) -> None:
    import cv2

    raw, converted = _image_tree(tmp_path)
    summary = organize_splits(raw, converted, tmp_path / "splits", "level2", train_scale=0.5, workers=workers)
    root = tmp_path / "splits" / "IDDL2"
    assert summary.train_scale == 0.5 and summary.pairs["train"] == 3
    # every training image becomes a half-size PNG (the JPEG too: no second lossy encode)
    assert sorted(p.name for p in (root / "train" / "images").iterdir()) == ["0_000001.png", "1_000001.png", "2_000001.png"]
    for stem in ("0_000001", "1_000001", "2_000001"):
        image = cv2.imread(str(root / "train" / "images" / f"{stem}.png"), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(root / "train" / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (4, 6, 3) and mask.shape == (4, 6)
        # nearest: only labels of the source, in the same places
        expected = np.full((4, 6), 255, dtype=np.uint8)
        expected[:, :3], expected[2:, 3:] = 3, 7
        np.testing.assert_array_equal(mask, expected)
    source = cv2.imread(str(raw / "leftImg8bit" / "train" / "0" / "000001_leftImg8bit.png"), cv2.IMREAD_COLOR)
    stored = cv2.imread(str(root / "train" / "images" / "0_000001.png"), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(stored, cv2.resize(source, (6, 4), interpolation=cv2.INTER_AREA))
    # validation is evaluated as deployed: full size, linked
    val_image = root / "val" / "images" / "5_000001.png"
    assert os.stat(val_image).st_ino == os.stat(raw / "leftImg8bit" / "val" / "5" / "000001_leftImg8bit.png").st_ino


def test_train_scale_out_of_range_or_unreadable_frames_fail_clearly(tmp_path: Path) -> None:
    raw, converted = _image_tree(tmp_path)
    with pytest.raises(ValueError, match="train_scale"):
        organize_splits(raw, converted, tmp_path / "splits", "level2", train_scale=0.0)
    broken = raw / "leftImg8bit" / "train" / "2" / "000001_leftImg8bit.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InputError, match="000001_leftImg8bit.png.*cannot read image"):
        organize_splits(raw, converted, tmp_path / "splits", "level2", train_scale=0.5)
    assert not (tmp_path / "splits" / "IDDL2").exists()  # nothing half-written
