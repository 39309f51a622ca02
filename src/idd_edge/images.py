"""Which files are images: the one suffix list of the pipeline, and IDD's `<id>_leftImg8bit<suffix>` names.

Every stage that looks for images (convert, split, the training datasets, calibration, the YOLO bridge
and its validation split) asks here, so a format accepted by one is accepted by all. The list is what
OpenCV decodes and IDD (PNG; JPEG in some releases) or a user's own frames come as.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LEFTIMG8BIT = "_leftImg8bit"
#: IDD camera frame names end in one of these: `<id>_leftImg8bit.png`, ...
LEFTIMG8BIT_SUFFIXES = tuple(f"{LEFTIMG8BIT}{suffix}" for suffix in IMAGE_SUFFIXES)


def is_image(path: Path) -> bool:
    """A file named like an image we read (suffix case ignored)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def leftimg8bit_suffix(name: str) -> str | None:
    """The `_leftImg8bit.<ext>` ending of an IDD frame's file name, or None if it is not one."""
    return next((suffix for suffix in LEFTIMG8BIT_SUFFIXES if name.endswith(suffix)), None)


def find_leftimg8bit(drive_dir: Path, image_id: str) -> Path | None:
    """The frame `<drive_dir>/<image_id>_leftImg8bit.<ext>` in the first suffix that exists, or None."""
    for suffix in LEFTIMG8BIT_SUFFIXES:
        candidate = drive_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None
