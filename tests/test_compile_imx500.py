"""`compile-imx500`: the converter's memory report (real reports saved from imxconv-pt runs), the stage
without the toolchain, and the stage on a tiny model through the real MCT + imxconv-pt in the toolchain
environment (`make imx500-env`; skipped without it locally, a failure under CI), read by the gate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from idd_edge import atomic
from idd_edge.errors import InputError, StageError
from idd_edge.export import compile_imx500, gate
from idd_edge.export.compile_imx500 import Imx500Settings, Imx500Target, compile_all, converter_reason, parse_memory_report
from idd_edge_runtime.formats import IMX500

FIXTURES = Path(__file__).parent / "fixtures" / "imx500"
REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_PYTHON = REPO_ROOT / compile_imx500.DEFAULT_TOOLS_ENV / "bin" / "python"


def test_memory_report_of_a_student_in_human_units():
    """imxconv-pt's report of MNv4-S LR-ASPP at 128x224 (default `--report-size-unit H`)."""
    memory = parse_memory_report(FIXTURES / "mnv4s_lraspp_MemoryReport.json")
    assert memory == {"used_kb": 2252.8, "available_kb": 8192.0, "model_kb": 376.88, "runtime_kb": 1884.16,
                      "utilization": "28%", "fits": True}


def test_memory_report_in_kilobytes():
    """The unit the stage asks for (`--report-size-unit K`): the budget is then 8191.88 KB, not 8 MB."""
    memory = parse_memory_report(FIXTURES / "tiny_MemoryReport_K.json")
    assert (memory["used_kb"], memory["available_kb"], memory["model_kb"], memory["fits"]) == (278.41, 8191.88, 5.41, True)


def test_a_file_that_is_not_a_memory_report_is_refused(tmp_path):
    path = tmp_path / "x_MemoryReport.json"
    path.write_text(json.dumps({"Memory Report": {"Memory Usage": "2.20MB"}}))
    with pytest.raises(InputError, match="not an IMX500 converter memory report") as info:
        parse_memory_report(path)
    assert str(path) in str(info.value)
    path.write_text(json.dumps({"Memory Report": {"Memory Usage": "lots", "Total Memory Available On Chip": "8MB",
                                                  "Fit In Chip": True}}))
    with pytest.raises(InputError, match="'lots' is not a size"):
        parse_memory_report(path)


def test_converter_reason_keeps_the_error_lines():
    """The refusal of MNv4-S DeepLabV3+ (smp's decoder upsamples with align_corners=True), as imxconv-pt logged it."""
    log_text = (FIXTURES / "mnv4s_deeplabv3plus_refused.log").read_text()
    assert converter_reason(log_text).splitlines() == [
        "ERROR : CODE: [INVOP] The network is not aligned with SDSP converter's restrictions. Errors are:",
        "Node [Framework.onnx] op: Resize, id: /net_decoder_up/Resize, errors:",
        "Param error - param: coordinate_transformation_mode, value: align_corners, reason: Supported values: "
        "['half_pixel', 'pytorch_half_pixel']",
        "Node [Framework.onnx] op: Resize, id: /net_segmentation_head_1/Resize, errors:",
        "Param error - param: coordinate_transformation_mode, value: align_corners, reason: Supported values: "
        "['half_pixel', 'pytorch_half_pixel']",
    ]
    assert converter_reason("one\ntwo\n", limit=1) == "two"


def test_settings_are_validated():
    with pytest.raises(InputError, match="method"):
        Imx500Settings(method="qat")
    with pytest.raises(InputError, match="calibration_images"):
        Imx500Settings(calibration_images=0)


