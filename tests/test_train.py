"""Training stage end to end on a tiny learnable split: teacher, KD student, evaluation, exact resume,
non-finite loss, DDP. The real configs are composed and shrunk (64x64, few images, few epochs)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from idd_edge import cli, config
from idd_edge.errors import InputError, StageError
from idd_edge.labels import LEVEL_CLASS_NAMES
from idd_edge.seg import train as seg_train
from idd_edge.seg.evaluate import evaluate_run
from idd_edge.seg.metrics import merge_confusion, segmentation_scores
from idd_edge.seg.models import build_model
from idd_edge.seg.trained import load_trained, save_trained
from tests.test_seg_data import make_band_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TRAIN_METRICS_KEYS = {"run", "role", "model", "label_level", "best_miou", "best_epoch", "epochs", "final_losses"}


def shrunk_params(split_root: Path, out: Path, *overrides: str) -> dict:
    """The real composed config, shrunk to seconds on one CPU thread."""
    return config.compose([
        f"split.out={split_root}", f"train.out={out}", "train.image_size=[64,64]", "train.eval_batch_size=4",
        "train.engine.progress_bar=false", "train.engine.accelerator=cpu",
        "train.teacher.epochs=3", "train.teacher.batch_size=4",
        "train.baseline.epochs=3", "train.baseline.batch_size=4",
        "train.kd.epochs=2", "train.kd.batch_size=4",
        f"train.teacher_logits.out={out / 'teacher_logits'}", "train.teacher_logits.input_size=[64,96]",
        "train.teacher_logits.fidelity_crops=8",
        *overrides,
    ])


@pytest.fixture(scope="module")
def band_split(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("splits")
    make_band_split(root)
    return root


@pytest.fixture(scope="module")
def trained(band_split, tmp_path_factory) -> dict:
    """Teacher (5 epochs), its cached training logits, and a KD student distilled from them (2 epochs, the
    default cached mode), trained once for the module."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("seg")
    params_file = out / "params.yaml"
    params = shrunk_params(band_split, out, "train.teacher.epochs=5", "train.teacher.lr=5e-3")
    config.write_params(params, params_file)
    teacher = seg_train.train(seg_train.job_from_params(params, "teacher", None, "test"))
    assert cli.main(["teacher-logits", "--params", str(params_file)]) == 0
    kd = seg_train.train(seg_train.job_from_params(params, "kd", "mnv4s_lraspp", "test"))
    return {"out": out, "params": params, "teacher": teacher, "kd": kd}


@pytest.mark.slow
def test_teacher_learns_far_beyond_chance(trained):
    # 4 of 16 classes present; a random predictor scores a few percent mIoU.
    assert trained["teacher"]["best_miou"] > 0.5


@pytest.mark.slow
def test_the_teacher_logit_cache_follows_online_kd_closely(trained):
    metrics = json.loads((trained["out"] / "teacher_logits" / "metrics.json").read_text())
    assert metrics["images"] == 8 and metrics["fidelity"]["crops"] == 8
    # The cached crops mostly agree with the teacher run on the (colour-jittered) crop itself.
    assert metrics["fidelity"]["argmax_agreement"] > 0.8
    assert metrics["fidelity"]["cached_pixel_accuracy"] > 0.6 and metrics["fidelity"]["mean_kl"] >= 0


@pytest.mark.slow
def test_online_kd_runs_the_teacher_on_each_batch_and_learns(trained, band_split, tmp_path):
    shutil.copytree(trained["out"] / "teacher", tmp_path / "teacher")
    params = shrunk_params(band_split, tmp_path, "train.kd.teacher_logits=online", "train.kd.epochs=3")
    job = seg_train.job_from_params(params, "kd", "mnv4s_lraspp", "test")
    assert job.teacher_logits is None
    online = seg_train.train(job)
    assert online["final_losses"]["kl"] > 0 and online["best_miou"] > 0.2


