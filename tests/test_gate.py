"""Accuracy gate: drops vs PyTorch fp32, per-class regressions, report; one evaluator for every format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from idd_edge.errors import StageError
from idd_edge.export import evaluate
from idd_edge.export.gate import GateThresholds, compare_format, gate_model, semantic_scores, write_gate_outputs
from idd_edge.export.onnx_export import export_to_onnx
from idd_edge.export.onnx_io import onnx_session
from idd_edge.export.preprocessing import resize_rgb
from idd_edge.export.quantize import to_model_input
from idd_edge.labels import LEVEL_CLASS_NAMES
from idd_edge.seg.data import IDDSegDataset, resize_mask
from tests.export_support import TinySegNet, make_split

LEVEL = "level1"
CLASSES = LEVEL_CLASS_NAMES[LEVEL]
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _scores(value, per_class, present=None):
    return {"metric": "miou", "value": value, "per_class": per_class, "present": present or list(per_class), "images": 4}


REFERENCE = _scores(0.60, {"road": 0.90, "car": 0.50, "sky": 0.40})


def test_small_drop_passes():
    result = compare_format(REFERENCE, _scores(0.595, {"road": 0.89, "car": 0.49, "sky": 0.405}), GateThresholds())
    assert result["passed"] and result["drop_points"] == pytest.approx(0.5)
    assert result["class_delta_points"]["road"] == pytest.approx(-1.0)


def test_overall_drop_fails():
    result = compare_format(REFERENCE, _scores(0.58, {"road": 0.88, "car": 0.47, "sky": 0.39}), GateThresholds())
    assert not result["passed"] and "drops 2.00 points" in result["reasons"][0]


def test_class_regression_fails_and_names_the_class():
    candidate = _scores(0.597, {"road": 0.92, "car": 0.43, "sky": 0.43})
    result = compare_format(REFERENCE, candidate, GateThresholds(max_drop=1.0, max_class_drop=5.0))
    assert not result["passed"]
    assert list(result["regressed_classes"]) == ["car"] and result["regressed_classes"]["car"] == pytest.approx(-7.0)
    assert "car -7.0" in result["reasons"][0]


def test_classes_absent_from_validation_do_not_count():
    reference = _scores(0.60, {"road": 0.90, "car": 0.50, "sky": 0.40}, present=["road", "sky"])
    result = compare_format(reference, _scores(0.60, {"road": 0.90, "car": 0.10, "sky": 0.40}), GateThresholds())
    assert result["passed"] and result["regressed_classes"] == {}


def test_a_vanished_class_is_a_total_loss():
    result = compare_format(REFERENCE, _scores(0.6, {"road": 0.9, "car": None, "sky": 0.4}), GateThresholds())
    assert result["regressed_classes"] == {"car": pytest.approx(-50.0)}


def test_model_verdict_uses_gated_formats_only():
    bad = _scores(0.40, {"road": 0.80, "car": 0.20, "sky": 0.20})
    good = _scores(0.60, {"road": 0.90, "car": 0.50, "sky": 0.40})
    evaluations = {"pytorch_fp32": REFERENCE, "onnx_fp32": good, "onnx_int8": bad}
    failed = gate_model("m", evaluations, GateThresholds(), {"hailo_emulation": "no HEF"})
    assert not failed["passed"] and failed["failed_formats"] == ["onnx_int8"]
    assert failed["messages"][0].startswith("m ONNX int8") and "car" in failed["messages"][0]
    assert failed["not_evaluated"] == {"hailo_emulation": "no HEF", "imx500_quantized": "not evaluated"}
    lenient = gate_model("m", evaluations, GateThresholds(formats=("onnx_fp32", "hailo_emulation")))
    assert lenient["passed"] and lenient["formats"]["onnx_int8"]["gated"] is False
    with pytest.raises(StageError, match="no pytorch_fp32"):
        gate_model("m", {"onnx_fp32": good}, GateThresholds())
    with pytest.raises(Exception, match="unknown format"):
        GateThresholds(formats=("tflite",))


def test_a_format_with_its_own_baseline_is_held_to_it(tmp_path):
    """A YOLO Hailo emulation, scored by the host scorer, is compared with ONNX fp32 by that same scorer,
    not with PyTorch fp32 by Ultralytics' validator (which scores masks coarser; see gate.py)."""
    def mask_scores(value, per_class, scorer):
        return {"metric": "mask_map50_95", "value": value, "per_class": per_class, "present": list(per_class),
                "images": 4, "scorer": scorer}

    reference = mask_scores(0.30, {"car": 0.30, "bus": 0.30}, "validator")
    baseline = {"format": "onnx_fp32", **mask_scores(0.60, {"car": 0.70, "bus": 0.50}, "host")}
    close = mask_scores(0.595, {"car": 0.69, "bus": 0.50}, "host")
    evaluations = {"pytorch_fp32": reference, "onnx_fp32": reference, "hailo_emulation": close}
    passed = gate_model("yolo", evaluations, GateThresholds(), baselines={"hailo_emulation": baseline})
    entry = passed["formats"]["hailo_emulation"]
    assert passed["passed"] and entry["drop_points"] == pytest.approx(0.5)  # not "+29.5 vs PyTorch"
    assert entry["baseline"]["value"] == 0.60 and entry["baseline"]["format"] == "onnx_fp32" and entry["scorer"] == "host"
    assert "baseline" not in passed["formats"]["onnx_fp32"]

    evaluations["hailo_emulation"] = mask_scores(0.55, {"car": 0.60, "bus": 0.50}, "host")
    failed = gate_model("yolo", evaluations, GateThresholds(), baselines={"hailo_emulation": baseline})
    assert failed["failed_formats"] == ["hailo_emulation"] and "car -10.0" in failed["messages"][0]
    write_gate_outputs([failed], GateThresholds(), tmp_path / "q.md", tmp_path / "q.json", None)
    report = (tmp_path / "q.md").read_text()
    assert "55.00 (-5.00†) ✗" in report and "ONNX fp32 scored by the same scorer (60.00; host)" in report


