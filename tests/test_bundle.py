"""Device bundle: only gated formats of passing models, manifest validated by the runtime's own loader."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from idd_edge.bundle import build_bundle, default_version, dvc_data_hashes, git_source
from idd_edge.errors import StageError
from idd_edge.export.compile_hef import HailoSettings, ModelTarget, compile_all
from idd_edge.export.gate import GateThresholds, gate_model
from idd_edge.export.onnx_export import export_model
from idd_edge.export.preprocessing import load_exports
from idd_edge.export.quantize import quantize_model
from idd_edge.labels import LEVEL_CLASS_NAMES, level_palette
from idd_edge_runtime.manifest import load_bundle
from tests.export_support import TinySegNet
from tests.test_compile_hef_contract import make_standin_sdk

LEVEL = "level1"
CLASSES = LEVEL_CLASS_NAMES[LEVEL]
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def _scores(value, car):
    per_class = {name: 0.5 for name in CLASSES}
    per_class["vehicle"] = car
    return {"metric": "miou", "value": value, "per_class": per_class, "present": list(CLASSES), "images": 3}


@pytest.fixture
def pipeline(tmp_path):
    """Two exported + quantized models; `good` passes the gate, `bad` loses 20 points on "vehicle"."""
    calibration = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype(np.float32)
    for seed, name in enumerate(("good", "bad")):
        metadata = {"role": "semantic", "label_level": LEVEL, "class_names": list(CLASSES), "preprocess": "resize",
                    "normalization": {"mean": MEAN, "std": STD}, "run_dir": str(tmp_path / name)}
        export_model(TinySegNet(len(CLASSES), seed=seed), name, (32, 32), tmp_path / "export" / name,
                     [np.zeros((1, 3, 32, 32), np.float32)], opset=13, metadata=metadata)
        quantize_model(tmp_path / "export" / name / "model.onnx", calibration, tmp_path / "quantize" / name / "model_int8.onnx",
                       mean=MEAN, std=STD)
    reference = _scores(0.5, 0.5)
    gates = {
        "good": gate_model("good", {"pytorch_fp32": reference, "onnx_fp32": reference, "onnx_int8": _scores(0.499, 0.49)}, GateThresholds()),
        "bad": gate_model("bad", {"pytorch_fp32": reference, "onnx_fp32": reference, "onnx_int8": _scores(0.49, 0.3)}, GateThresholds()),
    }
    metrics = {"models": gates}
    return tmp_path, load_exports(tmp_path / "export"), metrics, calibration


SOURCE = {"git_commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False, "dvc_data": {"data/splits": "abc123.dir"}}


def test_bundle_ships_gated_formats_of_passing_models(pipeline):
    tmp_path, exports, metrics, _ = pipeline
    result = build_bundle(exports, metrics, tmp_path / "quantize", tmp_path / "hailo", tmp_path / "bundle",
                          version="1.2.3", label_level=LEVEL, source=SOURCE)
    bundle = tmp_path / "bundle" / "1.2.3"
    manifest = load_bundle(bundle)  # the device's loader: schema + checksums
    assert [(m.name, m.format) for m in manifest.models] == [("good", "onnx-int8"), ("good", "onnx")]
    assert "bad" in result["excluded"] and "vehicle" in result["excluded"]["bad"]
    entry = manifest.models[0]
    assert entry.input.width == entry.input.height == 32 and entry.input.layout == "NCHW"
    assert entry.input.normalization.mean == tuple(MEAN)
    assert [c.name for c in entry.classes] == list(CLASSES)
    assert [list(c.color) for c in entry.classes] == level_palette(LEVEL).tolist()
    assert entry.gate["passed"] and entry.gate["format"] == "onnx_int8" and entry.gate["drop_points"] == pytest.approx(0.1)
    assert manifest.source.git_commit == SOURCE["git_commit"] and manifest.source.dvc_data == SOURCE["dvc_data"]
    assert manifest.hailo.hw_arch is None and not manifest.has_hef
    assert (bundle / "runtime" / "pyproject.toml").is_file()
    assert (bundle / "runtime" / "src" / "idd_edge_runtime" / "manifest.py").is_file()
    assert not list((bundle / "runtime").rglob("__pycache__"))
    assert (bundle / "models" / "good.onnx").read_bytes() == (tmp_path / "export" / "good" / "model.onnx").read_bytes()


def test_hef_is_shipped_when_built_and_its_emulation_passed(pipeline, monkeypatch):
    tmp_path, exports, metrics, calibration = pipeline
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", make_standin_sdk([]))
    record = exports[[r["name"] for r in exports].index("good")]
    target = ModelTarget("good", tmp_path / "export" / "good" / "model.onnx", (32, 32), ("input",),
                         tuple(record["hailo"]["end_nodes"]), tuple(MEAN), tuple(STD))
    compile_all([(target, calibration)], tmp_path / "hailo", HailoSettings(hw_arch="hailo8l"))
    reference = _scores(0.5, 0.5)
    metrics["models"]["good"] = gate_model("good", {"pytorch_fp32": reference, "onnx_fp32": reference,
                                                    "onnx_int8": reference, "hailo_emulation": _scores(0.496, 0.48)},
                                           GateThresholds())
    build_bundle(exports, metrics, tmp_path / "quantize", tmp_path / "hailo", tmp_path / "bundle", version="2.0.0",
                 label_level=LEVEL, source=SOURCE, runtime_source=None)
    manifest = load_bundle(tmp_path / "bundle" / "2.0.0")
    hef = manifest.entries("good")[0]
    assert hef.format == "hef" and hef.file == "models/good.hef"
    assert hef.input.layout == "NHWC" and hef.input.dtype == "uint8" and hef.input.normalization is None
    assert (manifest.hailo.hw_arch, manifest.hailo.dfc_version, manifest.hailo.hailort_version) == ("hailo8l", "3.33.0", "4.23")


def test_nothing_passing_is_an_error(pipeline):
    tmp_path, exports, metrics, _ = pipeline
    del metrics["models"]["good"]
    with pytest.raises(StageError, match="no model passed"):
        build_bundle(exports, metrics, tmp_path / "quantize", tmp_path / "hailo", tmp_path / "bundle", version="x",
                     label_level=LEVEL, source=SOURCE)
    assert not (tmp_path / "bundle" / "x").exists()


def test_provenance_helpers(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(json.dumps({"schema": "2.0", "stages": {
        "split": {"outs": [{"path": "data/splits", "md5": "d41d8cd9.dir"}]},
        "train": {"outs": [{"path": "artifacts/seg/x", "md5": "ffff.dir"}]}}}))
    assert dvc_data_hashes(lock) == {"data/splits": "d41d8cd9.dir"}
    assert dvc_data_hashes(tmp_path / "missing.lock") == {}
    source = git_source()
    assert source["git_commit"] is None or len(source["git_commit"]) == 40
    assert default_version({"git_commit": "abcdef0123456789", "dirty": True}).endswith("+gabcdef0.dirty")
