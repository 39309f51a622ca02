"""`idd-edge calibrate`: the calibration set for INT8 quantization (ONNX Runtime and the Hailo DFC).

Images come from the training split only, chosen so that every class is seen (stratified: the class with
the fewest chosen images so far gets the next pick), and stored as one NHWC uint8 `.npy` of raw 0-255 RGB
pixels per model input. The Hailo DFC takes float32 0-255 (the model script adds the normalization on the
chip) and ONNX Runtime's reader normalizes in software: both convert at use. The preprocessed pixels are
whole numbers 0-255 (OpenCV resizes and letterboxes uint8 frames), so uint8 holds them exactly at a quarter
of float32's size (1024 images at 512x512: 0.8 instead of 3.2 GB on disk and in the DVC cache); a
preprocessing that made fractional values would fail the stage instead of being rounded. A coverage report compares the class pixel share of
the calibration set with the validation split, and a leakage check fails the stage when a calibration
image has the same pixels as any validation or test image (content hash, so renamed copies are caught).

The seed used 64 images, which made the DFC drop to optimization level 0; the DFC recommends 1024.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from idd_edge import atomic
from idd_edge.errors import InputError, StageError
from idd_edge.images import is_image
from idd_edge.labels import LEVEL_CLASS_NAMES

log = logging.getLogger(__name__)

#: The DFC's recommended calibration size (fewer images and no GPU: optimization level 0).
DFC_RECOMMENDED_IMAGES = 1024

#: Turns one RGB uint8 image into the (H, W, 3) float32 0-255 array the model input expects.
Preprocess = Callable[[np.ndarray], np.ndarray]
#: How the calibration arrays are stored: exactly the preprocessed 0-255 pixels (see the module docstring).
STORED_DTYPE = np.dtype(np.uint8)


@dataclass(frozen=True)
class Sample:
    stem: str
    image: Path
    mask: Path | None


def list_samples(split_dir: Path, require_masks: bool = True) -> list[Sample]:
    """Image/mask pairs of one split directory (`images/<stem>.<png|jpg>`, `masks/<stem>.png`)."""
    image_dir, mask_dir = split_dir / "images", split_dir / "masks"
    if not image_dir.is_dir():
        raise InputError(image_dir, "image directory not found; run the split stage first")
    samples = []
    for image in sorted(image_dir.iterdir()):
        if not is_image(image):
            continue
        mask = mask_dir / f"{image.stem}.png"
        if not mask.is_file():
            if require_masks:
                continue  # unannotated images cannot be stratified; the split stage reports them
            mask = None
        samples.append(Sample(image.stem, image, mask))
    return samples


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, read by the training code's reader (errors name the file)."""
    from idd_edge.seg.data import read_image

    return read_image(path)


def read_train_ids(path: Path, level: str) -> np.ndarray:
    """A mask as train ids of `level`, read and encoded by the training code (raw IDD ids are remapped)."""
    from idd_edge.seg.data import encode_mask, read_mask

    return encode_mask(read_mask(path), level, "auto", path)


