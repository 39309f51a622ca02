"""`idd-edge split`: organise images and converted masks into the training layout of the seed project.

    <OUT_ROOT>/<IDDLx>/{train,val,test}/images/<drive>_<img_id>.<png|jpg>
    <OUT_ROOT>/<IDDLx>/{train,val,test}/masks/<drive>_<img_id>.png

Masks are the converted label images of the level's encoding (train ids, void 255). Files are hard links
to their sources (no extra disk for a 1.8 GB dataset); a copy is made only where a hard link is impossible
(another file system). The drive is part of the stem because IDD image ids are only unique within a drive.
Images without a mask (the real IDD test split has no annotations) are kept in `images/` for inference
and counted; in train/val they are reported because they cannot be used for training.

`train_scale` < 1 writes the training pairs resized instead of linking them (image: area average, PNG;
mask: nearest). Why: a training crop of a 1920x1080 frame is shrunk ~2x to 512x512 anyway (crops of 50-100 %
of the frame), yet the loader decodes every full-size PNG each epoch, and the decode alone caps a worker at
~22 frames/s (`benchmarks/loader.py`). Frames stored at half size decode ~4x faster; the crops keep their
share of the frame (`train.augment.scale` is relative), so objects keep the scale they are trained at, and
validation / test frames stay full size (they are evaluated as deployed).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
from tqdm import tqdm

from idd_edge import atomic, labels
from idd_edge.pool import map_in_processes
from idd_edge.errors import InputError
from idd_edge.images import leftimg8bit_suffix

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class SplitSummary:
    level: str
    dataset_dir: str
    pairs: dict[str, int] = field(default_factory=dict)
    images_without_mask: dict[str, list[str]] = field(default_factory=dict)
    masks_without_image: dict[str, list[str]] = field(default_factory=dict)
    copied_instead_of_linked: int = 0
    train_scale: float = 1.0


def link_or_copy(source: Path, destination: Path) -> bool:
    """Hard-link `source` to `destination`; copy when linking across file systems. True if copied."""
    try:
        os.link(source, destination)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
    shutil.copy2(source, destination)
    return True


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) of a frame stored at `scale` (rounded, at least 1 pixel)."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def write_scaled_pair(image: Path, mask: Path, image_out: Path, mask_out: Path, scale: float) -> None:
    """Write `image` (area-averaged, PNG) and its label `mask` (nearest) resized by `scale`, atomically."""
    pixels = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if pixels is None:
        raise InputError(image, "cannot read image (missing, empty or not an image)")
    label_mask = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
    if label_mask is None or label_mask.ndim != 2:
        raise InputError(mask, "cannot read the mask as a single-channel PNG")
    if label_mask.shape != pixels.shape[:2]:
        raise InputError(mask, f"mask is {label_mask.shape[1]}x{label_mask.shape[0]} but image {image.name} is "
                               f"{pixels.shape[1]}x{pixels.shape[0]}")
    size = scaled_size(pixels.shape[1], pixels.shape[0], scale)
    resized = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    atomic.write_png(image_out, cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))
    atomic.write_png(mask_out, cv2.resize(label_mask, size, interpolation=cv2.INTER_NEAREST), row_filters=False)


def _write_scaled(job: tuple[Path, Path, Path, Path, float]) -> None:
    write_scaled_pair(*job)


def _images_by_stem(image_root: Path, split: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    split_dir = image_root / "leftImg8bit" / split
    if not split_dir.is_dir():
        return found
    for path in sorted(split_dir.glob("*/*_leftImg8bit.*")):
        suffix = leftimg8bit_suffix(path.name)
        if suffix:
            found[f"{path.parent.name}_{path.name[: -len(suffix)]}"] = path
    return found


def _masks_by_stem(converted_root: Path, split: str, encoding: str) -> dict[str, Path]:
    suffix = f"_gtFine_label{encoding}s.png"
    split_dir = converted_root / "gtFine" / split
    if not split_dir.is_dir():
        return {}
    return {
        f"{path.parent.name}_{path.name[: -len(suffix)]}": path
        for path in sorted(split_dir.glob(f"*/*{suffix}"))
    }


def organize_splits(image_root: Path, converted_root: Path, out_root: Path, level: str, train_scale: float = 1.0,
                    workers: int = 1) -> SplitSummary:
    """Build `<out_root>/<IDDLx>/<split>/{images,masks}` for label `level`; replaces any previous tree.
    `train_scale` < 1 stores the training pairs resized (module docstring), with `workers` processes."""
    labels.check_level(level)
    if not 0 < train_scale <= 1:
        raise ValueError(f"train_scale must be in (0, 1], got {train_scale}")
    encoding = labels.LEVEL_ENCODING[level]
    if not (image_root / "leftImg8bit").is_dir():
        raise InputError(image_root, "no leftImg8bit/ folder: not an IDD dataset root")
    if not (converted_root / "gtFine").is_dir():
        raise InputError(converted_root, "no gtFine/ folder: run `idd-edge convert` first")

    dataset_name = labels.LEVEL_DIR_NAME[level]
    summary = SplitSummary(level=level, dataset_dir=str(out_root / dataset_name), train_scale=train_scale)
    out_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_root, prefix=".staging-"))
    try:
        for split in SPLITS:
            images = _images_by_stem(image_root, split)
            masks = _masks_by_stem(converted_root, split, encoding)
            if split != "test" and images and not masks:
                raise InputError(
                    converted_root / "gtFine" / split,
                    f"no *_gtFine_label{encoding}s.png masks for level {level}: convert with --encoding {encoding}",
                )
            image_dir = staging / dataset_name / split / "images"
            mask_dir = staging / dataset_name / split / "masks"
            image_dir.mkdir(parents=True)
            mask_dir.mkdir(parents=True)
            paired = sorted(images.keys() & masks.keys())
            scaled = set(paired) if split == "train" and train_scale < 1 else set()
            for stem in tqdm(sorted(images.keys() - scaled), desc=f"split {split}", unit="img", leave=False):
                image = images[stem]
                summary.copied_instead_of_linked += link_or_copy(image, image_dir / f"{stem}{image.suffix}")
                if stem in masks:
                    summary.copied_instead_of_linked += link_or_copy(masks[stem], mask_dir / f"{stem}.png")
            jobs = [(images[stem], masks[stem], image_dir / f"{stem}.png", mask_dir / f"{stem}.png", train_scale)
                    for stem in sorted(scaled)]
            map_in_processes(_write_scaled, jobs, workers, {"desc": f"split {split} x{train_scale:g}", "unit": "img",
                                                            "leave": False})
            summary.pairs[split] = len(paired)
            summary.images_without_mask[split] = sorted(images.keys() - masks.keys())
            summary.masks_without_image[split] = sorted(masks.keys() - images.keys())
            unusable = summary.images_without_mask[split] if split != "test" else []
            if unusable or summary.masks_without_image[split]:
                log.warning(
                    "%s: %d images without mask, %d masks without image (see split summary)",
                    split, len(unusable), len(summary.masks_without_image[split]),
                )
        atomic.write_json(staging / dataset_name / "split_summary.json", summary.__dict__)
        atomic.replace_dir(staging / dataset_name, out_root / dataset_name)
        # Only one label level lives in the output at a time, so DVC tracks exactly what training reads.
        for stale in out_root.glob("IDDL*"):
            if stale.name != dataset_name:
                shutil.rmtree(stale)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "split", help="organise images + masks into <IDDLx>/{train,val,test}/{images,masks}"
    )
    parser.add_argument("image_root", type=Path, help="IDD root holding leftImg8bit/")
    parser.add_argument("converted_root", type=Path, help="output root of `idd-edge convert`")
    parser.add_argument("out_root", type=Path, help="where <IDDLx>/ is written")
    parser.add_argument("--level", required=True, choices=sorted(labels.LEVEL_ENCODING))
    parser.add_argument("--train-scale", type=float, default=1.0,
                        help="store training pairs resized by this factor (default 1: hard links)")
    parser.add_argument("--workers", type=int, default=1, help="processes resizing training pairs")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    summary = organize_splits(args.image_root, args.converted_root, args.out_root, args.level, args.train_scale,
                              args.workers)
    log.info(
        "%s: %s pairs (train/val/test), %d test images without mask%s",
        summary.dataset_dir,
        "/".join(str(summary.pairs[s]) for s in SPLITS),
        len(summary.images_without_mask["test"]),
        f", {summary.copied_instead_of_linked} files copied (other file system)"
        if summary.copied_instead_of_linked
        else "",
    )
    return 0

