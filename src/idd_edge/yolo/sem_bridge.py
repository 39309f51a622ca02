"""`idd-edge yolo-sem-bridge`: a label level's split -> the dataset layout of Ultralytics' `semantic` task.

Reads `<split_root>/<IDDLx>/{train,val}/{images,masks}` (the `split` stage: masks in the level's train
ids, void 255) and writes

    <out>/images/<split>/<stem>.<ext>   hard links to the split's images (a copy only across file systems)
    <out>/masks/<split>/<stem>.png      hard links to its masks: train ids as they are, void 255, which is
                                        Ultralytics' ignore label too, so no `label_mapping` is needed
    <out>/data.yaml                     paths relative to itself, `masks_dir: masks`, the level's class names

Pairs are matched by stem exactly as training matches them (`seg.data.find_pairs`), and every mask is
checked to hold only train ids of the level or void, so Ultralytics trains on the students' very labels.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from idd_edge import atomic, config
from idd_edge.data.split import link_or_copy
from idd_edge.labels import LEVEL_CLASS_NAMES, VOID
from idd_edge.seg.data import encode_mask, find_pairs, read_mask

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
MASKS_DIR = "masks"


def bridge(level_dir: Path, out: Path, level: str, splits: Sequence[str] = SPLITS) -> dict[str, int]:
    """Link `level_dir/<split>` pairs into `out` (replaced atomically); return the pair count per split."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    counts: dict[str, int] = {}
    for split in splits:
        pairs = find_pairs(level_dir / split)
        for folder in ("images", MASKS_DIR):
            (staging / folder / split).mkdir(parents=True)
        for image, mask in pairs:
            encode_mask(read_mask(mask), level, "train_id", mask)  # raises naming the mask on a foreign value
            link_or_copy(image, staging / "images" / split / image.name)
            link_or_copy(mask, staging / MASKS_DIR / split / mask.name)
        counts[split] = len(pairs)
    _write_data_yaml(staging / "data.yaml", level, splits, level_dir)
    atomic.replace_dir(staging, out)
    return counts


def _write_data_yaml(path: Path, level: str, splits: Sequence[str], source: Path) -> None:
    import yaml

    names = LEVEL_CLASS_NAMES[level]
    data: dict = {split: f"images/{split}" for split in splits}
    data.update({"masks_dir": MASKS_DIR, "nc": len(names), "names": dict(enumerate(names))})
    header = (f"# Ultralytics semantic dataset written by `idd-edge yolo-sem-bridge` from {source} ({level};\n"
              f"# void {VOID} = Ultralytics' ignore label). Paths are relative to this file's directory.\n")
    atomic.write_text(path, header + yaml.safe_dump(data, sort_keys=False))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("yolo-sem-bridge", help="label-level split -> Ultralytics semantic dataset (links)")
    parser.add_argument("level_dir", type=Path, help="the split stage's level directory, e.g. data/splits/IDDL2")
    parser.add_argument("out", type=Path, help="dataset directory to write (replaced atomically)")
    parser.add_argument("--params", type=Path, default=config.PARAMS_FILE)
    parser.set_defaults(handler=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    params = config.load_params(args.params)
    level = config.section(params, "label_level.name", args.params)
    counts = bridge(args.level_dir, args.out, level)
    log.info("wrote %s (%s, %s)", args.out, level, ", ".join(f"{n} {split}" for split, n in counts.items()))
    return 0
