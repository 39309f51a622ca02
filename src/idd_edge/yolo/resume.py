"""Resuming an interrupted Ultralytics training run of a stage (`yolo-train`, `yolo-sem-train`).

Ultralytics writes `weights/last.pt` (model, EMA, optimizer, epoch) after every epoch into the stage's
staging directory, which only becomes the stage's output when training ends. A run killed half way (a
lost SSH session, a pre-empted GPU box: hours at IDD scale) leaves that directory behind; the next run of
the stage continues from its `last.pt` when it was started with the same settings on the same dataset, and
starts afresh otherwise. What "the same" means is a fingerprint recorded beside the staging directory
(`<staging>.run.json`, so the stage's output stays Ultralytics' own) when a run starts: the stage's
settings and every dataset file's path, size and modification time (DVC replaces a changed file, which
changes its time). Ultralytics' own label caches (`*.cache`) are left out: it rewrites them while training.

The checkpoint is loaded by Ultralytics (`resume=`), through the class allow-list of `yolo/offline.py`
(`torch.load(weights_only=True)`), and it is this stage's own file, never one from outside.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from idd_edge import atomic

log = logging.getLogger(__name__)

CHECKPOINT = Path("weights") / "last.pt"
IGNORED_SUFFIXES = (".cache",)


def dataset_fingerprint(dataset: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime ns) of every file under `dataset`, Ultralytics' caches left out."""
    stats = {p: p.stat() for p in dataset.rglob("*") if p.is_file() and p.suffix not in IGNORED_SUFFIXES}
    return [(str(p.relative_to(dataset)), stat.st_size, stat.st_mtime_ns) for p, stat in sorted(stats.items())]


def run_fingerprint(settings: dict[str, Any], dataset: Path) -> str:
    """Hash of what defines a run: the stage's settings and its dataset's files."""
    spec = {"settings": settings, "dataset": dataset_fingerprint(dataset)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def state_file(staging: Path) -> Path:
    """Where the fingerprint of the run writing `staging` is kept (beside it, not in the stage's output)."""
    return staging.with_name(staging.name + ".run.json")


def prepare_staging(staging: Path, fingerprint: str) -> Path | None:
    """The `last.pt` to resume when `staging` holds an interrupted run with this `fingerprint`; otherwise
    None, with `staging` emptied and the new run's fingerprint recorded in it."""
    last, state = staging / CHECKPOINT, state_file(staging)
    if last.is_file() and state.is_file():
        try:
            recorded = json.loads(state.read_text()).get("fingerprint")
        except (OSError, ValueError):
            recorded = None
        if recorded == fingerprint:
            log.info("resuming the interrupted training run from %s", last)
            return last
        log.info("%s holds a run of other settings or data: starting afresh", staging)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    atomic.write_json(state, {"fingerprint": fingerprint})
    return None
