"""Atomic writers leave either the old file or the complete new one, never a partial or temp file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from idd_edge import atomic


def test_failed_write_keeps_previous_content(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target, "w") as handle:
            handle.write('{"v": 2, "trunc')
            raise RuntimeError("interrupted")
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize(
    "array",
    [
        np.arange(60, dtype=np.uint8).reshape(6, 10),
        (np.arange(60, dtype=np.uint16) * 1000).reshape(6, 10),
        np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8),
    ],
)
@pytest.mark.parametrize("row_filters", [True, False])
def test_png_roundtrip_is_lossless(tmp_path: Path, array: np.ndarray, row_filters: bool) -> None:
    path = tmp_path / "m.png"
    atomic.write_png(path, array, row_filters=row_filters)
    read = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array.ndim == 3:
        read = cv2.cvtColor(read, cv2.COLOR_BGR2RGB)
    assert read.dtype == array.dtype and np.array_equal(read, array)


def test_png_rejects_unsupported_dtype() -> None:
    with pytest.raises(TypeError, match="uint8 or uint16"):
        atomic.encode_png(np.zeros((2, 2), dtype=np.int32))


def test_replace_dir_swaps_whole_tree(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "old").mkdir(parents=True)
    staging = tmp_path / "staging"
    (staging / "new").mkdir(parents=True)
    atomic.replace_dir(staging, dest)
    assert [p.name for p in dest.iterdir()] == ["new"]
    assert not staging.exists() and not (tmp_path / ".dest.old").exists()


def test_outputs_get_umask_permissions_not_mkstemp_0600(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "manifest.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "manifest.json").stat().st_mode & 0o777 == 0o644
