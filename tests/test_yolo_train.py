"""yolo-train: a tiny offline Ultralytics run on bridged synthetic data, through the CLI, with the network
guarded; results.csv -> DVC metrics; settings and checkpoint validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from idd_edge import atomic, config
from idd_edge.cli import main
from idd_edge.errors import InputError, StageError
from idd_edge.yolo import results
from idd_edge.yolo.train import TrainSettings, transferred_weights
from tests.yolo_fixtures import build_model, save_checkpoint

# Any internet socket or name lookup in the training process is recorded and refused.
NETWORK_GUARD = """
import socket, sys
def guard(event, args):
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr") or (
        event == "socket.connect" and args[0].family in (socket.AF_INET, socket.AF_INET6)
    ):
        sys.stderr.write(f"NETWORK ATTEMPT {event} {args[1:]!r}\\n")
        raise ConnectionRefusedError(f"network disabled in this test: {event}")
sys.addaudithook(guard)
"""
RUN_CLI = "from idd_edge.cli import main; sys.exit(main(sys.argv[1:]))"
RESULTS_HEADER = (
    "epoch,time,train/box_loss,train/seg_loss,train/cls_loss,train/dfl_loss,train/sem_loss,metrics/precision(B),"
    "metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B),metrics/precision(M),metrics/recall(M),metrics/mAP50(M),"
    "metrics/mAP50-95(M),val/box_loss,val/seg_loss,val/cls_loss,val/dfl_loss,val/sem_loss,lr/pg0,lr/pg1,lr/pg2"
)


class NotAModel:
    """A class outside Ultralytics' allow-list: a checkpoint holding it must be refused, not unpickled."""


@pytest.fixture(scope="module")
def bridged(tmp_path_factory) -> Path:
    """synth -> convert (encoding id, instances) -> yolo-bridge, the real stage chain, tiny."""
    root = tmp_path_factory.mktemp("yolo_train")
    params = root / "params.yaml"
    config.write_params(config.compose(["yolo.bridge.workers=1", "convert.workers=1"]), params)
    synth, instances, dataset = root / "synth", root / "instances", root / "dataset"
    assert main(["synth", str(synth), "--train", "4", "--val", "2", "--test", "0", "--size", "192x108",
                 "--seed", "3"]) == 0
    assert main(["convert", str(synth), str(instances), "--encoding", "id", "--instance", "--no-semantic", "--no-color",
                 "--no-panoptic", "--report", str(root / "convert.json"), "--params", str(params)]) == 0
    assert main(["yolo-bridge", str(instances), str(synth), str(dataset), "--report", str(root / "bridge.json"),
                 "--params", str(params)]) == 0
    return dataset