def test_reports_metrics_and_plots(tmp_path):
    bad = _scores(0.50, {"road": 0.90, "car": 0.20, "sky": 0.40})
    results = [gate_model("student", {"pytorch_fp32": REFERENCE, "onnx_fp32": REFERENCE, "onnx_int8": bad}, GateThresholds())]
    metrics = write_gate_outputs(results, GateThresholds(), tmp_path / "quantization.md", tmp_path / "quantization.json",
                                 tmp_path / "plots")
    saved = json.loads((tmp_path / "quantization.json").read_text())
    assert saved == json.loads(json.dumps(metrics)) and saved["failed"] == ["student"]
    report = (tmp_path / "quantization.md").read_text()
    assert "**FAIL**" in report and "excluded from the bundle" in report and "car -30.0" in report
    assert (tmp_path / "plots" / "student_onnx_int8.png").read_bytes()[:4] == b"\x89PNG"
    assert "plots/student_onnx_int8.png" in report


def test_gate_inputs_equal_the_training_validation_transform(tmp_path):
    """The raw pixels every format is fed, normalised, are the training dataset's validation input."""
    make_split(tmp_path, "val", 2, len(CLASSES), size_hw=(90, 160), seed=3)
    dataset = IDDSegDataset(tmp_path / "val", LEVEL, (32, 64))
    for index in range(len(dataset)):
        expected_image, expected_mask = dataset[index]
        image, mask = dataset.load(index)
        ours = to_model_input(resize_rgb(image, (32, 64)), MEAN, STD)[0]
        np.testing.assert_allclose(ours, expected_image.numpy(), atol=1e-5)
        np.testing.assert_array_equal(resize_mask(mask, (32, 64)), expected_mask.numpy())


def test_torch_and_onnx_score_identically(tmp_path):
    make_split(tmp_path, "val", 3, len(CLASSES), size_hw=(48, 80), seed=4)
    dataset = evaluate.validation_dataset(tmp_path / "val", LEVEL, (32, 32))
    net = TinySegNet(num_classes=len(CLASSES))
    preprocess = lambda image: resize_rgb(image, (32, 32))  # noqa: E731
    reference = evaluate.evaluate_semantic(evaluate.torch_predictor(net, MEAN, STD), dataset, preprocess, CLASSES)
    session = onnx_session(export_to_onnx(net, (32, 32), opset=13).SerializeToString())
    exported = evaluate.evaluate_semantic(evaluate.onnx_predictor(session, MEAN, STD), dataset, preprocess, CLASSES)
    assert exported["miou"] == pytest.approx(reference["miou"], abs=1e-4)
    assert reference["images"] == 3 and sum(reference["gt_pixels"].values()) > 0
    gated = compare_format(semantic_scores(reference), semantic_scores(exported), GateThresholds())
    assert gated["passed"]


def test_nhwc_labels():
    logits = np.zeros((1, 4, 5, 3), dtype=np.float32)
    logits[..., 2] = 1.0
    assert (evaluate.nhwc_labels(logits) == 2).all() and evaluate.nhwc_labels(logits).shape == (4, 5)
    on_chip = np.full((1, 4, 5, 1), 3.0, dtype=np.float32)
    assert (evaluate.nhwc_labels(on_chip) == 3).all()