@pytest.mark.slow
def test_kd_refuses_a_stale_logit_cache(trained, band_split, tmp_path):
    shutil.copytree(trained["out"] / "teacher_logits", tmp_path / "teacher_logits")
    cfg = {"name": "mnv4s_lraspp", "arch": "lraspp", "backbone": "mobilenetv4_conv_small", "pretrained": False}
    save_trained(tmp_path / "teacher", build_model(cfg, 16, (64, 64)).state_dict(),  # another teacher
                 {"run": "teacher", "model": cfg, "num_classes": 16, "input_size": [64, 64],
                  "label_level": "level2", "class_names": list(LEVEL_CLASS_NAMES["level2"])})
    job = seg_train.job_from_params(shrunk_params(band_split, tmp_path), "kd", "mnv4s_lraspp", "test")
    with pytest.raises(InputError, match="index.json.*made from other teacher weights"):
        seg_train.train(job)


@pytest.mark.slow
def test_train_metrics_follow_the_contract(trained):
    for run, role in (("teacher", "teacher"), ("kd_mnv4s_lraspp", "kd")):
        summary = json.loads((trained["out"] / run / "train_metrics.json").read_text())
        assert summary == trained["teacher" if role == "teacher" else "kd"]
        assert set(summary) == TRAIN_METRICS_KEYS
        assert summary["run"] == run and summary["role"] == role and summary["label_level"] == "level2"
        assert 0 <= summary["best_miou"] <= 1 and 1 <= summary["best_epoch"] <= summary["epochs"]
        losses = summary["final_losses"]
        if role == "kd":
            kd = trained["params"]["train"]["kd"]  # total = CE + alpha (x T^2 for KL with temperature_squared) x D
            scale = kd["temperature"] ** 2 if kd["loss"] == "kl" and kd["temperature_squared"] else 1.0
            assert losses["kl"] > 0 and losses["total"] == pytest.approx(losses["ce"] + kd["alpha"] * scale * losses["kl"])
        else:
            assert losses["kl"] is None and losses["total"] == losses["ce"]
    assert trained["teacher"]["model"] == "convnext_atto_upernet" and trained["teacher"]["epochs"] == 5


@pytest.mark.slow
def test_dvclive_has_one_row_per_epoch_and_checkpoints_load_weights_only(trained):
    run_dir = trained["out"] / "teacher"
    live = json.loads((run_dir / "dvclive" / "metrics.json").read_text())
    rows = (run_dir / "dvclive" / "plots" / "metrics" / "val" / "miou.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in rows] == ["step", "1", "2", "3", "4", "5"]
    assert max(float(row.split("\t")[1]) for row in rows[1:]) == pytest.approx(trained["teacher"]["best_miou"])
    assert live["step"] == 5 and live["val"]["miou"] == pytest.approx(float(rows[-1].split("\t")[1]))
    assert live["train"]["loss"] == pytest.approx(trained["teacher"]["final_losses"]["total"])
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert "optimizer_states" in checkpoint and "idd_edge" in checkpoint
    kd_rows = (trained["out"] / "kd_mnv4s_lraspp" / "dvclive" / "plots" / "metrics" / "train" / "kl.tsv")
    assert len(kd_rows.read_text().splitlines()) == 3


@pytest.mark.slow
def test_exported_weights_rebuild_and_evaluate_to_the_training_score(trained, band_split):
    model, info = load_trained(trained["out"] / "teacher")
    assert info["num_classes"] == 16 and info["input_size"] == [64, 64] and info["label_level"] == "level2"
    assert info["normalization"]["mean"] == [123.675, 116.28, 103.53]
    with torch.no_grad():
        assert isinstance(model(torch.zeros(1, 3, 64, 64)), torch.Tensor)
    metrics = evaluate_run(trained["out"] / "teacher", band_split / "IDDL2", "level2", batch_size=4)
    # Same weights (best epoch), same images, same protocol as validation during training.
    assert metrics["miou"] == pytest.approx(trained["teacher"]["best_miou"], abs=0.01)
    assert metrics["num_images"] == 4 and "derived" not in metrics
    eval_dir = trained["out"] / "teacher" / "eval"
    assert json.loads((eval_dir / "metrics.json").read_text()) == metrics
    confusion = json.loads((eval_dir / "confusion.json").read_text())
    assert confusion["class_names"] == list(LEVEL_CLASS_NAMES["level2"])
    assert segmentation_scores(confusion["matrix"], confusion["class_names"])["miou"] == metrics["miou"]
    for plot in ("confusion.png", "per_class_iou.png"):
        assert (eval_dir / plot).read_bytes()[:4] == b"\x89PNG"


def test_level3_evaluation_derives_level2_and_level1_scores(tmp_path):
    classes = (0, 2, 24, 25)  # level3 road, sidewalk, vegetation, sky
    split = make_band_split(tmp_path / "splits", {"val": 2}, level_dir="IDDL3", classes=classes)
    run_dir = tmp_path / "seg" / "baseline_x"
    torch.manual_seed(0)
    cfg = {"name": "mnv4s_lraspp", "arch": "lraspp", "backbone": "mobilenetv4_conv_small", "pretrained": False}
    model = build_model(cfg, 26, (64, 64))
    save_trained(run_dir, model.state_dict(), {"run": "baseline_x", "model": cfg, "num_classes": 26,
                                               "input_size": [64, 64], "label_level": "level3",
                                               "class_names": list(LEVEL_CLASS_NAMES["level3"])})
    metrics = evaluate_run(run_dir, split, "level3", batch_size=2)
    matrix = json.loads((run_dir / "eval" / "confusion.json").read_text())["matrix"]
    for coarser in ("level2", "level1"):
        expected = segmentation_scores(merge_confusion(matrix, "level3", coarser), LEVEL_CLASS_NAMES[coarser])
        assert metrics["derived"][coarser] == {"miou": expected["miou"], "per_class_iou": expected["per_class_iou"]}
    with pytest.raises(InputError, match="trained on level3, but label_level is level2"):
        evaluate_run(run_dir, split, "level2")


class CrashAtEpoch(Callback):
    """Stands in for a killed process: raises when `epoch` (0-based) starts, after earlier checkpoints."""

    def __init__(self, epoch: int, poison: bool = False):
        self.epoch, self.poison = epoch, poison

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != self.epoch:
            return
        if self.poison:  # a diverged model: every later loss is NaN
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))
        else:
            raise KeyError("simulated kill")


