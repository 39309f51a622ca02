"""`idd-edge yolo-bridge`: converted IDD instance masks -> an Ultralytics instance-segmentation dataset.

Reads `<instances>/gtFine/<split>/<drive>/<id>_gtFine_instance<enc>s.png` (uint16: class * 1000 + k for
instances, plain class values for stuff, groups and crowds) and the raw frames
`<images>/leftImg8bit/<split>/<drive>/<id>_leftImg8bit.{png,jpg}`, and writes

    <out>/images/<split>/<drive>_<id>.<ext>   hard links to the frames (a copy only across file systems)
    <out>/labels/<split>/<drive>_<id>.txt     one line per instance: class x1 y1 x2 y2 ... (normalised)
    <out>/data.yaml                           paths relative to itself, class names

Each label polygon covers the instance's visible pixels only (its pixels in the instance PNG, where
later, nearer objects already overwrote it); a split instance keeps all its parts, and holes, in its one
line (see polygons.py). Values below 1000 (group labels such as `cargroup`, crowds) are not instances.
IDD label names map to YOLO classes through `yolo.classes`, resolved in the encoding of the PNGs read.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from idd_edge import atomic, config, labels
from idd_edge.pool import map_in_processes
from idd_edge.errors import InputError, StageError
from idd_edge.images import find_leftimg8bit
from idd_edge.yolo import polygons

log = logging.getLogger(__name__)

#: Instance values are class * 1000 + k; anything below is a plain class (stuff, group, crowd).
INSTANCE_OFFSET = 1000


def instance_suffix(encoding: str) -> str:
    """File-name suffix of instance PNGs in `encoding` (official naming: `_gtFine_instance<enc>s.png`)."""
    labels.check_encoding(encoding)
    return f"_gtFine_instance{encoding}s.png"


@dataclass(frozen=True)
class ClassMap:
    """YOLO classes (id = position) and the encoded IDD class values that feed each."""

    names: tuple[str, ...]
    value_to_class: Mapping[int, int]
    encoding: str


def resolve_classes(
    classes: Mapping[str, Sequence[str]], encoding: str, source: str | os.PathLike | None = None
) -> ClassMap:
    """Resolve `{yolo_name: [IDD label names]}` against `encoding`; errors name `source` (the config).

    Refused: unknown names, labels without instances, group names (never instances), and mappings the
    encoding cannot express (a value holding labels that are not all mapped to the same YOLO class).
    """
    try:
        labels.check_encoding(encoding)
    except ValueError as exc:
        raise InputError(source, str(exc)) from None
    if not classes:
        raise InputError(source, "yolo.classes is empty: name at least one YOLO class")
    value_to_class: dict[int, int] = {}
    label_to_class: dict[str, int] = {}
    for class_id, (yolo_name, idd_names) in enumerate(classes.items()):
        if isinstance(idd_names, str) or not idd_names:
            raise InputError(source, f"yolo.classes.{yolo_name} must be a non-empty list of IDD label names")
        for name in idd_names:
            if labels.is_group(name):
                raise InputError(
                    source, f"yolo.classes.{yolo_name}: {name!r} is a group label; groups are never instances"
                )
            label = labels.NAME_TO_LABEL.get(name)
            if label is None:
                raise InputError(source, f"yolo.classes.{yolo_name}: unknown IDD label {name!r}")
            if not label.hasInstances:
                raise InputError(source, f"yolo.classes.{yolo_name}: IDD label {name!r} has no instances")
            if label_to_class.setdefault(name, class_id) != class_id:
                raise InputError(source, f"IDD label {name!r} is mapped to two YOLO classes")
            value_to_class[label.value(encoding)] = class_id
    for label in labels.LABELS:
        value = label.value(encoding)
        if label.hasInstances and value in value_to_class and label_to_class.get(label.name) != value_to_class[value]:
            together = sorted(lb.name for lb in labels.LABELS if lb.hasInstances and lb.value(encoding) == value)
            raise InputError(
                source,
                f"encoding {encoding} gives {', '.join(together)} the same value {value}: map them to one YOLO class "
                f"or convert the instances with a finer encoding (id)",
            )
    return ClassMap(tuple(classes), value_to_class, encoding)


@dataclass
class ImageResult:
    """What bridging one frame produced (returned by worker processes)."""

    split: str
    name: str
    instances: list[int]  # per YOLO class
    corrupt: str | None = None
    multi_part: int = 0
    with_holes: int = 0
    dropped_small: int = 0
    polygon_ious: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Task:
    split: str
    name: str
    instance_png: Path
    image: Path | None
    out_image: Path
    out_label: Path
    value_to_class: Mapping[int, int]
    num_classes: int
    simplify_px: float
    min_area: int


def bridge(
    instances_root: Path,
    images_root: Path,
    out: Path,
    class_map: ClassMap,
    splits: Sequence[str] = ("train", "val"),
    simplify_px: float = 0.5,
    min_area: int = 10,
    workers: int = 2,
    strict: bool = False,
) -> dict:
    """Write the Ultralytics dataset at `out` (atomically replaced) and return the report."""
    if "train" not in splits or "val" not in splits:
        raise InputError(
            None, f"yolo.bridge.splits must include train and val (Ultralytics needs both), got {list(splits)}"
        )
    staging = out.with_name(f".{out.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    tasks = [
        task
        for split in splits
        for task in _split_tasks(instances_root, images_root, staging, split, class_map, simplify_px, min_area)
    ]
    results = _run(tasks, workers)
    report = _report(results, class_map, splits, instances_root, images_root)
    corrupt = report["corrupt_files"]
    if corrupt and strict:
        first = corrupt[0]
        raise StageError(
            f"{len(corrupt)} corrupt inputs (yolo.bridge.strict); first: {first['file']}: {first['problem']}"
        )
    _write_data_yaml(staging / "data.yaml", class_map, splits, instances_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.replace_dir(staging, out)
    return report


def _split_tasks(
    instances_root: Path,
    images_root: Path,
    staging: Path,
    split: str,
    class_map: ClassMap,
    simplify_px: float,
    min_area: int,
) -> list[_Task]:
    suffix = instance_suffix(class_map.encoding)
    split_dir = instances_root / "gtFine" / split
    pngs = sorted(split_dir.glob(f"*/*{suffix}"))
    if not pngs:
        raise InputError(
            split_dir,
            f"no *{suffix} files; convert the instances first: idd-edge convert IDD_ROOT {instances_root} "
            f"--encoding {class_map.encoding} --instance",
        )
    tasks = []
    for png in pngs:
        drive, image_id = png.parent.name, png.name[: -len(suffix)]
        image = find_leftimg8bit(images_root / "leftImg8bit" / split / drive, image_id)
        name = f"{drive}_{image_id}"
        ext = image.suffix if image else ".png"
        tasks.append(
            _Task(
                split, name, png, image,
                staging / "images" / split / f"{name}{ext}",
                staging / "labels" / split / f"{name}.txt",
                dict(class_map.value_to_class), len(class_map.names), simplify_px, min_area,
            )
        )
    return tasks


def _run(tasks: list[_Task], workers: int) -> list[ImageResult]:
    return map_in_processes(_bridge_image, tasks, workers, {"desc": "yolo-bridge", "unit": "img", "mininterval": 1.0},
                            chunksize=8, min_jobs=8)


def _bridge_image(task: _Task) -> ImageResult:
    """Label lines and image link for one frame; a bad input becomes a `corrupt` result, not an exception."""
    result = ImageResult(task.split, task.name, [0] * task.num_classes)
    instance_map, result.corrupt = _load_inputs(task)
    if instance_map is None:
        return result
    height, width = instance_map.shape
    lines = []
    for value, (y0, y1, x0, x1) in instance_boxes(instance_map).items():
        class_id = task.value_to_class.get(value // INSTANCE_OFFSET)
        if class_id is None:
            continue
        mask = instance_map[y0:y1, x0:x1] == value
        if int(mask.sum()) < task.min_area:
            result.dropped_small += 1
            continue
        rings = polygons.mask_rings(mask, task.simplify_px)
        if not rings:
            result.dropped_small += 1
            continue
        polygon = polygons.rings_to_polygon(rings)
        result.polygon_ious.append(_iou(mask, polygons.polygon_to_mask(polygon, mask.shape)))
        result.multi_part += sum(not ring.is_hole for ring in rings) > 1
        result.with_holes += any(ring.is_hole for ring in rings)
        result.instances[class_id] += 1
        normalized = (polygon + (x0, y0)) / (width, height)
        lines.append(f"{class_id} " + " ".join(f"{c:.6f}" for c in normalized.ravel()))
    atomic.write_text(task.out_label, "".join(line + "\n" for line in lines))
    link_or_copy(task.image, task.out_image)
    return result


def _load_inputs(task: _Task) -> tuple[np.ndarray | None, str | None]:
    """(instance map, None) for a usable frame, else (None, why it cannot be used)."""
    if task.image is None:
        return None, f"{task.instance_png}: no leftImg8bit image (.png/.jpg) for it"
    instance_map = cv2.imread(str(task.instance_png), cv2.IMREAD_UNCHANGED)
    if instance_map is None:
        return None, f"{task.instance_png}: unreadable PNG"
    if instance_map.dtype != np.uint16 or instance_map.ndim != 2:
        return None, (
            f"{task.instance_png}: expected a single-channel uint16 instance PNG, "
            f"got {instance_map.dtype} {instance_map.shape}"
        )
    try:
        with Image.open(task.image) as image:
            size = image.size
            image.verify()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a corrupt frame
        return None, f"{task.image}: unreadable image ({exc})"
    if size != (instance_map.shape[1], instance_map.shape[0]):
        return None, (
            f"{task.image}: size {size[0]}x{size[1]} differs from its instance PNG "
            f"{instance_map.shape[1]}x{instance_map.shape[0]}"
        )
    return instance_map, None


def instance_boxes(instance_map: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """Instance value -> (y0, y1, x0, x1) bounding slice, for every value >= 1000, in ascending order.

    One pass over the instance pixels instead of one full-frame comparison per instance.
    """
    ys, xs = np.nonzero(instance_map >= INSTANCE_OFFSET)
    if ys.size == 0:
        return {}
    values = instance_map[ys, xs]
    order = np.argsort(values, kind="stable")
    values, ys, xs = values[order], ys[order], xs[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    boxes = {}
    for start, end in zip(starts, np.r_[starts[1:], values.size]):
        rows, cols = ys[start:end], xs[start:end]
        boxes[int(values[start])] = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
    return boxes


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target`; copy (atomically) only when they are on different file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        atomic.write_bytes(target, source.read_bytes())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _report(
    results: list[ImageResult], class_map: ClassMap, splits: Sequence[str], instances_root: Path, images_root: Path
) -> dict:
    report: dict = {
        "instances_root": str(instances_root),
        "images_root": str(images_root),
        "encoding": class_map.encoding,
        "classes": list(class_map.names),
        "splits": {},
        "corrupt_files": [],
    }
    for split in splits:
        rows = [r for r in results if r.split == split]
        good = [r for r in rows if r.corrupt is None]
        per_class = np.sum([r.instances for r in good], axis=0) if good else np.zeros(len(class_map.names), int)
        ious = np.array([iou for r in good for iou in r.polygon_ious])
        report["splits"][split] = {
            "images": len(good),
            "backgrounds": sum(sum(r.instances) == 0 for r in good),
            "corrupt": len(rows) - len(good),
            "instances": {name: int(n) for name, n in zip(class_map.names, per_class)},
            "instances_total": int(per_class.sum()),
            "multi_part_instances": sum(r.multi_part for r in good),
            "instances_with_holes": sum(r.with_holes for r in good),
            "dropped_small": sum(r.dropped_small for r in good),
            "polygon_iou": {
                "mean": round(float(ious.mean()), 4) if ious.size else None,
                "p05": round(float(np.percentile(ious, 5)), 4) if ious.size else None,
            },
        }
        report["corrupt_files"] += [{"file": f"{split}/{r.name}", "problem": r.corrupt} for r in rows if r.corrupt]
    return report


def _write_data_yaml(path: Path, class_map: ClassMap, splits: Sequence[str], instances_root: Path) -> None:
    import yaml

    data = {split: f"images/{split}" for split in splits}
    data["nc"] = len(class_map.names)
    data["names"] = dict(enumerate(class_map.names))
    header = (
        f"# Ultralytics segmentation dataset written by `idd-edge yolo-bridge` from {instances_root}\n"
        f"# (encoding {class_map.encoding}). Paths are relative to this file's directory.\n"
    )
    atomic.write_text(path, header + yaml.safe_dump(data, sort_keys=False))


def format_report(report: dict) -> str:
    """The seed-style table: per split images, backgrounds, corrupt, instances per class."""
    names = report["classes"]
    header = ["split", "images", "backgrounds", "corrupt", *names, "multi-part", "polygon IoU"]
    rows = [header]
    for split, s in report["splits"].items():
        iou = s["polygon_iou"]["mean"]
        rows.append(
            [split, s["images"], s["backgrounds"], s["corrupt"], *(s["instances"][n] for n in names),
             s["multi_part_instances"], "-" if iou is None else f"{iou:.3f}"]
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in rows)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("yolo-bridge", help="converted IDD instances -> Ultralytics segmentation dataset")
    parser.add_argument("instances", type=Path, help="root of the converted instance PNGs (gtFine/<split>/...)")
    parser.add_argument("images", type=Path, help="raw IDD root holding leftImg8bit/<split>/...")
    parser.add_argument("out", type=Path, help="dataset directory to write (replaced atomically)")
    parser.add_argument("--report", type=Path, help="JSON report path (default: yolo.bridge.report)")
    parser.add_argument("--params", type=Path, default=config.PARAMS_FILE)
    parser.set_defaults(handler=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    params = config.load_params(args.params)
    settings = config.section(params, "yolo.bridge", args.params)
    class_map = resolve_classes(
        config.section(params, "yolo.classes", args.params),
        config.section(params, "yolo.instances.encoding", args.params),
        args.params,
    )
    report = bridge(
        args.instances,
        args.images,
        args.out,
        class_map,
        splits=settings["splits"],
        simplify_px=float(settings["simplify_px"]),
        min_area=int(settings["min_area"]),
        workers=int(settings["workers"]),
        strict=bool(settings["strict"]),
    )
    report_path = args.report or Path(settings["report"])
    atomic.write_json(report_path, report)
    log.info("wrote %s (%s); report %s\n%s", args.out, ", ".join(report["classes"]), report_path, format_report(report))
    for entry in report["corrupt_files"][:10]:
        log.warning("corrupt: %s: %s", entry["file"], entry["problem"])
    return 0