@pytest.mark.slow
def test_tiny_offline_training_run_writes_metrics_and_plots(bridged, tmp_path):
    coco_sized_head = build_model(num_classes=80)
    checkpoint = save_checkpoint(coco_sized_head, tmp_path / "weights" / "yolov8n-seg.pt")
    overrides = ["yolo.train.epochs=1", "yolo.train.imgsz=64", "yolo.train.batch=4", "yolo.train.plots=false",
                 f"yolo.train.pretrained={checkpoint}"]
    config.write_params(config.compose(overrides), tmp_path / "params.yaml")
    out = tmp_path / "artifacts"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "YOLO_CONFIG_DIR", "YOLO_OFFLINE")}
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")  # a second line of defence
    run = subprocess.run(
        [sys.executable, "-c", NETWORK_GUARD + RUN_CLI,
         "yolo-train", str(bridged), str(out), "--params", str(tmp_path / "params.yaml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "NETWORK ATTEMPT" not in log
    assert "411/417 tensors transferred" in log  # every tensor but the three 80-class score convs

    metrics = json.loads((out / "metrics.json").read_text())
    for group in ("box", "mask"):
        assert set(metrics[group]) == {"map50", "map50_95", "precision", "recall"}
        assert all(0.0 <= value <= 1.0 for value in metrics[group].values())
    for split in ("train", "val"):
        assert set(metrics["losses"][split]) == {"box", "seg", "cls", "dfl"}
    assert metrics["epochs"] == 1 and metrics["best_epoch"] == 1
    assert metrics["init"] == {"transferred": 411, "total": 417}
    assert (out / "plots" / "losses.csv").read_text().splitlines()[0].startswith("epoch,train_box,")
    assert len((out / "plots" / "metrics.csv").read_text().splitlines()) == 2
    assert (out / "train" / "weights" / "best.pt").is_file() and (out / "train" / "results.csv").is_file()
    assert not (out / ".train.staging").exists()
    settings = json.loads((tmp_path / ".ultralytics" / "Ultralytics" / "settings.json").read_text())
    assert settings["sync"] is False and settings["dvc"] is False  # project-local settings, telemetry off


@pytest.mark.slow
def test_network_guard_catches_a_plain_ultralytics_import(tmp_path):
    """Control for the test above: without idd_edge.yolo.offline, Ultralytics probes DNS at import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "PYTEST_"))}
    env["YOLO_CONFIG_DIR"] = str(tmp_path)  # keep the user's settings untouched
    run = subprocess.run([sys.executable, "-c", NETWORK_GUARD + "import ultralytics"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert "NETWORK ATTEMPT socket.getaddrinfo" in run.stderr


def test_transferred_weights_refuses_foreign_pickles(tmp_path):
    import torch

    bad = tmp_path / "bad.pt"
    torch.save({"model": NotAModel()}, bad)
    with pytest.raises(InputError, match="not a loadable Ultralytics checkpoint") as info:
        transferred_weights("yolov8n-seg.yaml", bad, 5)
    assert info.value.path == str(bad)


def train_node(**changes) -> dict:
    return {**config.compose()["yolo"]["train"], **changes}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [({"amp": "fp16"}, "amp must be false, true"), ({"cache": "disk"}, "cache"), ({"imgsz": 100}, "multiple of 32")],
)
def test_settings_refuse_what_would_go_online_or_break(changes, problem):
    with pytest.raises(InputError, match=problem):
        TrainSettings.from_params(train_node(**changes), "params.yaml")


def test_default_settings_are_tiny_and_offline():
    settings = TrainSettings.from_params(train_node(), "params.yaml")
    assert settings.amp is False and settings.device == "cpu" and settings.epochs <= 30 and settings.imgsz <= 320


def test_missing_dataset_names_the_file(tmp_path):
    with pytest.raises(InputError, match="yolo-bridge") as info:
        from idd_edge.yolo.train import train

        train(tmp_path / "nowhere", tmp_path / "out", TrainSettings.from_params(train_node(), "params.yaml"))
    assert info.value.path.endswith("data.yaml")


def write_results(path: Path, rows: list[list[float]]) -> Path:
    atomic.write_text(path, RESULTS_HEADER + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


def result_row(epoch: int, map_box: float, map_mask: float, loss: float) -> list[float]:
    """One results.csv row in RESULTS_HEADER's column order."""
    train_losses = [loss, 2 * loss, 0.5 * loss, 0.9 * loss, 0]  # box seg cls dfl sem
    box = [0.7, 0.3, 0.36, map_box]  # precision recall mAP50 mAP50-95
    mask = [0.6, 0.3, 0.33, map_mask]
    val_losses = [value + 0.1 for value in train_losses[:4]] + [0]
    return [epoch, 10.0 * epoch, *train_losses, *box, *mask, *val_losses, 0.01, 0.01, 0.01]


def test_summary_takes_the_best_epoch_metrics_and_the_last_losses(tmp_path):
    rows = results.read_results(write_results(tmp_path / "results.csv", [
        result_row(1, 0.10, 0.08, 2.0), result_row(2, 0.21, 0.15, 1.5), result_row(3, 0.20, 0.155, 1.3),
    ]))
    summary = results.summarize(rows)
    assert summary["best_epoch"] == 2 and summary["epochs"] == 3  # 0.21 + 0.15 beats 0.20 + 0.155
    assert summary["box"] == {"map50": 0.36, "map50_95": 0.21, "precision": 0.7, "recall": 0.3}
    assert summary["mask"]["map50_95"] == 0.15
    assert summary["losses"]["train"] == {"box": 1.3, "seg": 2.6, "cls": 0.65, "dfl": 1.17}
    assert summary["losses"]["val"]["box"] == 1.4
    tables = results.plot_tables(rows)
    assert tables["metrics.csv"].splitlines()[2].startswith("2,0.36,0.21,0.7,0.3,")


def test_best_epoch_is_the_last_of_equals_like_best_pt(tmp_path):
    rows = results.read_results(write_results(tmp_path / "results.csv", [
        result_row(1, 0.0, 0.0, 2.0), result_row(2, 0.0, 0.0, 1.5), result_row(3, 0.0, 0.0, 1.3),
    ]))
    assert results.summarize(rows)["best_epoch"] == 3  # trainer: best.pt saved whenever fitness == best


def test_non_finite_losses_fail_the_stage(tmp_path):
    rows = results.read_results(write_results(tmp_path / "results.csv", [result_row(1, 0.1, 0.1, float("nan"))]))
    with pytest.raises(StageError, match="non-finite"):
        results.summarize(rows)
    with pytest.raises(StageError, match="no results.csv"):
        results.read_results(tmp_path / "missing.csv")


def test_ultralytics_keeps_the_torch_thread_count_on_cpu(tmp_path):
    """Ultralytics' select_device pins torch to min(8, cpu_count - 1) threads on CPU: one thread on a 2-core
    machine, which made YOLO training single-threaded there. After import_ultralytics it keeps the count the
    process had (here one more than Ultralytics' rule gives, so the test cannot pass by coincidence)."""
    threads = min(8, max(1, (os.cpu_count() or 1) - 1)) + 1
    script = (
        "import torch\n"
        f"torch.set_num_threads({threads})\n"
        "from idd_edge.yolo.offline import import_ultralytics\n"
        "import_ultralytics()\n"
        "from ultralytics.utils.torch_utils import select_device\n"
        "select_device('cpu', verbose=False)\n"
        "print(torch.get_num_threads())\n"
    )
    env = dict(os.environ, YOLO_CONFIG_DIR=str(tmp_path / "ultralytics"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == str(threads)


def test_a_configured_thread_count_survives_ultralytics_device_selection(tmp_path):
    """`threads: 1` (YOLO26n-sem's setting: its 128-px tensors are too small to split) holds through
    select_device, which the trainer and the validator both call."""
    script = (
        "import torch\n"
        "from idd_edge.yolo.offline import import_ultralytics, set_cpu_threads\n"
        "import_ultralytics()\n"
        "set_cpu_threads(1)\n"
        "from ultralytics.utils.torch_utils import select_device\n"
        "select_device('cpu', verbose=False)\n"
        "print(torch.get_num_threads())\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="2", YOLO_CONFIG_DIR=str(tmp_path / "ultralytics"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "1"


def test_negative_threads_are_refused(tmp_path):
    params = tmp_path / "params.yaml"
    config.write_params(config.compose(["yolo.train.threads=-1"]), params)
    node = config.section(config.load_params(params), "yolo.train", params)
    with pytest.raises(InputError, match="threads"):
        TrainSettings.from_params(node, params)
