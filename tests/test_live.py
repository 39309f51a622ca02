"""Per-epoch training log: DVCLive rows once per epoch across a resume, and a log line per epoch where no
progress bar is drawn (a stage's log file under `idd-edge repro`)."""

from __future__ import annotations

import logging

from idd_edge.seg.live import EpochLog


def _record(epoch: int, miou: float) -> dict:
    return {"epoch": epoch, "train_total": 1.0 / epoch, "train_ce": 1.0 / epoch, "val_ce": 0.5, "val_miou": miou,
            "val_pixel_accuracy": 0.9, "lr": 1e-3}


def test_epoch_log_writes_dvclive_rows_and_a_line_per_epoch(tmp_path, caplog):
    live_dir = tmp_path / "teacher" / "dvclive"
    with caplog.at_level(logging.INFO, logger="idd_edge.seg.live"):
        log = EpochLog(live_dir, resume=False, run="teacher", epochs=40)
        log(_record(1, 0.2))
        log(_record(2, 0.3))
        log.end()
    assert [r.getMessage() for r in caplog.records] == [  # pytest captures stderr: not a terminal
        "teacher: epoch 1/40 train loss 1.0000, val mIoU 20.00%", "teacher: epoch 2/40 train loss 0.5000, val mIoU 30.00%"]
    rows = (live_dir / "plots" / "metrics" / "val" / "miou.tsv").read_text().splitlines()
    assert rows == ["step\tmiou", "1\t0.2", "2\t0.3"]

    resumed = EpochLog(live_dir, resume=True)  # the checkpoint covers epoch 1 only: epoch 2 is logged again
    resumed(_record(2, 0.35))
    resumed.end()
    rows = (live_dir / "plots" / "metrics" / "val" / "miou.tsv").read_text().splitlines()
    assert rows == ["step\tmiou", "1\t0.2", "2\t0.35"]
