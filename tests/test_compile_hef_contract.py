"""Contract test of the Hailo DFC flow against a stand-in `hailo_sdk_client` that records every call.

The real DFC is proprietary (not on PyPI), so this is the one place a fake is allowed. The stand-in
checks nothing itself; it records the calls, and the test asserts the exact sequence, node names,
model-script text and calibration array the real `ClientRunner` would receive. Its emulator runs the
ONNX model with ONNX Runtime up to the parse's end nodes after applying the model script's
normalization to the raw input, and returns NHWC tensors as the DFC does (a list when there are
several; the YOLO head's class convs sigmoided when the script says `change_output_activation`). So
the emulation score equals the fp32 ONNX score exactly when the script's normalization is the model's,
and for YOLOv8n-seg when the host scorer decodes the ten split tensors as it decodes the ONNX outputs.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import json
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from idd_edge.errors import StageError
from idd_edge.export import compile_hef, evaluate
from idd_edge.export.compile_hef import HailoSettings, ModelTarget, compile_all, model_script, parse_compile_log
from idd_edge.export.onnx_export import export_model
from idd_edge.export.onnx_io import onnx_session
from idd_edge.export.preprocessing import resize_rgb
from idd_edge.labels import LEVEL_CLASS_NAMES
from tests.export_support import TinySegNet, make_split
from tests.yolo_fixtures import CLASS_CONV, end_node_outputs

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
LEVEL = "level1"
CLASSES = LEVEL_CLASS_NAMES[LEVEL]


def make_standin_sdk(calls: list) -> types.ModuleType:
    """A `hailo_sdk_client` module recording calls into `calls`."""
    sdk = types.ModuleType("hailo_sdk_client")
    sdk.__spec__ = importlib.machinery.ModuleSpec("hailo_sdk_client", None)
    sdk.__version__ = "3.33.0"
    sdk.InferenceContext = types.SimpleNamespace(SDK_NATIVE="SDK_NATIVE", SDK_FP_OPTIMIZED="SDK_FP_OPTIMIZED",
                                                 SDK_QUANTIZED="SDK_QUANTIZED")

    class ClientRunner:
        def __init__(self, hw_arch=None, har=None):
            calls.append(("ClientRunner", {"hw_arch": hw_arch, "har": har}))
            self.onnx_path, self.script = None, ""

        def translate_onnx_model(self, model, net_name, start_node_names=None, end_node_names=None, net_input_shapes=None):
            calls.append(("translate_onnx_model", {"model": model, "net_name": net_name, "start_node_names": start_node_names,
                                                   "end_node_names": end_node_names, "net_input_shapes": net_input_shapes}))
            self.onnx_path, self.end_nodes = model, list(end_node_names)
            return "hn", "npz"

        def save_har(self, path):
            calls.append(("save_har", {"path": path}))
            Path(path).write_bytes(b"HAR standin")

        def load_model_script(self, script):
            calls.append(("load_model_script", {"script": script}))
            self.script = script

        def optimize(self, calib_data):
            calls.append(("optimize", {"calib_data": calib_data}))
            print("[info] Reducing optimization level to 0 (the stand-in says what the DFC says)", flush=True)

        @contextlib.contextmanager
        def infer_context(self, context):
            calls.append(("infer_context", {"context": context}))
            yield context

        def infer(self, context, data):
            calls.append(("infer", {"context": context, "shape": data.shape, "dtype": str(data.dtype), "data": data.copy()}))
            mean, std = (np.array(json.loads(v)) for v in re.search(r"normalization\((\[.*?\]), (\[.*?\])\)", self.script).groups())
            normalized = ((data - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
            outputs = end_node_outputs(self.onnx_path, self.end_nodes, normalized)
            # The script's change_output_activation layers are the YOLO head's class convs (conv45/61/74).
            sigmoid = "change_output_activation(" in self.script
            nhwc = [(1.0 / (1.0 + np.exp(-out)) if sigmoid and CLASS_CONV.search(node) else out).transpose(0, 2, 3, 1)
                    for node, out in zip(self.end_nodes, outputs)]
            return nhwc[0] if len(nhwc) == 1 else nhwc

        def compile(self):
            calls.append(("compile", {}))
            os.write(1, b"[info] Model FPS (post-allocation): 605.732\n")  # native code writes to the fd
            return b"HEF standin bytes"

    sdk.ClientRunner = ClientRunner
    return sdk


@pytest.fixture
def exported(tmp_path):
    make_split(tmp_path / "splits", "val", 3, len(CLASSES), size_hw=(40, 56), seed=1)
    net = TinySegNet(num_classes=len(CLASSES))
    record = export_model(net, "tiny", (32, 32), tmp_path / "export" / "tiny", [np.zeros((1, 3, 32, 32), np.float32)], opset=13)
    target = ModelTarget(name="tiny", onnx_path=tmp_path / "export" / "tiny" / "model.onnx", input_hw=(32, 32),
                         start_nodes=tuple(record["hailo"]["start_nodes"]), end_nodes=tuple(record["hailo"]["end_nodes"]),
                         mean=MEAN, std=STD)
    # uint8, as `idd-edge calibrate` stores it; the DFC must get float32 (checked below)
    calibration = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3)).astype(np.uint8)
    return tmp_path, target, calibration


def _val(tmp_path: Path):
    return evaluate.validation_dataset(tmp_path / "splits" / "val", LEVEL, (32, 32))


def _evaluator(dataset):
    def evaluate_emulation(infer):
        predict = lambda batch: evaluate.nhwc_labels(infer(batch))  # noqa: E731
        return evaluate.evaluate_semantic(predict, dataset, lambda image: resize_rgb(image, (32, 32)), CLASSES)
    return evaluate_emulation


def test_contract_call_sequence_nodes_script_and_calibration(exported, monkeypatch, capfd):
    tmp_path, target, calibration = exported
    calls: list = []
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", make_standin_sdk(calls))
    settings = HailoSettings(hw_arch="hailo8l", optimization_level=2, compression_level=0)
    status = compile_all([(target, calibration)], tmp_path / "hailo", settings, {"tiny": _evaluator(_val(tmp_path))})

    names = [name for name, _ in calls]
    infers = names.count("infer")
    assert infers == 3  # one per validation image
    assert names == ["ClientRunner", "translate_onnx_model", "save_har", "load_model_script", "optimize", "save_har",
                     "infer_context"] + ["infer"] * infers + ["compile", "save_har"]
    args = dict((name, kwargs) for name, kwargs in calls if name != "save_har")
    assert args["ClientRunner"]["hw_arch"] == "hailo8l"
    assert args["translate_onnx_model"]["start_node_names"] == ["input"]
    assert args["translate_onnx_model"]["end_node_names"] == list(target.end_nodes)
    assert args["translate_onnx_model"]["net_input_shapes"] == {"input": [1, 3, 32, 32]}
    assert args["translate_onnx_model"]["net_name"] == "tiny"
    assert args["load_model_script"]["script"] == (
        "normalization1 = normalization([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])\n"
        "model_optimization_config(calibration, batch_size=1, calibset_size=5)\n"
        "model_optimization_flavor(optimization_level=2, compression_level=0)\n"
    )
    calib = args["optimize"]["calib_data"]
    assert isinstance(calib, np.ndarray) and calib.shape == (5, 32, 32, 3) and calib.dtype == np.float32
    np.testing.assert_array_equal(calib, calibration)  # raw 0-255 NHWC, values untouched
    assert args["infer_context"]["context"] == "SDK_QUANTIZED"
    assert args["infer"]["shape"] == (1, 32, 32, 3) and args["infer"]["dtype"] == "float32"

    out = tmp_path / "hailo" / "tiny"
    record = json.loads((out / "compile.json").read_text())
    assert record == status["models"]["tiny"]
    assert record["built"] and (out / "model.hef").read_bytes() == b"HEF standin bytes"
    assert record["hef_bytes"] == len(b"HEF standin bytes")
    assert record["dfc_version"] == "3.33.0" and record["hailort_version"] == "4.23" and record["hw_arch"] == "hailo8l"
    assert record["fps_estimate"] == pytest.approx(605.732)
    assert record["optimization_level_reduced_to"] == 0
    assert (out / "model.alls").read_text() == args["load_model_script"]["script"]
    assert all((out / f"{stage}.har").is_file() for stage in ("parsed", "optimized", "compiled"))
    assert "605.732" in (out / "compile.log").read_text()
    assert "605.732" in capfd.readouterr().err  # echoed to the user too
    # The stand-in emulator normalises with the script's numbers: equal scores prove the script is right.
    fp32 = evaluate.evaluate_semantic(evaluate.onnx_predictor(onnx_session(target.onnx_path), MEAN, STD),
                                      _val(tmp_path), lambda image: resize_rgb(image, (32, 32)), CLASSES)
    assert record["emulation"]["miou"] == pytest.approx(fp32["miou"])
    assert status["dfc_available"] is True


def test_yolo_script_has_class_sigmoids_and_unit_normalization():
    target = ModelTarget(name="yolo", onnx_path=Path("y.onnx"), input_hw=(512, 512), start_nodes=("images",),
                         end_nodes=("/model.22/proto/cv3/act/Mul",), mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0),
                         sigmoid_layers=("conv45", "conv61", "conv74"))
    script = model_script(target, HailoSettings(optimization_level=3, compression_level=1), calibset_size=1024)
    assert script.splitlines() == [
        "normalization1 = normalization([0.0, 0.0, 0.0], [255.0, 255.0, 255.0])",
        "change_output_activation(conv45, sigmoid)",
        "change_output_activation(conv61, sigmoid)",
        "change_output_activation(conv74, sigmoid)",
        "model_optimization_config(calibration, batch_size=1, calibset_size=1024)",
        "model_optimization_flavor(optimization_level=3, compression_level=1)",
    ]


def test_without_the_dfc_the_stage_reports_and_builds_nothing(exported, monkeypatch):
    tmp_path, target, calibration = exported
    monkeypatch.delitem(sys.modules, "hailo_sdk_client", raising=False)
    assert not compile_hef.dfc_available()
    status = compile_all([(target, calibration)], tmp_path / "hailo", HailoSettings())
    record = status["models"]["tiny"]
    assert status["dfc_available"] is False and record["built"] is False
    assert "not installed" in record["reason"] and "Hailo Developer Zone" in record["reason"]
    assert record["emulation"] is None and record["hef"] is None
    assert not list((tmp_path / "hailo").rglob("*.hef")) and not list((tmp_path / "hailo").rglob("*.har"))
    assert (tmp_path / "hailo" / "tiny" / "model.alls").read_text().startswith("normalization1 = normalization(")
    with pytest.raises(StageError, match="require is true"):
        compile_all([(target, calibration)], tmp_path / "hailo2", HailoSettings(require=True))


def test_a_failing_dfc_stops_the_stage_and_keeps_the_log(exported, monkeypatch):
    tmp_path, target, calibration = exported
    calls: list = []
    sdk = make_standin_sdk(calls)

    def broken_optimize(self, calib_data):
        print("[error] stand-in optimizer ran out of memory", flush=True)
        raise RuntimeError("optimization failed")

    sdk.ClientRunner.optimize = broken_optimize
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", sdk)
    with pytest.raises(StageError, match="optimization failed") as failure:
        compile_all([(target, calibration)], tmp_path / "hailo", HailoSettings())
    log_path = Path(str(failure.value).rsplit("full log: ", 1)[1])
    assert "ran out of memory" in log_path.read_text()
    assert not (tmp_path / "hailo" / "tiny").exists()  # nothing half-built in place


def test_parse_compile_log():
    text = "\n".join([
        "[info] Starting Hailo allocation",
        "[info] Model FPS estimate: 728.753",
        "[info] 605.732 FPS post-allocation",
        "[warning] Reducing optimization level to 0 (bias correction, AdaRound and QFT skipped)",
    ])
    parsed = parse_compile_log(text)
    assert parsed["fps_estimate"] == pytest.approx(605.732)
    assert [r["fps"] for r in parsed["fps_reports"]] == [728.753, 605.732]
    assert parsed["optimization_level_reduced_to"] == 0
    assert parse_compile_log("no numbers here") == {"fps_estimate": None, "fps_reports": [], "optimization_level_reduced_to": None}


def test_settings_are_validated():
    with pytest.raises(Exception, match="hw_arch"):
        HailoSettings(hw_arch="hailo15h")
    with pytest.raises(Exception, match="optimization_level"):
        HailoSettings(optimization_level=7)


# ------------------------------------------------------------------------------- YOLOv8n-seg through the CLI

YOLO_NAME = "yolov8n_seg"
CLASS_LAYERS = ["conv45", "conv61", "conv74"]
#: Square frames of several sizes (the letterbox resizes) and one tall frame (the letterbox pads).
YOLO_FRAMES = [(128, 128), (128, 128), (96, 96), (160, 160), (160, 90)]


@pytest.fixture(scope="module")
def yolo_stages(tmp_path_factory):
    """The YOLO model's deployment inputs as the pipeline lays them out: export record, letterbox
    calibration array, bridge dataset (pseudo-labelled, see tests/test_evaluate_yolo.py), trained weights."""
    import shutil

    from idd_edge.export.onnx_export import adopt_yolo_export
    from idd_edge.export.preprocessing import letterbox_rgb
    from tests.yolo_fixtures import EXPORT_IMGSZ, exported_scoring_model, pseudo_labelled_split, street_image

    checkpoint, export_dir = exported_scoring_model(tmp_path_factory.getbasetemp() / "yolo_models")
    root = tmp_path_factory.mktemp("yolo_contract")
    adopt_yolo_export(export_dir, root / "export" / YOLO_NAME, YOLO_NAME, "warn", {})
    data_yaml = pseudo_labelled_split(root / "bridge", root / "export" / YOLO_NAME / "model.onnx", YOLO_FRAMES)
    calibration = np.stack([letterbox_rgb(street_image(54, 96, seed=50 + i), (EXPORT_IMGSZ, EXPORT_IMGSZ)) for i in range(3)])
    (root / "calib").mkdir()
    np.save(root / "calib" / f"letterbox_{EXPORT_IMGSZ}x{EXPORT_IMGSZ}.npy", calibration)
    (root / "train" / "train" / "weights").mkdir(parents=True)
    shutil.copyfile(checkpoint, root / "train" / "train" / "weights" / "best.pt")
    return root, data_yaml, calibration


def _yolo_params(root, hailo: str):
    from idd_edge import config

    params = config.compose([
        f"export.out={root / 'export'}", f"calibrate.out={root / 'calib'}", f"compile.out={root / hailo}",
        f"compile.hailo.class_output_layers={CLASS_LAYERS}".replace("hailo.class", "yolo.class"),
        f"yolo.bridge.out={root / 'bridge'}", f"yolo.train.out={root / 'train'}", f"quantize.out={root / 'quantize'}",
        f"gate.report={root / hailo / 'quantization.md'}", f"gate.metrics={root / hailo / 'quantization.json'}",
        f"gate.plots={root / hailo / 'plots'}",
    ])
    path = root / f"params_{hailo}.yaml"
    config.write_params(params, path)
    return path


def _run_compile_and_gate(root, hailo: str, sdk) -> tuple[dict, dict]:
    from idd_edge import cli

    params = _yolo_params(root, hailo)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "hailo_sdk_client", sdk)
        assert cli.main(["compile-hef", "--params", str(params)]) == 0
    assert cli.main(["gate", "--params", str(params)]) == 0
    record = json.loads((root / hailo / YOLO_NAME / "compile.json").read_text())
    return record, json.loads((root / hailo / "quantization.json").read_text())["models"][YOLO_NAME]


@pytest.mark.slow
def test_contract_yolo_emulation_is_scored_and_gated(yolo_stages):
    from idd_edge.export import evaluate_yolo
    from idd_edge.export.preprocessing import letterbox_rgb
    from tests.yolo_fixtures import EXPORT_IMGSZ

    root, data_yaml, calibration = yolo_stages
    calls: list = []
    record, gate = _run_compile_and_gate(root, "hailo", make_standin_sdk(calls))

    args = dict((name, kwargs) for name, kwargs in calls if name not in ("save_har", "infer"))
    export = json.loads((root / "export" / YOLO_NAME / "export.json").read_text())
    assert args["translate_onnx_model"]["end_node_names"] == export["hailo"]["end_nodes"]
    assert len(export["hailo"]["end_nodes"]) == 10
    script = args["load_model_script"]["script"]
    assert script.startswith("normalization1 = normalization([0.0, 0.0, 0.0], [255.0, 255.0, 255.0])\n")
    assert [f"change_output_activation({layer}, sigmoid)" for layer in CLASS_LAYERS] == script.splitlines()[1:4]
    np.testing.assert_array_equal(args["optimize"]["calib_data"], calibration)
    # The emulator sees each validation frame once: NHWC float32 raw 0-255, letterboxed to the HEF input.
    split = evaluate_yolo.load_val_split(data_yaml)
    fed = [kwargs["data"] for name, kwargs in calls if name == "infer"]
    assert len(fed) == len(YOLO_FRAMES) == len(split.images)
    for index, batch in enumerate(fed):
        assert batch.shape == (1, EXPORT_IMGSZ, EXPORT_IMGSZ, 3) and batch.dtype == np.float32
        np.testing.assert_array_equal(batch[0], letterbox_rgb(split.load(index)[0], (EXPORT_IMGSZ, EXPORT_IMGSZ)))
    assert any((batch == 114).all(axis=-1).any() for batch in fed)  # the tall frame's grey padding

    # Recorded: real scores of the emulator's split tensors, and the same scorer on ONNX fp32 (its baseline).
    emulation = record["emulation"]
    fp32 = evaluate_yolo.evaluate_yolo(evaluate_yolo.onnx_predictor(onnx_session(root / "export" / YOLO_NAME / "model.onnx")),
                                       split, (EXPORT_IMGSZ, EXPORT_IMGSZ), "onnx")
    assert emulation["metric"] == "mask_map50_95" and emulation["images"] == len(YOLO_FRAMES)
    assert emulation["value"] == pytest.approx(fp32["value"], abs=1e-6) and emulation["value"] > 0.3
    assert emulation["baseline"] == {"format": "onnx_fp32", **json.loads(json.dumps(fp32))}
    # The gate holds the emulation to that baseline and passes it; ONNX fp32 stays on the validator.
    result = gate["formats"]["hailo_emulation"]
    assert result["gated"] and result["passed"] and result["drop_points"] == pytest.approx(0.0, abs=1e-4)
    assert result["baseline"]["value"] == pytest.approx(fp32["value"]) and result["scorer"] == evaluate_yolo.SCORER
    # ONNX fp32 stays on Ultralytics' validator against PyTorch fp32, on the same square inputs (rect=False).
    assert "baseline" not in gate["formats"]["onnx_fp32"]
    assert gate["formats"]["onnx_fp32"]["drop_points"] == pytest.approx(0.0, abs=0.5) and gate["reference"]["value"] > 0.2
    assert "hailo_emulation" not in gate["not_evaluated"] and "onnx_int8" in gate["not_evaluated"]
    assert gate["passed"]
    report = (root / "hailo" / "quantization.md").read_text()
    assert "†" in report and "scored by the same scorer" in report


@pytest.mark.slow
def test_contract_a_degraded_yolo_emulation_fails_the_gate(yolo_stages):
    """An emulator whose outputs collapse to 16 levels (what a bad INT8 calibration does to a head):
    its mask mAP falls below the ONNX fp32 baseline by more than the gate allows."""
    root, _data_yaml, _calibration = yolo_stages
    sdk = make_standin_sdk([])
    faithful = sdk.ClientRunner.infer

    def collapsed(self, context, data):
        outputs = []
        for out in faithful(self, context, data):
            low, high = float(out.min()), float(out.max())
            step = (high - low) / 15 or 1.0
            outputs.append((low + np.round((out - low) / step) * step).astype(np.float32))
        return outputs

    sdk.ClientRunner.infer = collapsed
    record, gate = _run_compile_and_gate(root, "hailo_degraded", sdk)
    result = gate["formats"]["hailo_emulation"]
    assert record["emulation"]["value"] < record["emulation"]["baseline"]["value"]
    assert not result["passed"] and result["drop_points"] > 1.0 and result["regressed_classes"]
    assert not gate["passed"] and gate["failed_formats"] == ["hailo_emulation"]
    assert any("Hailo emulation" in message and "classes regressed" in message for message in gate["messages"])


def test_hailo10h_is_a_target_and_needs_the_dfc_5_line(exported, monkeypatch):
    """`compile.hailo.hw_arch: hailo10h`: the stand-in DFC 3.33 is refused before it runs; a DFC 5.2 gets
    `ClientRunner(hw_arch="hailo10h")`, and the status without a DFC names the 5.x wheel."""
    tmp_path, target, calibration = exported
    settings = HailoSettings(hw_arch="hailo10h")
    calls: list = []
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", make_standin_sdk(calls))
    with pytest.raises(StageError, match=r"hailo10h, which needs DFC 5.x, but the installed DFC is 3.33.0"):
        compile_all([(target, calibration)], tmp_path / "hailo", settings)
    assert not calls
    sys.modules["hailo_sdk_client"].__version__ = "5.2.0"
    status = compile_all([(target, calibration)], tmp_path / "hailo", settings)
    assert calls[0] == ("ClientRunner", {"hw_arch": "hailo10h", "har": None})
    assert status["models"]["tiny"]["hailort_version"] == "5.2" and status["hw_arch"] == "hailo10h"
    assert "hailo_dataflow_compiler-5.2.0" in compile_hef.install_hint("hailo10h")
    assert "hailo_dataflow_compiler-3.33.0" in compile_hef.install_hint("hailo8")
