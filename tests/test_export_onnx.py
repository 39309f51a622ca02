"""ONNX export: static batch-1 graphs, ONNX Runtime vs PyTorch parity, on-graph argmax, Hailo scan."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from idd_edge.errors import StageError
from idd_edge.export.onnx_export import append_argmax, export_model, export_to_onnx, hailo_nodes, measure_parity
from idd_edge.export.onnx_io import labels_from_output, onnx_session, run_single
from idd_edge_runtime.manifest import sha256_file
from tests.export_support import TinySegNet


def _inputs(count: int, size_hw=(32, 32), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, *size_hw)).astype(np.float32) for _ in range(count)]


def test_export_is_static_batch1_and_checked():
    model = export_to_onnx(TinySegNet(num_classes=5, size_hw=(32, 48)), (32, 48), opset=13)
    (graph_input,) = model.graph.input
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 48]
    assert all(d.HasField("dim_value") for d in graph_input.type.tensor_type.shape.dim)
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == [1, 5, 32, 48]
    assert model.opset_import[0].version == 13
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}  # folded by the exporter/onnxsim
    onnx.checker.check_model(model, full_check=True)


def test_parity_agreement_is_at_least_999_per_mille():
    net = TinySegNet(num_classes=6)
    parity = measure_parity(net, export_to_onnx(net, (32, 32), opset=13), _inputs(4))
    assert parity.images == 4 and parity.pixels == 4 * 32 * 32
    assert parity.argmax_agreement >= 0.999
    assert parity.max_abs_logit_diff < 1e-3


def test_on_graph_argmax_matches_logits_argmax():
    net = TinySegNet(num_classes=6)
    logits_model = export_to_onnx(net, (32, 32), opset=13)
    argmax_model = append_argmax(logits_model)
    batch = _inputs(1)[0]
    logits = run_single(onnx_session(logits_model.SerializeToString()), batch)
    labels = run_single(onnx_session(argmax_model.SerializeToString()), batch)
    assert labels.shape == (1, 1, 32, 32) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels_from_output(labels), logits.argmax(axis=1))
    assert hailo_nodes(argmax_model) == {"start_nodes": ["input"], "end_nodes": ["/head/ArgMax"]}


def test_export_model_writes_onnx_and_record(tmp_path):
    net = TinySegNet(num_classes=4)
    record = export_model(net, "tiny", (32, 32), tmp_path / "tiny", _inputs(3), opset=13, argmax=True,
                          metadata={"role": "semantic"})
    onnx_path = tmp_path / "tiny" / "model.onnx"
    saved = json.loads((tmp_path / "tiny" / "export.json").read_text())
    assert saved == record
    assert record["sha256"] == sha256_file(onnx_path)
    assert record["output"] == {"name": "labels", "kind": "argmax", "shape": [1, 1, 32, 32]}
    assert record["role"] == "semantic" and record["hailo_compat"] == []
    assert record["parity"]["argmax_agreement"] >= 0.999


def test_agreement_below_threshold_fails(tmp_path):
    net = TinySegNet(num_classes=4)
    with pytest.raises(StageError, match="agrees with PyTorch"):
        export_model(net, "tiny", (32, 32), tmp_path, _inputs(1), opset=13, min_argmax_agreement=1.01)
    assert not (tmp_path / "model.onnx").exists()


def test_hailo_blockers_fail_export_unless_warn(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.GELU())
    with pytest.raises(StageError, match="Erf|Gelu"):
        export_model(net, "gelu", (16, 16), tmp_path / "a", _inputs(1, (16, 16)), opset=13)
    record = export_model(net, "gelu", (16, 16), tmp_path / "b", _inputs(1, (16, 16)), opset=13, hailo_compat_mode="warn")
    assert any(f["op_type"] in ("Erf", "Gelu") and f["severity"] == "error" for f in record["hailo_compat"])


def test_dict_output_is_rejected(tmp_path):
    class DictNet(torch.nn.Module):
        def forward(self, x):
            return {"out": x}

    with pytest.raises(StageError, match="one \\(1, C, H, W\\) tensor"):
        export_to_onnx(DictNet(), (16, 16), opset=13)


@pytest.mark.parametrize("arch", ["lraspp", "deeplabv3plus"])
def test_students_export_without_hailo_blockers(arch):
    """The real student architectures (random weights, 64 px) export cleanly, with parity."""
    from idd_edge.export.hailo_compat import errors
    from idd_edge.seg.models import build_model, set_export_mode

    cfg = {"arch": arch, "backbone": "mobilenetv4_conv_small", "pretrained": False, "encoder_depth": 4,
           "encoder_output_stride": 16, "decoder_channels": 32, "decoder_atrous_rates": [12, 24, 36], "head_channels": 16}
    net = set_export_mode(build_model(cfg, num_classes=7, input_size=(64, 64))).eval()
    model = export_to_onnx(net, (64, 64), opset=13)
    from idd_edge.export.hailo_compat import check_hailo_compat

    assert errors(check_hailo_compat(model)) == []
    parity = measure_parity(net, model, _inputs(2, (64, 64)))
    assert parity.argmax_agreement >= 0.999
