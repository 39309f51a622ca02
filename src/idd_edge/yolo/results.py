"""Ultralytics' `results.csv` -> the DVC metrics and per-epoch plot tables of the YOLO stage.

`metrics.json` (what `dvc exp show` and `idd-edge compare` read):
    {"box": {"map50", "map50_95", "precision", "recall"}, "mask": {...}, "losses": {"train": {"box",
     "seg", "cls", "dfl"}, "val": {...}}, "best_epoch", "epochs"}
Box and mask metrics are those of the best epoch, the one whose weights `best.pt` holds (Ultralytics'
fitness for segmentation: box mAP50-95 + mask mAP50-95); losses are the last epoch's, as in the seed's
table. The plot tables carry every epoch with plain column names.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from idd_edge.errors import StageError

#: metrics.json name -> Ultralytics results.csv column.
METRIC_COLUMNS = {
    "box": {
        "map50": "metrics/mAP50(B)",
        "map50_95": "metrics/mAP50-95(B)",
        "precision": "metrics/precision(B)",
        "recall": "metrics/recall(B)",
    },
    "mask": {
        "map50": "metrics/mAP50(M)",
        "map50_95": "metrics/mAP50-95(M)",
        "precision": "metrics/precision(M)",
        "recall": "metrics/recall(M)",
    },
}
LOSS_NAMES = ("box", "seg", "cls", "dfl")


def read_rows(path: Path) -> list[dict[str, float]]:
    """Rows of an Ultralytics results.csv (any task) as floats (column names stripped of padding)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StageError(f"{path}: Ultralytics wrote no results.csv (training ended before the first epoch)") from None
    rows = [{key.strip(): float(value) for key, value in row.items()} for row in csv.DictReader(io.StringIO(text))]
    if not rows:
        raise StageError(f"{path}: results.csv has no epochs")
    return rows


def read_results(path: Path) -> list[dict[str, float]]:
    """Rows of an instance-segmentation results.csv, checked for the columns `summarize` reads."""
    rows = read_rows(path)
    missing = {c for group in METRIC_COLUMNS.values() for c in group.values()} - rows[0].keys()
    missing |= {f"{split}/{name}_loss" for split in ("train", "val") for name in LOSS_NAMES} - rows[0].keys()
    if missing:
        raise StageError(f"{path}: missing columns {sorted(missing)} (not a segmentation run?)")
    return rows


def fitness(row: dict[str, float]) -> float:
    """Ultralytics' segmentation fitness, which picks best.pt: box mAP50-95 + mask mAP50-95."""
    return _finite(row["metrics/mAP50-95(B)"]) + _finite(row["metrics/mAP50-95(M)"])


def summarize(rows: list[dict[str, float]]) -> dict:
    """The metrics.json document for these epochs."""
    best = max(reversed(rows), key=fitness)  # the last of equals: Ultralytics rewrites best.pt on a tie
    last = rows[-1]
    columns = [f"{split}/{name}_loss" for split in ("train", "val") for name in LOSS_NAMES]
    bad = [column for column in columns if not math.isfinite(last[column])]
    if bad:
        raise StageError(f"non-finite losses at epoch {int(last['epoch'])}: {', '.join(bad)}")
    metrics: dict = {
        group: {name: round(_finite(best[column]), 5) for name, column in columns.items()}
        for group, columns in METRIC_COLUMNS.items()
    }
    metrics["losses"] = {
        split: {name: round(last[f"{split}/{name}_loss"], 5) for name in LOSS_NAMES} for split in ("train", "val")
    }
    metrics["best_epoch"] = int(best["epoch"])
    metrics["epochs"] = int(last["epoch"])
    return metrics


def plot_tables(rows: list[dict[str, float]]) -> dict[str, str]:
    """CSV texts of the per-epoch plots: `losses.csv` (train/val losses) and `metrics.csv` (box/mask metrics)."""
    losses = [["epoch", *(f"{split}_{name}" for split in ("train", "val") for name in LOSS_NAMES)]]
    metrics = [["epoch", *(f"{group}_{name}" for group, columns in METRIC_COLUMNS.items() for name in columns)]]
    for row in rows:
        losses.append([int(row["epoch"]), *(row[f"{s}/{name}_loss"] for s in ("train", "val") for name in LOSS_NAMES)])
        metrics.append([int(row["epoch"]), *(row[c] for columns in METRIC_COLUMNS.values() for c in columns.values())])
    return {"losses.csv": _csv(losses), "metrics.csv": _csv(metrics)}


def _csv(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