def content_hash(image: np.ndarray) -> str:
    """sha256 of the decoded pixels (and shape): equal for renamed or losslessly re-encoded copies."""
    digest = hashlib.sha256(f"{image.shape}|{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def class_pixel_counts(masks: Iterable[Path], level: str, workers: int = 2, desc: str = "masks") -> np.ndarray:
    """(n_masks, C) int64 pixel counts per train id of `level` (void not counted)."""
    paths = list(masks)
    num_classes = len(LEVEL_CLASS_NAMES[level])

    def count(path: Path) -> np.ndarray:
        return np.bincount(read_train_ids(path, level).ravel(), minlength=256)[:num_classes]

    with ThreadPoolExecutor(max_workers=workers) as pool:  # cv2 releases the GIL while decoding
        rows = list(tqdm(pool.map(count, paths), total=len(paths), desc=f"counting {desc}", leave=False))
    return np.stack(rows).astype(np.int64) if rows else np.zeros((0, num_classes), dtype=np.int64)


def select_stratified(counts: np.ndarray, num_images: int, seed: int) -> list[int]:
    """Indices of `num_images` rows of `counts` covering every class as evenly as possible.

    Repeatedly takes the class with the fewest chosen images so far (ties: the rarer class in the pool,
    then the lower id) among classes that still have unchosen images, and adds a random unchosen image
    containing it. Rare classes therefore enter the set first; images holding no class fill the rest.
    """
    n_images, n_classes = counts.shape
    if num_images >= n_images:
        return list(range(n_images))
    rng = np.random.default_rng(seed)
    present = counts > 0
    pool_frequency = present.sum(axis=0)
    candidates = [list(rng.permutation(np.flatnonzero(present[:, c]))) for c in range(n_classes)]
    chosen: list[int] = []
    taken = np.zeros(n_images, dtype=bool)
    covered = np.zeros(n_classes, dtype=np.int64)
    while len(chosen) < num_images:
        for c in range(n_classes):  # drop already-taken images from the heads of the candidate lists
            while candidates[c] and taken[candidates[c][-1]]:
                candidates[c].pop()
        open_classes = [c for c in range(n_classes) if candidates[c]]
        if open_classes:
            target = min(open_classes, key=lambda c: (covered[c], pool_frequency[c], c))
            pick = int(candidates[target].pop())
        else:
            pick = int(rng.choice(np.flatnonzero(~taken)))
        taken[pick] = True
        chosen.append(pick)
        covered += present[pick]
    return chosen


def coverage_report(calib_counts: np.ndarray, val_counts: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Per class: pixel share (0..1) in the calibration set and in validation, and calibration images
    containing it; plus the classes present in validation that the calibration set never shows."""
    calib_total, val_total = calib_counts.sum(), val_counts.sum()
    calib_per_class, val_per_class = calib_counts.sum(axis=0), val_counts.sum(axis=0)
    images_with = (calib_counts > 0).sum(axis=0)
    per_class = {
        name: {
            "calibration_share": float(calib_per_class[c] / calib_total) if calib_total else 0.0,
            "validation_share": float(val_per_class[c] / val_total) if val_total else 0.0,
            "calibration_images": int(images_with[c]),
        }
        for c, name in enumerate(class_names)
    }
    missing = [name for c, name in enumerate(class_names) if val_per_class[c] > 0 and calib_per_class[c] == 0]
    return {"per_class": per_class, "missing_from_calibration": missing,
            "classes_covered": int((calib_per_class > 0).sum()), "num_classes": len(class_names)}


def leakage_check(calibration_hashes: Mapping[str, str], held_out: Sequence[Sample], workers: int = 2) -> list[dict[str, str]]:
    """Pairs (calibration image, held-out image) with identical pixels."""
    by_hash = {digest: stem for stem, digest in calibration_hashes.items()}

    def digest(sample: Sample) -> tuple[Sample, str]:
        return sample, content_hash(read_rgb(sample.image))

    overlaps = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for sample, value in tqdm(pool.map(digest, held_out), total=len(held_out), desc="leakage check", leave=False):
            if value in by_hash:
                overlaps.append({"calibration": by_hash[value], "held_out": str(sample.image)})
    return overlaps


def as_stored_pixels(image: np.ndarray, what: str) -> np.ndarray:
    """`image` as uint8, refusing values that are not whole numbers in 0-255 (they would be rounded)."""
    pixels = np.asarray(image)
    if pixels.dtype == STORED_DTYPE:
        return pixels
    stored = np.clip(pixels, 0, 255).astype(STORED_DTYPE)
    if not np.array_equal(stored, pixels):
        low, high = float(pixels.min()), float(pixels.max())
        raise StageError(f"{what}: preprocessed pixels span {low}..{high} or are fractional; calibration arrays "
                         "hold whole 0-255 values (uint8)")
    return stored


def write_npy_streamed(path: Path, images: Iterable[np.ndarray], count: int, shape: tuple[int, int, int]) -> dict[str, Any]:
    """Write `count` (H, W, 3) 0-255 images as one (count, H, W, 3) uint8 `.npy`, one image in memory at a
    time (1024 images at 512x512 are 0.8 GB). Returns the array's shape and value range."""
    header = {"descr": np.lib.format.dtype_to_descr(STORED_DTYPE), "fortran_order": False, "shape": (count, *shape)}
    low, high, written = 255, 0, 0
    with atomic.atomic_open(path, "wb") as handle:
        np.lib.format.write_array_header_2_0(handle, header)
        for image in images:
            if image.shape != shape:
                raise StageError(f"{path}: preprocessed image has shape {image.shape}, expected {shape}")
            pixels = as_stored_pixels(image, f"{path} image {written}")
            handle.write(np.ascontiguousarray(pixels).tobytes())
            low, high, written = min(low, int(pixels.min())), max(high, int(pixels.max())), written + 1
        if written != count:
            raise StageError(f"{path}: wrote {written} images, expected {count}")
    return {"shape": [count, *shape], "dtype": STORED_DTYPE.name, "layout": "NHWC", "min": low, "max": high}


def build_calibration_set(
    train_dir: Path,
    val_dir: Path,
    held_out_dirs: Sequence[Path],
    targets: Mapping[str, tuple[Preprocess, tuple[int, int]]],
    out_dir: Path,
    *,
    num_images: int,
    seed: int,
    level: str,
    workers: int = 2,
) -> dict[str, Any]:
    """Choose the calibration images, write one `<key>.npy` per target and `calibration.json`.

    `targets` maps an array key (e.g. "resize_512x512") to its preprocessing and (H, W) input size.
    Raises StageError if a calibration image also appears (same pixels) in a held-out split.
    """
    if num_images < 1:
        raise InputError(None, f"calibrate.num_images must be >= 1, got {num_images}")
    class_names = LEVEL_CLASS_NAMES[level]
    warnings: list[str] = []
    train = list_samples(train_dir)
    if not train:
        raise InputError(train_dir, "no image/mask pairs in the training split")
    val = list_samples(val_dir)
    if num_images > len(train):
        warnings.append(f"requested {num_images} calibration images but the training split has {len(train)}: using all")
    if min(num_images, len(train)) < DFC_RECOMMENDED_IMAGES:
        warnings.append(f"{min(num_images, len(train))} calibration images is below the {DFC_RECOMMENDED_IMAGES} the "
                        "Hailo DFC recommends: it will reduce the optimization level (the seed's 64 gave level 0)")
    train_counts = class_pixel_counts((s.mask for s in train), level, workers, "train masks")
    chosen = select_stratified(train_counts, num_images, seed)
    calib_samples = [train[i] for i in chosen]

    # Leakage first: a failing check should not cost writing gigabytes of arrays.
    hashes = {sample.stem: content_hash(read_rgb(sample.image))
              for sample in tqdm(calib_samples, desc="hashing calibration images", leave=False)}
    held_out = [sample for directory in held_out_dirs if (directory / "images").is_dir()
                for sample in list_samples(directory, require_masks=False)]
    overlaps = leakage_check(hashes, held_out, workers)
    if overlaps:
        shown = "; ".join(f"{o['calibration']} = {o['held_out']}" for o in overlaps[:10])
        raise StageError(f"{len(overlaps)} calibration image(s) also in validation/test (same pixels): {shown}")

    arrays: dict[str, Any] = {}
    for key, (preprocess, size_hw) in targets.items():
        def preprocessed(preprocess: Preprocess = preprocess, key: str = key) -> Iterable[np.ndarray]:
            for sample in tqdm(calib_samples, desc=f"calibration {key}", leave=False):
                yield preprocess(read_rgb(sample.image))

        info = write_npy_streamed(out_dir / f"{key}.npy", preprocessed(), len(calib_samples), (*size_hw, 3))
        arrays[key] = {"file": f"{key}.npy", **info}

    val_counts = class_pixel_counts((s.mask for s in val), level, workers, "val masks")
    coverage = coverage_report(train_counts[chosen], val_counts, class_names)
    if coverage["missing_from_calibration"]:
        warnings.append("classes present in validation but absent from the calibration set: "
                        + ", ".join(coverage["missing_from_calibration"]))
    for warning in warnings:
        log.warning("%s", warning)
    record = {
        "num_requested": num_images,
        "num_images": len(calib_samples),
        "seed": seed,
        "label_level": level,
        "source_split": str(train_dir),
        "images": [{"stem": s.stem, "file": str(s.image), "content_sha256": hashes[s.stem]} for s in calib_samples],
        "arrays": arrays,
        "coverage": coverage,
        "leakage": {"held_out_images_checked": len(held_out), "overlaps": []},
        "warnings": warnings,
    }
    atomic.write_json(out_dir / "calibration.json", record)
    return record


def plot_coverage(coverage: Mapping[str, Any], path: Path) -> Path:
    """Grouped bars: class pixel share in the calibration set vs validation (percent, log scale)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per_class = coverage["per_class"]
    names = list(per_class)
    calib = [100 * per_class[n]["calibration_share"] for n in names]
    val = [100 * per_class[n]["validation_share"] for n in names]
    figure = Figure(figsize=(7.5, max(3.0, 0.32 * len(names) + 1.2)), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    axes.barh(positions - 0.2, calib, height=0.4, color="#2e86c1", label="calibration set")
    axes.barh(positions + 0.2, val, height=0.4, color="#95a5a6", label="validation")
    axes.set_yticks(positions, labels=names, fontsize=8)
    axes.invert_yaxis()
    if any(v > 0 for v in calib + val):
        axes.set_xscale("log")
    axes.set_xlabel("share of labelled pixels (%)")
    missing = coverage["missing_from_calibration"]
    axes.set_title(f"Calibration class coverage ({coverage['classes_covered']}/{coverage['num_classes']} classes"
                   + (f"; missing: {', '.join(missing)}" if missing else "") + ")", fontsize=9)
    axes.legend(fontsize=8, loc="best")
    axes.grid(axis="x", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".") or "png")
    atomic.write_bytes(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("calibrate", help="calibration set (NHWC uint8 0-255 .npy) for INT8 quantization")
    parser.add_argument("--params", default="params.yaml")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from idd_edge import config
    from idd_edge.export import preprocessing

    params = config.load_params(args.params)
    cfg = config.section(params, "calibrate", args.params)
    level = config.section(params, "label_level", args.params)
    split_root = Path(config.section(params, "split.out", args.params)) / level["dir_name"]
    exports = preprocessing.load_exports(Path(config.section(params, "export.out", args.params)))
    targets = preprocessing.calibration_targets(exports)
    out_dir = Path(cfg["out"])
    record = build_calibration_set(
        split_root / "train", split_root / "val", [split_root / "val", split_root / "test"], targets, out_dir,
        num_images=int(cfg["num_images"]), seed=int(cfg["seed"]), level=level["name"], workers=int(cfg["workers"]),
    )
    plot_coverage(record["coverage"], Path(cfg["coverage_plot"]))
    log.info("calibration set: %d images, %d/%d classes covered, arrays %s", record["num_images"],
             record["coverage"]["classes_covered"], record["coverage"]["num_classes"], ", ".join(record["arrays"]))
    print(json.dumps({"num_images": record["num_images"], "arrays": list(record["arrays"]),
                      "warnings": record["warnings"]}, indent=2))
    return 0