@pytest.mark.slow
def test_an_interrupted_run_resumes_exactly_where_it_stopped(band_split, tmp_path):
    def job(out: Path) -> seg_train.TrainJob:
        return seg_train.job_from_params(shrunk_params(band_split, out), "baseline", "mnv4s_deeplabv3plus", "test")

    reference = seg_train.train(job(tmp_path / "a"))
    with pytest.raises(KeyError, match="simulated kill"):
        seg_train.train(job(tmp_path / "b"), [CrashAtEpoch(2)])
    run_dir = tmp_path / "b" / "baseline_mnv4s_deeplabv3plus"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # 2 epochs done
    assert not (run_dir / "model.pt").exists()

    resumed = seg_train.train(job(tmp_path / "b"))
    assert resumed == reference
    # Same data order, augmentation, dropout, optimizer and schedule: bit-identical weights (CPU).
    expected = torch.load(tmp_path / "a" / run_dir.name / "model.pt", weights_only=True)
    actual = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    curve = Path("dvclive/plots/metrics/val/miou.tsv")
    assert (run_dir / curve).read_text() == (tmp_path / "a" / run_dir.name / curve).read_text()

    again = seg_train.train(job(tmp_path / "b"))  # a finished run is not resumed: it trains afresh
    assert again == reference


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(band_split, tmp_path):
    job = seg_train.job_from_params(shrunk_params(band_split, tmp_path), "baseline", "mnv4s_lraspp", "test")
    with pytest.raises(StageError, match="non-finite training loss .* at epoch 2"):
        seg_train.train(job, [CrashAtEpoch(1, poison=True)])
    run_dir = tmp_path / "baseline_mnv4s_lraspp"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not (run_dir / "model.pt").exists() and not (run_dir / "train_metrics.json").exists()


def test_resume_only_an_unfinished_run_with_the_same_settings(tmp_path):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    seg_train.start_fresh(tmp_path / "run", "abc")
    assert seg_train.resume_checkpoint(ckpt_dir, "abc") is None  # nothing saved yet
    (ckpt_dir / "last.ckpt").write_bytes(b"")
    assert seg_train.resume_checkpoint(ckpt_dir, "abc") == ckpt_dir / "last.ckpt"
    assert seg_train.resume_checkpoint(ckpt_dir, "other settings") is None
    (ckpt_dir / "run.json").write_text(json.dumps({"fingerprint": "abc", "complete": True}))
    assert seg_train.resume_checkpoint(ckpt_dir, "abc") is None


