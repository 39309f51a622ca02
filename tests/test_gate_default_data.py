"""The accuracy gate decides something on the default data: a student trained (by the real training code) on
the embedded synthetic IDD passes it after INT8 with the normal calibration set, and the same model quantized
from a calibration set of one black image is rejected, with the drop measured on the synthetic val split.

Everything runs through the CLI on the real config (shrunk: fewer and smaller images, a short schedule), so
the test also covers synth -> convert -> split -> train -> export -> calibrate -> quantize -> gate wiring.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from idd_edge import cli, config

pytestmark = pytest.mark.slow

RUN = "baseline_mnv4s_lraspp"


def _stage(params_path, *argv: str) -> None:
    assert cli.main([*argv, "--params", str(params_path)]) == 0, argv


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A params file whose every output lies in a temp dir, and a student trained on synthetic data there."""
    root = tmp_path_factory.mktemp("gate_default")
    out = root / "artifacts"
    params = config.compose([
        f"synth.out={root / 'synthetic'}", "synth.train=32", "synth.val=12", "synth.test=2",
        f"convert.out={root / 'converted'}", f"convert.report={out / 'convert.json'}",
        f"split.out={root / 'splits'}",
        f"train.out={out / 'seg'}", "train.image_size=[64,128]", "train.baseline.epochs=12",
        "train.baseline.batch_size=8",
        f"export.runs_dir={out / 'seg'}", f"export.models=[{RUN}]", "export.parity_images=2",
        f"export.out={out / 'export'}", f"export.metrics_dir={out / 'reports'}",
        f"calibrate.out={out / 'calib'}", "calibrate.num_images=32", f"calibrate.coverage_plot={out / 'cov.png'}",
        f"quantize.out={out / 'quantize'}",
        f"gate.report={out / 'quantization.md'}", f"gate.metrics={out / 'quantization.json'}",
        f"gate.plots={out / 'plots'}", "gate.formats=[onnx_fp32,onnx_int8]",
    ])
    params_path = root / "params.yaml"
    config.write_params(params, params_path)
    synth = params["synth"]
    assert cli.main(["synth", synth["out"], "--train", "32", "--val", "12", "--test", "2",
                     "--size", f"{synth['width']}x{synth['height']}", "--seed", str(synth["seed"])]) == 0
    assert cli.main(["convert", synth["out"], params["convert"]["out"], "--encoding",
                     params["label_level"]["encoding"], "--report", params["convert"]["report"]]) == 0
    assert cli.main(["split", synth["out"], params["convert"]["out"], params["split"]["out"],
                     "--level", params["label_level"]["name"]]) == 0
    _stage(params_path, "train", "baseline", "--student", "mnv4s_lraspp")
    _stage(params_path, "export", "--run", RUN)
    _stage(params_path, "calibrate")
    return params_path, out


def _gate(params_path, out) -> dict:
    _stage(params_path, "quantize")
    _stage(params_path, "gate")
    return json.loads((out / "quantization.json").read_text())["models"][RUN]


def test_gate_passes_normal_calibration_and_rejects_one_black_image(trained):
    params_path, out = trained
    normal = _gate(params_path, out)
    # the model learned something the gate can lose: otherwise "passes" would mean nothing
    assert normal["reference"]["value"] > 0.15, normal["reference"]
    assert normal["passed"], normal["messages"]
    scored = normal["formats"]["onnx_int8"]["class_delta_points"]
    present = [name for name, iou in normal["reference"]["per_class"].items() if iou is not None]
    assert len(present) >= 8 and all(scored[name] is not None for name in present)  # every class in val is scored

    calib_file = next((out / "calib").glob("*.npy"))
    images = np.load(calib_file)
    np.save(calib_file, np.zeros_like(images[:1]))  # a calibration set of one black frame
    damaged = _gate(params_path, out)
    assert not damaged["passed"] and damaged["failed_formats"] == ["onnx_int8"], damaged["messages"]
    int8 = damaged["formats"]["onnx_int8"]
    assert int8["drop_points"] > normal["formats"]["onnx_int8"]["drop_points"] + 1.0
