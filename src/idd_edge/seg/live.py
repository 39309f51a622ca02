"""Per-epoch DVCLive metrics of a training run (step = epoch), safe to resume.

Written to `<run>/dvclive/` (`metrics.json` for `dvc metrics`, `plots/metrics/**.tsv` for `dvc plots`).
A resumed run first drops rows of epochs its checkpoint does not cover (logged just before an
interruption), so every epoch appears exactly once.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any

from idd_edge import atomic

log = logging.getLogger(__name__)

#: history record key -> DVCLive metric name
METRICS = {
    "train_total": "train/loss",
    "train_ce": "train/ce",
    "train_kl": "train/kl",
    "val_ce": "val/ce",
    "val_miou": "val/miou",
    "val_pixel_accuracy": "val/pixel_accuracy",
    "lr": "lr",
}


def drop_rows_from_step(plots_dir: Path, first_dropped: int) -> None:
    """Remove rows with step >= `first_dropped` from every DVCLive metric TSV under `plots_dir`."""
    for tsv in sorted(plots_dir.rglob("*.tsv")):
        rows = list(csv.DictReader(tsv.read_text(encoding="utf-8").splitlines(), delimiter="\t"))
        kept = [row for row in rows if int(row["step"]) < first_dropped]
        if len(kept) == len(rows):
            continue
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic.write_text(tsv, buffer.getvalue())


class EpochLog:
    """Logs history records (see `SegmentationTask`) to DVCLive; created on global rank zero only."""

    def __init__(self, live_dir: Path, resume: bool, run: str = "", epochs: int | None = None):
        self.live_dir = Path(live_dir)
        self.resume = resume
        self.run, self.epochs = run or self.live_dir.parent.name, epochs
        self._live: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self._live is None:
            from dvclive import Live

            if self.resume:
                drop_rows_from_step(self.live_dir / "plots", record["epoch"])
            # No dvc.yaml edits, no experiment commits, no report: the stage declares the outputs.
            self._live = Live(str(self.live_dir), resume=self.resume, save_dvc_exp=False, dvcyaml=None, report=None)
        self._live.step = record["epoch"]
        for key, name in METRICS.items():
            if record.get(key) is not None:
                self._live.log_metric(name, float(record[key]))
        self._live.make_summary()
        if not sys.stderr.isatty():  # a terminal has Lightning's progress bar; a log file (idd-edge repro) has this
            log.info("%s: epoch %d/%s train loss %.4f, val mIoU %.2f%%", self.run, record["epoch"],
                     self.epochs or "?", record["train_total"], 100 * record["val_miou"])

    def end(self) -> None:
        if self._live is not None:
            self._live.end()