def test_fingerprint_follows_what_defines_the_run_not_where_it_runs(band_split, tmp_path):
    base = seg_train.job_from_params(shrunk_params(band_split, tmp_path), "baseline", "mnv4s_lraspp", "test")
    moved = seg_train.job_from_params(shrunk_params(band_split, tmp_path, "train.engine.devices=2",
                                                    "train.engine.threads=2"),
                                      "baseline", "mnv4s_lraspp", "test")
    changed = seg_train.job_from_params(shrunk_params(band_split, tmp_path, "train.baseline.lr=0.1"),
                                        "baseline", "mnv4s_lraspp", "test")
    assert base.fingerprint() == moved.fingerprint() != changed.fingerprint()


class ThreadProbe(Callback):
    def on_train_start(self, trainer, pl_module):
        self.threads = torch.get_num_threads()


def test_engine_threads_fix_torch_threads_for_the_run(band_split, tmp_path):
    """`idd-edge repro` gives a stage cores/jobs threads; `train.engine.threads` overrides what it inherits."""
    probe = ThreadProbe()
    params = shrunk_params(band_split, tmp_path, "train.engine.threads=2", "train.baseline.epochs=1")
    assert torch.get_num_threads() == 1  # the module's fixture
    seg_train.train(seg_train.job_from_params(params, "baseline", "mnv4s_lraspp", "test"), [probe])
    assert probe.threads == 2
    with pytest.raises(ValueError, match="engine.threads must be >= 0"):
        seg_train.EngineConfig.from_params({"threads": -1})


def test_kd_refuses_a_teacher_of_another_label_level(band_split, tmp_path):
    cfg = {"name": "mnv4s_lraspp", "arch": "lraspp", "backbone": "mobilenetv4_conv_small", "pretrained": False}
    save_trained(tmp_path / "teacher", build_model(cfg, 7, (64, 64)).state_dict(),
                 {"run": "teacher", "model": cfg, "num_classes": 7, "input_size": [64, 64],
                  "label_level": "level1", "class_names": list(LEVEL_CLASS_NAMES["level1"])})
    job = seg_train.job_from_params(shrunk_params(band_split, tmp_path, "train.kd.teacher_logits=online"), "kd",
                                    "mnv4s_lraspp", "test")
    with pytest.raises(InputError, match="teacher trained on level1, the student on level2"):
        seg_train.train(job)


