"""Resuming interrupted Ultralytics runs (`yolo/resume.py`): the fingerprint rules, and for each YOLO stage a
real tiny run stopped after its first epoch, then run again: only the second epoch trains."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from idd_edge import config
from idd_edge.yolo.resume import CHECKPOINT, prepare_staging, run_fingerprint, state_file
from tests.test_seg_data import make_band_split
from tests.test_yolo_train import bridged  # noqa: F401 (module fixture: a tiny bridged instance dataset)


class Interrupted(Exception):
    """Stands for the kill: raised by a callback once the first epoch's checkpoint is written."""


def stop_after_first_epoch(trainer) -> None:
    if trainer.epoch == 0:
        raise Interrupted


def _dataset(tmp_path: Path) -> Path:
    dataset = tmp_path / "dataset"
    (dataset / "labels").mkdir(parents=True)
    (dataset / "data.yaml").write_text("names: {0: a}\n")
    (dataset / "labels" / "x.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    return dataset


def _interrupted_run(staging: Path, fingerprint: str) -> None:
    assert prepare_staging(staging, fingerprint) is None
    (staging / CHECKPOINT).parent.mkdir(parents=True)
    (staging / CHECKPOINT).write_bytes(b"checkpoint")


def test_a_run_with_the_same_fingerprint_resumes_and_any_other_starts_afresh(tmp_path):
    staging, dataset = tmp_path / ".train.staging", _dataset(tmp_path)
    fingerprint = run_fingerprint({"epochs": 2}, dataset)
    _interrupted_run(staging, fingerprint)
    assert prepare_staging(staging, fingerprint) == staging / CHECKPOINT
    assert prepare_staging(staging, run_fingerprint({"epochs": 3}, dataset)) is None  # other settings
    assert list(staging.iterdir()) == []  # emptied for the new run
    assert json.loads(state_file(staging).read_text())["fingerprint"] == run_fingerprint({"epochs": 3}, dataset)


def test_the_fingerprint_follows_dataset_files_but_not_ultralytics_caches(tmp_path):
    dataset = _dataset(tmp_path)
    before = run_fingerprint({"epochs": 2}, dataset)
    (dataset / "labels" / "train.cache").write_bytes(b"written by Ultralytics while training")
    assert run_fingerprint({"epochs": 2}, dataset) == before
    label = dataset / "labels" / "x.txt"
    label.write_text("0 0.4 0.5 0.1 0.1\n")
    os.utime(label, ns=(1, 1))  # a DVC checkout replaces the file: new size or time
    assert run_fingerprint({"epochs": 2}, dataset) != before


def test_an_unreadable_run_state_starts_afresh(tmp_path):
    staging, dataset = tmp_path / ".train.staging", _dataset(tmp_path)
    fingerprint = run_fingerprint({}, dataset)
    _interrupted_run(staging, fingerprint)
    state_file(staging).write_text("{not json")
    assert prepare_staging(staging, fingerprint) is None and not (staging / CHECKPOINT).exists()


@pytest.mark.slow
def test_yolo_train_resumes_an_interrupted_run_at_its_next_epoch(bridged, tmp_path):  # noqa: F811
    from idd_edge.yolo.train import TrainSettings, train

    overrides = ["yolo.train.epochs=2", "yolo.train.imgsz=64", "yolo.train.batch=4", "yolo.train.plots=false",
                 f"yolo.train.pretrained={tmp_path / 'none.pt'}"]
    settings = TrainSettings.from_params(config.compose(overrides)["yolo"]["train"], "params.yaml")
    out, staging = tmp_path / "yolo", tmp_path / "yolo" / ".train.staging"
    with pytest.raises(Interrupted):
        train(bridged, out, settings, callbacks={"on_fit_epoch_end": stop_after_first_epoch})
    first = (staging / "results.csv").read_text().splitlines()
    assert len(first) == 2 and (staging / CHECKPOINT).is_file()

    started: list[int] = []
    metrics = train(bridged, out, settings, callbacks={"on_train_epoch_start": lambda t: started.append(t.epoch)})
    assert started == [1]  # epoch 1 (0-based) only: the first came from the checkpoint
    rows = (out / "train" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1] == first[1] and metrics["epochs"] == 2
    assert not staging.exists() and not state_file(staging).exists()


@pytest.mark.slow
def test_yolo_sem_train_resumes_an_interrupted_run_at_its_next_epoch(tmp_path):
    from idd_edge.yolo.sem_bridge import bridge
    from idd_edge.yolo.sem_train import SemTrainSettings, train

    level_dir = make_band_split(tmp_path / "splits", {"train": 4, "val": 2}, size_hw=(64, 96))
    bridge(level_dir, tmp_path / "sem", "level2")
    overrides = ["yolo.semantic.train.epochs=2", "yolo.semantic.train.imgsz=64", "yolo.semantic.train.batch=2",
                 "yolo.semantic.train.nbs=2"]
    settings = SemTrainSettings.from_params(config.compose(overrides)["yolo"]["semantic"]["train"], "params.yaml")
    run_dir, staging = tmp_path / "seg" / "ultralytics_sem", tmp_path / "seg" / "ultralytics_sem" / ".ultralytics.staging"
    with pytest.raises(Interrupted):
        train(tmp_path / "sem", run_dir, settings, "level2", (64, 96), callbacks={"on_fit_epoch_end": stop_after_first_epoch})
    assert (staging / CHECKPOINT).is_file()

    started: list[int] = []
    metrics = train(tmp_path / "sem", run_dir, settings, "level2", (64, 96),
                    callbacks={"on_train_epoch_start": lambda t: started.append(t.epoch)})
    assert started == [1] and metrics["epochs"] == 2
    assert (run_dir / "model.pt").is_file() and not staging.exists() and not state_file(staging).exists()