def test_without_the_toolchain_the_stage_reports_and_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(compile_imx500.TOOLS_ENV_VARIABLE, str(tmp_path / "no-such-env"))
    monkeypatch.setattr(compile_imx500, "MCT_MODULE", "no_such_module_for_this_test")

    def build():
        raise AssertionError("nothing may be built without the toolchain")

    target = Imx500Target("tiny", build, (32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    status = compile_all([(target, np.zeros((2, 32, 32, 3), np.float32))], {"yolo": "semantic only"},
                         tmp_path / "imx500", Imx500Settings())
    assert status["toolchain_available"] is False and "make imx500-env" in status["reason"]
    assert status["models"]["tiny"]["converted"] is False and status["models"]["yolo"]["reason"] == "semantic only"
    assert not list((tmp_path / "imx500").rglob(IMX500.stage_file))
    with pytest.raises(StageError, match="require is true"):
        compile_all([(target, np.zeros((2, 32, 32, 3), np.float32))], {}, tmp_path / "imx500", Imx500Settings(require=True))


# --------------------------------------------------------------------- the real toolchain, tiny model

DRIVER = """
import json, sys
from pathlib import Path
import numpy as np
from idd_edge.export import evaluate
from idd_edge.export.compile_imx500 import Imx500Settings, Imx500Target, compile_all
from idd_edge.export.preprocessing import resize_rgb
from idd_edge.labels import LEVEL_CLASS_NAMES
from tests.export_support import TinySegNet, make_split

out = Path(sys.argv[1])
classes = LEVEL_CLASS_NAMES["level1"]
make_split(out / "splits", "val", 4, len(classes), size_hw=(40, 56), seed=1)
net = TinySegNet(num_classes=len(classes), size_hw=(32, 32)).eval()
mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
dataset = evaluate.validation_dataset(out / "splits" / "val", "level1", (32, 32))
preprocess = lambda image: resize_rgb(image, (32, 32))
score = lambda session: evaluate.evaluate_semantic(evaluate.onnx_predictor(session, (0, 0, 0), (1, 1, 1)), dataset,
                                                   preprocess, classes)
fp32 = evaluate.evaluate_semantic(evaluate.torch_predictor(net, mean, std), dataset, preprocess, classes)
calibration = np.random.default_rng(0).integers(0, 256, size=(12, 32, 32, 3)).astype(np.float32)
target = Imx500Target("tiny", lambda: net, (32, 32), mean, std)
compile_all([(target, calibration)], {"yolo": "semantic students only"}, out / "imx500",
            Imx500Settings(calibration_images=8), {"tiny": score})
(out / "fp32.json").write_text(json.dumps(fp32))
"""


def _tools_environment() -> dict:
    """The repository's sources (and tests/, for TinySegNet) on the toolchain interpreter's path."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT / "deploy" / "src"), str(REPO_ROOT)]))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    reason = None if TOOLS_PYTHON.is_file() else f"{TOOLS_PYTHON} missing (make imx500-env)"
    reason = reason or (None if shutil.which("java") else "no Java runtime")
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the IMX500 toolchain test: {reason}")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("imx500")
    env = _tools_environment()
    result = subprocess.run([str(TOOLS_PYTHON), "-c", textwrap.dedent(DRIVER), str(out)], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_real_toolchain_writes_the_package_and_the_memory_metric(real_run):
    status = json.loads((real_run / "imx500" / "status.json").read_text())
    assert status["toolchain_available"] is True and status["method"] == "ptq"
    record = status["models"]["tiny"]
    assert record["converted"] and record["fits"] and record["calibration_images"] == 8
    model_dir = real_run / "imx500" / "tiny"
    assert zipfile.is_zipfile(model_dir / IMX500.stage_file) and zipfile.ZipFile(model_dir / IMX500.stage_file).namelist()
    assert record["memory"] == parse_memory_report(model_dir / "memory_report.json")
    assert 0 < record["memory"]["used_kb"] < record["memory"]["available_kb"]
    assert (model_dir / record["quantized_onnx"]).is_file() and "Converted successfully" in (model_dir / "convert.log").read_text()
    assert status["models"]["yolo"] == {"name": "yolo", "converted": False, "fits": None, "packer_out": None,
                                        "memory": None, "evaluation": None, "reason": "semantic students only"}


def test_real_quantized_model_is_scored_and_gated(real_run):
    """MCT's int8 model keeps the fp32 model's labels on the tiny split; the gate shows its own column."""
    fp32 = json.loads((real_run / "fp32.json").read_text())
    scores, reason = gate.imx500_evaluation(real_run / "imx500" / "tiny" / "compile.json")
    assert scores is not None, reason
    assert scores["images"] == fp32["images"] == 4
    assert abs(scores["pixel_accuracy"] - fp32["pixel_accuracy"]) < 0.02
    result = gate.gate_model("tiny", {gate.REFERENCE: gate.semantic_scores(fp32), IMX500.gate: gate.semantic_scores(scores)},
                             gate.GateThresholds(max_drop=100.0, max_class_drop=100.0))
    assert result["formats"][IMX500.gate]["gated"] is False  # reported, not gated by default
    report = gate.render_report([result], gate.GateThresholds(), {})
    header = next(line for line in report.splitlines() if line.startswith("| model |"))
    assert "IMX500 (MCT quantized)" in header and "IMX500 (MCT quantized) Δ" in report


def test_gate_says_why_there_is_no_imx500_score(tmp_path):
    assert gate.imx500_evaluation(tmp_path / "missing.json") == (None, f"{tmp_path / 'missing.json'} not found "
                                                                       "(run `idd-edge compile-imx500`)")
    (tmp_path / "compile.json").write_text(json.dumps({"reason": "no Java runtime", "evaluation": None}))
    assert gate.imx500_evaluation(tmp_path / "compile.json") == (None, "no Java runtime")


def test_bundle_ships_the_real_package_that_fits(real_run, tmp_path):
    """The converter's packerOut.zip of a model that fits and passed the gate goes into the bundle as an
    "imx500" entry (sensor input: NCHW uint8, normalised in the graph); the runtime's loader verifies it."""
    from idd_edge.bundle import build_bundle
    from idd_edge.export.onnx_export import export_model
    from idd_edge.export.preprocessing import load_exports
    from idd_edge.labels import LEVEL_CLASS_NAMES
    from idd_edge_runtime.manifest import load_bundle
    from tests.export_support import TinySegNet

    classes = LEVEL_CLASS_NAMES["level1"]
    metadata = {"role": "semantic", "label_level": "level1", "class_names": list(classes), "preprocess": "resize",
                "normalization": {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
                "run_dir": str(tmp_path / "tiny")}
    export_model(TinySegNet(len(classes)), "tiny", (32, 32), tmp_path / "export" / "tiny",
                 [np.zeros((1, 3, 32, 32), np.float32)], opset=13, metadata=metadata)
    fp32 = gate.semantic_scores(json.loads((real_run / "fp32.json").read_text()))
    scores, _ = gate.imx500_evaluation(real_run / "imx500" / "tiny" / "compile.json")
    verdict = gate.gate_model("tiny", {gate.REFERENCE: fp32, "onnx_fp32": fp32, IMX500.gate: gate.semantic_scores(scores)},
                              gate.GateThresholds(max_drop=100.0, max_class_drop=100.0))
    result = build_bundle(load_exports(tmp_path / "export"), {"models": {"tiny": verdict}}, tmp_path / "quantize",
                          tmp_path / "hailo", tmp_path / "bundle", version="v1", label_level="level1",
                          source={"git_commit": None, "dirty": False}, runtime_source=None, imx500_dir=real_run / "imx500")
    manifest = load_bundle(result["path"])
    (entry,) = [e for e in manifest.models if e.is_imx500]
    assert entry.file == "models/tiny" + IMX500.bundle_suffix and (entry.input.width, entry.input.height) == (32, 32)
    assert (entry.input.layout, entry.input.dtype, entry.input.normalization) == ("NCHW", "uint8", None)
    assert zipfile.is_zipfile(Path(result["path"]) / entry.file)


def test_real_gptq_option_exports_a_quantized_onnx(real_run, tmp_path):
    """`compile.imx500.method: gptq` goes through MCT's GPTQ (one epoch here) to the same quantized ONNX export."""
    driver = """
import sys, numpy as np
from pathlib import Path
from idd_edge.export.compile_imx500 import Imx500Settings, normalised_network, quantize_with_mct
from tests.export_support import TinySegNet
network = normalised_network(TinySegNet(num_classes=4), (0.0, 0.0, 0.0), (255.0, 255.0, 255.0))
calibration = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype(np.float32)
print(quantize_with_mct(network, calibration, Imx500Settings(method="gptq", gptq_epochs=1), Path(sys.argv[1])))
"""
    env = _tools_environment()
    result = subprocess.run([str(TOOLS_PYTHON), "-c", driver, str(tmp_path / "gptq.onnx")], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "'method': 'gptq'" in result.stdout and (tmp_path / "gptq.onnx").stat().st_size > 0


def test_ultralytics_models_are_skipped_with_a_reason_and_students_are_not(tmp_path):
    """YOLO26n-sem is a semantic run but an Ultralytics model: the toolchain environment cannot build it, so
    the stage records why instead of failing (students go through)."""
    from idd_edge.export.compile_imx500 import skip_reason

    def record(run: str, arch: str, role: str = "semantic") -> dict:
        run_dir = tmp_path / run
        atomic.write_json(run_dir / "model.json", {"model": {"name": run, "arch": arch}, "num_classes": 16,
                                                   "input_size": [128, 224], "label_level": "level2"})
        return {"name": run, "role": role, "run_dir": str(run_dir)}

    assert skip_reason(record("kd_mnv4s_lraspp", "lraspp")) is None
    assert "Ultralytics" in skip_reason(record("ultralytics_sem", "ultralytics_sem"))
    assert "YOLOv8n-seg" in skip_reason(record("yolov8n_seg", "none", role="instance"))


@pytest.mark.parametrize("align_corners", [True, False])
def test_precheck_refuses_align_corners_resize_before_mct(tmp_path, align_corners):
    """smp's DeepLabV3+ upsamples with align_corners=True, which imxconv-pt refuses after MCT has spent
    10-30 s on the model: the exported graph is checked first. half_pixel passes to the real toolchain."""
    import torch

    from idd_edge.export.compile_imx500 import converter_precheck

    class Up(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=align_corners)

    path = tmp_path / "up.onnx"
    torch.onnx.export(Up(), torch.zeros(1, 3, 8, 8), str(path), opset_version=13, dynamo=False)
    reason = converter_precheck(path)
    if align_corners:
        assert reason is not None and "align_corners" in reason and "up.onnx" in reason
    else:
        assert reason is None


def test_precheck_names_an_unreadable_onnx(tmp_path):
    from idd_edge.export.compile_imx500 import converter_precheck

    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07not a protobuf at all")
    with pytest.raises(InputError, match="broken.onnx"):
        converter_precheck(path)