def test_cli_errors_are_one_line_with_exit_code_2(band_split, tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    config.write_params(shrunk_params(band_split, tmp_path, "split.out=" + str(tmp_path / "no_splits")), params_file)
    assert cli.main(["train", "baseline", "--params", str(params_file)]) == 2
    assert "needs --student" in capsys.readouterr().err
    assert cli.main(["train", "kd", "--student", "resnet", "--params", str(params_file)]) == 2
    assert "unknown student 'resnet'" in capsys.readouterr().err
    assert cli.main(["train", "teacher", "--params", str(params_file)]) == 2
    assert "run the `split` stage" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_cpu_ddp_smoke_run(band_split, tmp_path):
    params_file = tmp_path / "params.yaml"
    config.write_params(shrunk_params(band_split, tmp_path, "train.engine.devices=2", "train.engine.strategy=ddp",
                                      "train.baseline.epochs=1", "train.baseline.batch_size=2"), params_file)
    command = [sys.executable, "-m", "idd_edge.cli", "train", "baseline", "--student", "mnv4s_lraspp",
               "--params", str(params_file)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    summary = json.loads((tmp_path / "baseline_mnv4s_lraspp" / "train_metrics.json").read_text())
    assert summary["epochs"] == 1 and 0 <= summary["best_miou"] <= 1
    assert (tmp_path / "baseline_mnv4s_lraspp" / "model.pt").is_file()


def test_label_level_selects_the_split_folder_and_class_count(band_split, tmp_path):
    params = shrunk_params(band_split, tmp_path, "label_level=level3")
    job = seg_train.job_from_params(params, "kd", "mnv4l_deeplabv3plus", "test")
    assert job.split_dir == band_split / "IDDL3" and job.label_level == "level3"
    assert job.teacher_dir == tmp_path / "teacher" and job.run == "kd_mnv4l_deeplabv3plus"
    # the KD keys go to the loss, the rest of train.kd is the schedule
    assert job.kd == {key: params["train"]["kd"][key] for key in seg_train.KD_KEYS}
    assert job.schedule.epochs == 2 and job.schedule.batch_size == 4
    assert job.teacher_logits == tmp_path / "teacher_logits"


def test_the_idd_full_experiment_carries_the_seed_recipe():
    params = config.compose(["+experiment=idd_full"])
    train_cfg = params["train"]
    assert params["data"]["name"] == "idd" and params["seed"] == 42
    assert params["models"]["teacher"]["name"] == "convnext_base_upernet"
    assert train_cfg["image_size"] == [512, 512] and train_cfg["workers"] == 8
    assert train_cfg["engine"]["precision"] == "auto"  # bf16-mixed / 16-mixed on GPU
    assert {k: train_cfg["teacher"][k] for k in ("epochs", "lr", "weight_decay", "batch_size")} == \
        {"epochs": 50, "lr": 1e-4, "weight_decay": 1e-4, "batch_size": 24}
    assert {k: train_cfg["baseline"][k] for k in ("epochs", "lr", "batch_size")} == \
        {"epochs": 50, "lr": 6e-4, "batch_size": 32}
    assert {k: train_cfg["kd"][k] for k in ("epochs", "lr", "batch_size", "temperature", "alpha", "loss")} == \
        {"epochs": 100, "lr": 6e-4, "batch_size": 24, "temperature": 4.0, "alpha": 1.0, "loss": "kl"}
    assert [train_cfg[role]["class_mix"] for role in seg_train.ROLES] == [0.0, 0.0, 0.0]  # the seed had no ClassMix


def test_class_mix_is_set_per_role_for_the_levels_mix_classes(band_split, tmp_path):
    params = shrunk_params(band_split, tmp_path)
    jobs = {role: seg_train.job_from_params(params, role, "mnv4s_lraspp", "test") for role in seg_train.ROLES}
    person = LEVEL_CLASS_NAMES["level2"].index("person")
    assert {role: (job.augment["class_mix"], job.augment["mix_classes"]) for role, job in jobs.items()} == \
        {"teacher": (0.0, [person]), "baseline": (1.0, [person]), "kd": (1.0, [person])}
    level1 = seg_train.job_from_params(shrunk_params(band_split, tmp_path, "label_level=level1"), "kd", "mnv4s_lraspp", "t")
    assert level1.augment["mix_classes"] == [LEVEL_CLASS_NAMES["level1"].index("living-thing")]
    with pytest.raises(InputError, match=r"params.yaml: label_level.mix_classes: 'pedestrian' not a level2 class"):
        seg_train.job_from_params(shrunk_params(band_split, tmp_path, "label_level.mix_classes=[pedestrian]"),
                                  "baseline", "mnv4s_lraspp", "params.yaml")
    with pytest.raises(InputError, match=r"train.kd.class_mix must be a probability between 0 and 1, got 2"):
        seg_train.job_from_params(shrunk_params(band_split, tmp_path, "train.kd.class_mix=2"), "kd", "mnv4s_lraspp", "p")
    del params["train"]["baseline"]["class_mix"]
    with pytest.raises(InputError, match=r"train.baseline.class_mix is missing"):
        seg_train.job_from_params(params, "baseline", "mnv4s_lraspp", "p")


def test_engine_resolves_precision_per_accelerator():
    assert seg_train.EngineConfig(accelerator="cpu").resolved() == ("cpu", "32-true")
    assert seg_train.EngineConfig(accelerator="gpu", precision="16-mixed").resolved() == ("gpu", "16-mixed")
    if torch.cuda.is_available():
        expected = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        assert seg_train.EngineConfig().resolved() == ("gpu", expected)
    else:
        assert seg_train.EngineConfig().resolved() == ("cpu", "32-true")
    with pytest.raises(ValueError, match="engine.precision 'fp8'"):
        seg_train.EngineConfig.from_params({"precision": "fp8"})
