"""yolo-export: static opset-11 ONNX without NMS, simplified, ONNX Runtime == PyTorch, sidecar contract."""

from __future__ import annotations

import json

import numpy as np
import pytest

from idd_edge import config
from idd_edge.cli import main
from idd_edge.errors import InputError
from idd_edge.yolo.export import ExportSettings, export
from tests.yolo_fixtures import EXPORT_IMGSZ, NUM_CLASSES, build_model, exported_model, save_checkpoint, street_image


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_model(tmp_path_factory.getbasetemp() / "yolo_models")


def test_graph_is_static_opset_11_without_nms(exported):
    import onnx

    _, out = exported
    graph = onnx.load(out / "yolov8n_seg.onnx")
    assert {o.domain: o.version for o in graph.opset_import}[""] == 11
    def dims(value) -> list:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]

    assert [dims(i) for i in graph.graph.input] == [[1, 3, EXPORT_IMGSZ, EXPORT_IMGSZ]]
    anchors = sum((EXPORT_IMGSZ // s) ** 2 for s in (8, 16, 32))
    assert {o.name: dims(o) for o in graph.graph.output} == {
        "output0": [1, 4 + NUM_CLASSES + 32, anchors],
        "output1": [1, 32, EXPORT_IMGSZ // 4, EXPORT_IMGSZ // 4],
    }
    op_types = {node.op_type for node in graph.graph.node}
    assert not op_types & {"NonMaxSuppression", "TopK"}
    assert "Identity" not in op_types  # onnxsim folded the export's leftovers


def test_onnx_runtime_matches_pytorch(exported):
    import cv2
    import onnxruntime as ort
    import torch
    from ultralytics.nn.tasks import load_checkpoint

    checkpoint, out = exported
    model, _ = load_checkpoint(checkpoint)
    canvas = cv2.resize(street_image(), (EXPORT_IMGSZ, EXPORT_IMGSZ))
    tensor = canvas[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    with torch.no_grad():
        (prediction, protos), _ = model.float().eval()(torch.from_numpy(tensor.copy()))
    session = ort.InferenceSession(str(out / "yolov8n_seg.onnx"), providers=["CPUExecutionProvider"])
    output0, output1 = session.run(["output0", "output1"], {"images": tensor})
    np.testing.assert_allclose(output0, prediction.numpy(), rtol=1e-4, atol=1e-3)  # boxes in pixels, scores in [0, 1]
    np.testing.assert_allclose(output1, protos.numpy(), rtol=1e-4, atol=1e-4)


def test_sidecar_records_the_contract(exported):
    checkpoint, out = exported
    sidecar = json.loads((out / "yolov8n_seg.json").read_text())
    assert sidecar["classes"] == [f"class_{i}" for i in range(NUM_CLASSES)]
    assert sidecar["input"]["shape"] == [1, 3, EXPORT_IMGSZ, EXPORT_IMGSZ] and sidecar["input"]["color"] == "RGB"
    assert sidecar["postprocess"]["reg_max"] == 16 and sidecar["postprocess"]["mask_dim"] == 32
    assert max(sidecar["parity_max_relative_diff"].values()) < 1e-4
    assert len(sidecar["hailo_end_nodes"]) == 10 and "/model.22/proto/cv3/act/Mul" in sidecar["hailo_end_nodes"]
    assert not list(checkpoint.parent.glob("*.onnx"))  # nothing written beside the weights


def test_cli_exports_with_the_composed_config(tmp_path):
    weights = save_checkpoint(build_model(seed=1), tmp_path / "train" / "weights" / "best.pt")
    config.write_params(config.compose(["yolo.export.imgsz=64"]), tmp_path / "params.yaml")
    out = tmp_path / "export"
    assert main(["yolo-export", str(weights), str(out), "--params", str(tmp_path / "params.yaml")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["yolov8n_seg.json", "yolov8n_seg.onnx"]
    sidecar = json.loads((out / "yolov8n_seg.json").read_text())
    assert sidecar["opset"] == 11 and sidecar["postprocess"]["conf_threshold"] == 0.5
    assert not list(tmp_path.glob(".export*")) and not list(tmp_path.glob(".yolo-export-*"))


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(InputError, match="yolo-train") as info:
        export(tmp_path / "best.pt", tmp_path / "export", ExportSettings(64, 11, 1e-4), {})
    assert info.value.path == str(tmp_path / "best.pt")
