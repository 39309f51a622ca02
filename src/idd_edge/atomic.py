"""Atomic file output: every file a stage writes appears whole or not at all.

A write goes to a temporary file in the destination's directory (same file system), is flushed and
fsynced, then renamed over the destination. A crash or an exception mid-write leaves the previous
version of the file (if any) untouched and no partial file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np


def _default_file_mode() -> int:
    # mkstemp creates 0600 files; outputs should get the permissions a plain open() would give
    # (0666 minus the umask), or a shipped bundle is unreadable to the device's runtime user.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it onto `path` on success."""
    if not set(mode) & {"w"}:
        raise ValueError(f"atomic_open is for writing, got mode {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def encode_png(array: np.ndarray, compression: int = 1, row_filters: bool = True) -> bytes:
    """PNG bytes for a uint8 (H,W) / (H,W,3 RGB) or uint16 (H,W) array.

    Compression level 1 by default: masks are highly compressible and level 1 costs a fraction of the
    default level's time for a few percent more bytes. RGB input is converted to OpenCV's BGR order.
    `row_filters=False` suits label masks: they are piecewise constant, so zlib alone finds the runs, and
    libpng's adaptive per-row filter choice triples the encoding time for files of about the same size.
    Any PNG reader decodes either.
    """
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG needs uint8 or uint16, got {array.dtype}")
    if array.ndim == 3:
        if array.shape[2] != 3:
            raise ValueError(f"expected (H, W, 3) RGB, got shape {array.shape}")
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression]
    if not row_filters:
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, buffer = cv2.imencode(".png", array, params)
    if not ok:
        raise RuntimeError("OpenCV failed to encode PNG")
    return buffer.tobytes()


def write_png(path: str | os.PathLike, array: np.ndarray, compression: int = 1, row_filters: bool = True) -> None:
    """Atomically write `array` as PNG (see encode_png for the accepted layouts and options)."""
    write_bytes(path, encode_png(array, compression, row_filters))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def replace_dir(staging: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Swap a fully written staging directory into place, removing the old destination afterwards.

    The old tree is moved aside first, so a failure before the final rename leaves it recoverable; the
    window in which `destination` does not exist is one rename long.
    """
    staging, destination = Path(staging), Path(destination)
    old = destination.with_name(f".{destination.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if destination.exists():
        os.replace(destination, old)
    os.replace(staging, destination)
    if old.exists():
        shutil.rmtree(old)
