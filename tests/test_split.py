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
