"""`idd-edge synth OUT_ROOT`: the embedded synthetic IDD-format dataset (the default `data=synthetic`).

Writes a real IDD tree, `leftImg8bit/<split>/<drive>/<img_id>_leftImg8bit.png` and
`gtFine/<split>/<drive>/<img_id>_gtFine_polygons.json`, of road scenes built from IDD labels
(`synth_scene`: perspective composition, occlusion, the JSON) and painted from their own polygons
(`synth_paint`: the image pixels of an object are exactly the ones the official toolkit rasterises for
it). The JSON carries the realistic quirks a converter must survive, at low deterministic rates: ~10%
`deleted: 1` objects (never painted), crowd labels (`persongroup`, `cargroup`...), float coordinates and
shapes reaching a pixel or two outside the frame; never malformed data.

Objects per image ~ 6 + 49 * density on average (deleted ones included; standard deviation ~10 at
density 1, ~20 at 4; the same from 480x270 up, a few percent fewer in tiny frames where far objects
shrink below a pixel): the dataset uses density 1 (~55 objects); `density_for(200)` (~4.0) gives an
IDD-like load for 1920x1080 benchmarks.

Deterministic: each image has its own generator seeded by (seed, split, index), so the output is
byte-identical for equal arguments and an image does not depend on the other splits' counts.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from idd_edge import atomic, config
from idd_edge.data.synth_paint import Decals, paint_scene_with_labels
from idd_edge.data.synth_scene import annotate, compose_scene
from idd_edge.errors import InputError
from idd_edge.labels import LABELS

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
SUMMARY_NAME = "synth_summary.json"
MIN_SIDE, MAX_SIDE = 32, 8192
IMAGES_PER_DRIVE = 12  # a new drive folder every ~12 frames, at most MAX_DRIVES per split
MAX_DRIVES = 4
#: Mean objects per image (deleted included) = OBJECTS_BASE + OBJECTS_PER_DENSITY * density, measured over
#: 100 scenes at densities 1 and 4 (480x270 and 1920x1080 agree); a test keeps the calibration honest.
OBJECTS_BASE, OBJECTS_PER_DENSITY = 6.0, 43.6


def make_scene(
    rng: np.random.Generator, width: int, height: int, density: float = 1.0
) -> tuple[dict[str, Any], np.ndarray]:
    """One synthetic road scene: its IDD polygon annotation and the RGB image (H, W, 3) uint8 painted from it.

    `density` multiplies the rates of roadside objects and traffic: ~6 + 49 * density objects per image on
    average (deleted ones included); 1.0 is the dataset default, 4.0 gives ~200 objects (`density_for`).
    """
    annotation, _, image, _ = render_scene(rng, width, height, density)
    return annotation, image


def density_for(objects: float) -> float:
    """The density whose scenes hold `objects` objects on average (e.g. 200 -> ~4.0 for benchmarks)."""
    if objects <= OBJECTS_BASE:
        raise ValueError(f"scenes hold more than {OBJECTS_BASE:g} objects on average, asked for {objects}")
    return (objects - OBJECTS_BASE) / OBJECTS_PER_DENSITY


def render_scene(
    rng: np.random.Generator, width: int, height: int, density: float = 1.0
) -> tuple[dict[str, Any], dict[int, Decals], np.ndarray, np.ndarray]:
    """`make_scene` plus the painting decals and the label-id map (official `id` encoding, uint8)."""
    _check_size(width, height)
    if not density > 0:
        raise ValueError(f"density must be positive, got {density}")
    annotation, decals = annotate(rng, compose_scene(rng, width, height, density), width, height)
    image, label_ids = paint_scene_with_labels(annotation, rng, decals)
    return annotation, decals, image, label_ids


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if not integer or not MIN_SIDE <= value <= MAX_SIDE:
            raise ValueError(f"image {name} must be an integer in [{MIN_SIDE}, {MAX_SIDE}], got {value!r}")


# ---------------------------------------------------------------------------------------------- dataset


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: depends only on (seed, split, index), not on the other counts nor on
    the order in which images are generated."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def dataset_layout(counts: Mapping[str, int], seed: int) -> dict[str, list[tuple[str, str]]]:
    """(drive, img_id) of every image per split, IDD style: numeric drive folders (a few per split,
    numbered across splits) and zero-padded 6-digit frame numbers increasing within a drive."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, len(SPLITS)]))
    layout: dict[str, list[tuple[str, str]]] = {}
    next_drive = 0
    for split in SPLITS:
        n = counts.get(split, 0)
        drives = min(MAX_DRIVES, max(1, math.ceil(n / IMAGES_PER_DRIVE))) if n else 0
        names: list[tuple[str, str]] = []
        frame = 0
        for index in range(n):
            drive = str(next_drive + index * drives // n)
            if not names or drive != names[-1][0]:
                frame = int(rng.integers(0, 5000))
            frame += int(rng.integers(20, 400))
            names.append((drive, f"{frame:06d}"))
        layout[split] = names
        next_drive += drives
    return layout


def _check_arguments(counts: Mapping[str, int], seed: int) -> None:
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from {', '.join(SPLITS)}")
    for name, value in [*((f"image count of split {s!r}", n) for s, n in counts.items()), ("seed", seed)]:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _check_destination(out_root: Path) -> None:
    """Refuse to replace anything but a previous synthetic dataset or an empty directory."""
    if not out_root.exists():
        return
    if not out_root.is_dir():
        raise InputError(out_root, "exists and is not a directory")
    if any(out_root.iterdir()) and not (out_root / SUMMARY_NAME).is_file():
        raise InputError(
            out_root, f"non-empty directory without {SUMMARY_NAME}; refusing to replace what `idd-edge synth` "
            "did not write"
        )


def generate_dataset(
    out_root: str | Path, counts: Mapping[str, int], size: tuple[int, int], seed: int, density: float = 1.0
) -> dict[str, Any]:
    """Write the synthetic IDD tree at `out_root`, replacing a previous one atomically; return its summary.

    `counts` maps split -> number of images (splits left out get none), `size` is (width, height). The
    tree is staged in a sibling temporary directory and swapped in at the end. The summary, also written to
    `out_root/synth_summary.json`, gives per split the images, drives, objects, deleted objects, objects
    per label and the pixel share per label.
    """
    from tqdm import tqdm

    _check_size(*size)
    _check_arguments(counts, seed)
    out_root = Path(out_root)
    _check_destination(out_root)
    out_root.parent.mkdir(parents=True, exist_ok=True)
    layout = dataset_layout(counts, seed)
    summary: dict[str, Any] = {
        "generator": __name__, "seed": int(seed), "size": [int(size[0]), int(size[1])],
        "density": float(density), "image_format": "png", "splits": {},
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.staging-", dir=out_root.parent))
    try:
        with tqdm(total=sum(map(len, layout.values())), desc="synth", unit="img") as progress:
            for split, names in layout.items():
                summary["splits"][split] = _write_split(staging, split, names, seed, size, density, progress)
        summary["labels"] = _merge_counts(info["labels"] for info in summary["splits"].values())
        atomic.write_json(staging / SUMMARY_NAME, summary)
        atomic.replace_dir(staging, out_root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _write_split(
    root: Path, split: str, names: Sequence[tuple[str, str]], seed: int, size: tuple[int, int],
    density: float, progress: Any,
) -> dict[str, Any]:
    labels: dict[str, int] = {}
    pixels = np.zeros(256, dtype=np.int64)
    deleted = 0
    for index, (drive, img_id) in enumerate(names):
        annotation, _, image, label_ids = render_scene(image_rng(seed, split, index), *size, density)
        atomic.write_png(root / "leftImg8bit" / split / drive / f"{img_id}_leftImg8bit.png", image)
        gt_path = root / "gtFine" / split / drive / f"{img_id}_gtFine_polygons.json"
        atomic.write_json(gt_path, annotation, indent=None)
        for obj in annotation["objects"]:
            if obj["deleted"]:
                deleted += 1
            else:
                labels[obj["label"]] = labels.get(obj["label"], 0) + 1
        pixels += np.bincount(label_ids.ravel(), minlength=256)
        progress.update()
    total = max(int(pixels.sum()), 1)
    return {
        "images": len(names),
        "drives": sorted({drive for drive, _ in names}, key=int),
        "objects": sum(labels.values()) + deleted,
        "deleted": deleted,
        "labels": dict(sorted(labels.items())),
        "pixel_share": {
            label.name: round(int(pixels[label.id]) / total, 6) for label in LABELS if pixels[label.id]
        },
    }


def _merge_counts(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            merged[key] = merged.get(key, 0) + value
    return dict(sorted(merged.items()))


# ---------------------------------------------------------------------------------------------- CLI

_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """'480x270' -> (480, 270); an argparse type with a clear message for anything else."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 480x270, got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"width and height must be in [{MIN_SIDE}, {MAX_SIDE}], got {text!r}")
    return width, height


def _non_negative(text: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="write the synthetic IDD-format dataset (leftImg8bit/ + gtFine/ polygon JSON)",
        description="Write an IDD-format tree (leftImg8bit/ PNGs + gtFine/ polygon JSON) of synthetic road "
        "scenes. Options left out default to the synth section of the params file.",
    )
    parser.add_argument("out_root", nargs="?", help="output root (default: synth.out of the params file)")
    for split in SPLITS:
        parser.add_argument(
            f"--{split}", type=_non_negative, metavar="N", help=f"{split} images (default: synth.{split})"
        )
    parser.add_argument(
        "--size", type=parse_size, metavar="WxH", help="image size (default: synth.width x synth.height)"
    )
    parser.add_argument("--seed", type=_non_negative, help="random seed (default: synth.seed)")
    parser.add_argument("--params", default=str(config.PARAMS_FILE), help="defaults file (default: %(default)s)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    chosen = {"out": args.out_root, "seed": args.seed, "size": args.size}
    chosen.update({split: getattr(args, split) for split in SPLITS})
    if any(value is None for value in chosen.values()):  # read params.yaml only when something is missing
        section = config.section(config.load_params(args.params), "synth", args.params)
        defaults = _synth_params(section, args.params)
        chosen = {key: defaults[key] if value is None else value for key, value in chosen.items()}
    counts = {split: chosen[split] for split in SPLITS}
    summary = generate_dataset(chosen["out"], counts, chosen["size"], chosen["seed"])
    objects = sum(info["objects"] for info in summary["splits"].values())
    log.info("wrote %s: %s images (%s) at %dx%d, %d objects", chosen["out"], sum(counts.values()),
             ", ".join(f"{split} {n}" for split, n in counts.items()), *chosen["size"], objects)
    return 0


def _synth_params(section: Any, source: str) -> dict[str, Any]:
    """The `synth` section of params.yaml, checked: errors name the file and the key."""
    if not isinstance(section, Mapping):
        raise InputError(source, "synth must be a mapping; recompose with `idd-edge params`")
    for key in ("out", "seed", "width", "height", *SPLITS):
        if key not in section:
            raise InputError(source, f"missing key 'synth.{key}'; recompose with `idd-edge params`")
    if not isinstance(section["out"], str) or not section["out"]:
        raise InputError(source, f"synth.out must be a path, got {section['out']!r}")
    for key in ("seed", "width", "height", *SPLITS):
        value = section[key]
        low, high = (MIN_SIDE, MAX_SIDE) if key in ("width", "height") else (0, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            bounds = f"in [{low}, {high}]" if high else ">= 0"
            raise InputError(source, f"synth.{key} must be an integer {bounds}, got {value!r}")
    return {**section, "size": (section["width"], section["height"])}
