"""fp16 AMP for YOLO training on CUDA without Ultralytics' downloading check: the decision, the fp32/fp16
comparison (run on CPU here, where torch autocasts to float16 too) and the hand-over to Ultralytics."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch

from idd_edge.errors import InputError
from idd_edge.yolo.amp import (
    FP16_TOLERANCE, AmpDecision, answered_amp_check, check_model, decide_amp, fp16_discrepancy, resolve_amp,
    sample_image,
)
from idd_edge.yolo.offline import import_ultralytics
from idd_edge.yolo.train import TrainSettings

import_ultralytics()


def _never() -> float:
    raise AssertionError("the fp16 comparison must not run for this decision")


@pytest.mark.parametrize(("requested", "device", "cuda", "gpu", "expected", "reason"), [
    (False, "0", True, "NVIDIA H100", False, "yolo.train.amp: false"),
    ("bf16", "cpu", False, None, "bf16", "bf16 autocast"),
    (True, "cpu", False, None, False, "needs a CUDA device"),
    (True, "mps", False, None, False, "needs a CUDA device"),
    (True, "0", False, None, False, "CUDA is not available"),
    (True, "0", True, "NVIDIA GeForce GTX 1660 Ti", False, "broken fp16"),
    (True, "0,1", True, "NVIDIA H100", False, "DDP"),
])
def test_decisions_that_need_no_comparison(requested, device, cuda, gpu, expected, reason):
    decision = decide_amp(requested, device, cuda_available=cuda, gpu_name=gpu, discrepancy=_never)
    assert decision.amp == expected and reason in decision.reason


@pytest.mark.parametrize(("difference", "expected"), [(0.01, True), (FP16_TOLERANCE, True), (3.0, False),
                                                       (math.inf, False), (math.nan, False)])
def test_fp16_on_a_cuda_gpu_follows_the_comparison(difference, expected):
    decision = decide_amp(True, "cuda:0", cuda_available=True, gpu_name="NVIDIA H100", discrepancy=lambda: difference)
    assert decision.amp is expected
    assert ("fp16 AMP on NVIDIA H100" if expected else "differs from fp32") in decision.reason


def test_the_comparison_on_the_real_network_and_one_that_overflows_in_fp16(tmp_path):
    image = sample_image(64)
    assert image.shape == (1, 3, 64, 64) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    torch.manual_seed(0)
    model = check_model("yolov8n-seg.yaml", tmp_path / "absent.pt", num_classes=5)
    difference = fp16_discrepancy(model, image, "cpu")
    assert 0.0 < difference <= FP16_TOLERANCE  # fp16 rounds, but stays within Ultralytics' tolerance

    class Overflows(torch.nn.Module):  # a conv output beyond float16's 65504
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)
            torch.nn.init.constant_(self.conv.weight, 1e5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    assert fp16_discrepancy(Overflows(), image, "cpu") == math.inf


def test_on_this_cpu_machine_amp_true_trains_in_fp32_and_says_why(caplog):
    with caplog.at_level("INFO", logger="idd_edge.yolo.amp"):
        decision = resolve_amp(True, "cpu", "yolov8n-seg.yaml", Path("absent.pt"), 5)
    assert decision.amp is False and "needs a CUDA device" in caplog.text


def test_ultralytics_gets_the_answer_instead_of_running_its_check():
    from ultralytics.engine import trainer

    # The trainer calls `check_amp(self.model)` by this module-level name when amp is on and not bf16.
    assert "check_amp(self.model)" in inspect.getsource(trainer.BaseTrainer._setup_train)
    original = trainer.check_amp
    with answered_amp_check(AmpDecision(True, "checked")):
        assert trainer.check_amp(object()) is True
    with answered_amp_check(AmpDecision(False, "failed")):
        assert trainer.check_amp(object()) is False
    assert trainer.check_amp is original


def _settings(amp):
    return {"model": "yolov8n-seg.yaml", "pretrained": "none.pt", "epochs": 1, "imgsz": 64, "batch": 2, "workers": 0,
            "threads": 0, "device": "cpu", "patience": 1, "amp": amp, "cache": False, "plots": False, "seed": 0,
            "optimizer": "AdamW", "lr0": 0.001, "nbs": 2, "warmup_epochs": 0.0, "close_mosaic": 0, "val": True}


@pytest.mark.parametrize("amp", [False, True, "bf16"])
def test_amp_settings_accepted(amp):
    assert TrainSettings.from_params(_settings(amp), "params.yaml").amp == amp


@pytest.mark.parametrize("amp", [1, 0, "fp16", "true"])
def test_amp_settings_refused(amp):
    with pytest.raises(InputError, match="yolo.train.amp must be false, true"):
        TrainSettings.from_params(_settings(amp), "params.yaml")
