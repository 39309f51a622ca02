"""The deployment stages end to end through the CLI, on the real config (shrunk) and a real trained-run layout.

A randomly initialised LR-ASPP student saved with the training code's `save_trained` goes through
export -> calibrate -> quantize -> compile-hef (no DFC here: status only) -> gate -> bundle. The gate
thresholds are opened wide: this test checks the plumbing; the gate's decisions are tested in test_gate.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from idd_edge import cli, config
from idd_edge.labels import LEVEL_CLASS_NAMES
from idd_edge_runtime.manifest import load_bundle
from tests.export_support import make_split

pytestmark = pytest.mark.slow

LEVEL = "level1"
STUDENT = {"name": "mnv4s_lraspp", "arch": "lraspp", "backbone": "mobilenetv4_conv_small", "pretrained": False,
           "pretrained_tag": None, "weights": None, "head_channels": 16}


def _trained_run(run_dir, input_size=(64, 64)):
    from idd_edge.seg.models import build_model
    from idd_edge.seg.trained import save_trained

    model = build_model(STUDENT, len(LEVEL_CLASS_NAMES[LEVEL]), input_size)
    save_trained(run_dir, model.state_dict(), {
        "run": run_dir.name, "model": STUDENT, "num_classes": len(LEVEL_CLASS_NAMES[LEVEL]),
        "input_size": list(input_size), "label_level": LEVEL, "class_names": list(LEVEL_CLASS_NAMES[LEVEL]),
    })


def _deployment_outputs(out, calibration_images: int, version: str) -> list[str]:
    """Overrides that put every deployment stage's outputs under `out`, with the gate wide open
    (these tests check the plumbing, not accuracy)."""
    return [
        f"export.out={out / 'export'}", f"export.metrics_dir={out / 'reports'}",
        f"calibrate.out={out / 'calib'}", f"calibrate.num_images={calibration_images}",
        f"calibrate.coverage_plot={out / 'coverage.png'}", f"quantize.out={out / 'quantize'}",
        f"compile.out={out / 'hailo'}", "gate.max_drop=100", "gate.max_class_drop=100",
        f"gate.report={out / 'quantization.md'}", f"gate.metrics={out / 'quantization.json'}",
        f"gate.plots={out / 'plots'}", f"bundle.out={out / 'bundle'}", f"bundle.version={version}",
    ]


def test_export_to_bundle_through_the_cli(tmp_path):
    splits = tmp_path / "splits"
    for split, count, seed in (("train", 10, 0), ("val", 3, 1), ("test", 2, 2)):
        make_split(splits / "IDDL1", split, count, len(LEVEL_CLASS_NAMES[LEVEL]), size_hw=(54, 96), seed=seed)
    _trained_run(tmp_path / "seg" / "kd_tiny")
    out = tmp_path / "artifacts"
    params = config.compose([
        "label_level=level1", f"split.out={splits}", f"export.runs_dir={tmp_path / 'seg'}", "export.models=[kd_tiny]",
        "export.parity_images=2", *_deployment_outputs(out, calibration_images=6, version="test-1"),
    ])
    params_path = tmp_path / "params.yaml"
    config.write_params(params, params_path)
    for stage in (["export", "--run", "kd_tiny"], ["calibrate"], ["quantize"], ["compile-hef"], ["gate"], ["bundle"]):
        assert cli.main([*stage, "--params", str(params_path)]) == 0, stage

    record = json.loads((out / "export" / "kd_tiny" / "export.json").read_text())
    assert json.loads((out / "reports" / "kd_tiny.json").read_text())["parity"] == record["parity"]
    assert record["parity"]["argmax_agreement"] >= 0.999 and record["input"]["shape"] == [1, 3, 64, 64]
    assert record["normalization"]["mean"] == [123.675, 116.28, 103.53]
    calib = np.load(out / "calib" / "resize_64x64.npy")
    assert calib.shape == (6, 64, 64, 3) and calib.dtype == np.uint8  # converted to float32 at use
    assert (out / "quantize" / "kd_tiny" / "model_int8.onnx").is_file()
    status = json.loads((out / "hailo" / "status.json").read_text())
    assert status["dfc_available"] is False and status["models"]["kd_tiny"]["built"] is False
    assert (out / "hailo" / "kd_tiny" / "model.alls").is_file()
    gate = json.loads((out / "quantization.json").read_text())["models"]["kd_tiny"]
    assert set(gate["formats"]) == {"onnx_fp32", "onnx_int8"} and gate["reference"]["images"] == 3
    assert gate["formats"]["onnx_fp32"]["drop_points"] == pytest.approx(0.0, abs=0.5)
    assert "hailo_emulation" in gate["not_evaluated"]
    assert "kd_tiny" in (out / "quantization.md").read_text()
    manifest = load_bundle(out / "bundle" / "test-1")
    assert {(m.name, m.format) for m in manifest.models} == {("kd_tiny", "onnx"), ("kd_tiny", "onnx-int8")}
    assert manifest.label_level == LEVEL


def test_yolo_branch_through_calibration_int8_gate_and_bundle(tmp_path):
    """The YOLO branch's ONNX joins the chain: letterbox calibration, INT8 up to the Hailo end nodes only,
    Ultralytics' validator in the gate (random weights: the plumbing, not the accuracy), bundle entry."""
    from tests.yolo_fixtures import EXPORT_IMGSZ, build_model, exported_model, save_checkpoint

    splits = tmp_path / "splits"
    for split, count, seed in (("train", 4, 0), ("val", 2, 1)):
        make_split(splits / "IDDL1", split, count, len(LEVEL_CLASS_NAMES[LEVEL]), size_hw=(54, 96), seed=seed)
    _checkpoint, yolo_export = exported_model(tmp_path / "yolo")
    save_checkpoint(build_model(), tmp_path / "yolo_train" / "train" / "weights" / "best.pt")
    dataset = _bridged_dataset(tmp_path / "bridge")
    out = tmp_path / "artifacts"
    params = config.compose([
        "label_level=level1", f"split.out={splits}", "export.models=[]", f"yolo.export.out={yolo_export}",
        f"yolo.train.out={tmp_path / 'yolo_train'}", f"yolo.bridge.out={dataset}",
        *_deployment_outputs(out, calibration_images=3, version="yolo-1"),
    ])
    params_path = tmp_path / "params.yaml"
    config.write_params(params, params_path)
    for stage in (["export", "--yolo"], ["calibrate"], ["quantize"], ["compile-hef"], ["gate"], ["bundle"]):
        assert cli.main([*stage, "--params", str(params_path)]) == 0, stage

    record = json.loads((out / "export" / "yolov8n_seg" / "export.json").read_text())
    assert record["role"] == "instance" and record["preprocess"] == "letterbox" and len(record["hailo"]["end_nodes"]) == 10
    calib = np.load(out / "calib" / f"letterbox_{EXPORT_IMGSZ}x{EXPORT_IMGSZ}.npy")
    assert calib.shape == (3, EXPORT_IMGSZ, EXPORT_IMGSZ, 3) and (calib == 114).any()  # grey letterbox padding
    kept = json.loads((out / "quantize" / "yolov8n_seg" / "quantize.json").read_text())["float_nodes_kept"]
    assert kept and not set(kept) & set(record["hailo"]["end_nodes"])  # box decoding stays float, heads are INT8
    gate = json.loads((out / "quantization.json").read_text())["models"]["yolov8n_seg"]
    assert gate["metric"] == "mask_map50_95" and set(gate["formats"]) == {"onnx_fp32", "onnx_int8"}
    assert "normalization1 = normalization([0.0, 0.0, 0.0], [255.0, 255.0, 255.0])" in (out / "hailo" / "yolov8n_seg" / "model.alls").read_text()
    manifest = load_bundle(out / "bundle" / "yolo-1")
    entry = manifest.entries("yolov8n_seg")[0]
    assert entry.role == "instance" and entry.output_kind == "yolov8-seg" and entry.postprocess.reg_max == 16
    assert entry.input.normalization.std == (255.0, 255.0, 255.0)


def _bridged_dataset(root):
    """synth -> convert (instances) -> yolo-bridge: the YOLO branch's real stage chain, tiny."""
    params = root / "params.yaml"
    config.write_params(config.compose(["yolo.bridge.workers=1", "convert.workers=1"]), params)
    synth, instances, dataset = root / "synth", root / "instances", root / "dataset"
    assert cli.main(["synth", str(synth), "--train", "2", "--val", "2", "--test", "0", "--size", "192x108", "--seed", "3"]) == 0
    assert cli.main(["convert", str(synth), str(instances), "--encoding", "id", "--instance", "--no-semantic", "--no-color",
                     "--no-panoptic", "--report", str(root / "convert.json"), "--params", str(params)]) == 0
    assert cli.main(["yolo-bridge", str(instances), str(synth), str(dataset), "--report", str(root / "bridge.json"),
                     "--params", str(params)]) == 0
    return dataset
