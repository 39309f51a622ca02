"""ONNX Runtime static INT8 quantization (QDQ, per-channel) from the calibration array."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from idd_edge.errors import InputError
from idd_edge.export.onnx_export import export_to_onnx
from idd_edge.export.onnx_io import onnx_session, run_single
from idd_edge.export.quantize import downstream_nodes, end_tensors, load_calibration, quantize_model, to_model_input
from tests.export_support import TinySegNet

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _calibration(count=16, size_hw=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, *size_hw, 3)).astype(np.float32)


def test_to_model_input_normalizes_and_transposes():
    images = _calibration(2, (4, 6))
    batch = to_model_input(images, MEAN, STD)
    assert batch.shape == (2, 3, 4, 6) and batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_allclose(batch[1, 2, 3, 5], (images[1, 3, 5, 2] - MEAN[2]) / STD[2], rtol=1e-6)
    assert to_model_input(images[0], MEAN, STD).shape == (1, 3, 4, 6)


def test_quantized_model_is_qdq_per_channel_and_close_to_fp32(tmp_path):
    fp32 = tmp_path / "model.onnx"
    fp32.write_bytes(export_to_onnx(TinySegNet(num_classes=5), (32, 32), opset=13).SerializeToString())
    summary = quantize_model(fp32, _calibration(), tmp_path / "model_int8.onnx", mean=MEAN, std=STD,
                             end_nodes=[], per_channel=True)
    int8 = onnx.load(str(tmp_path / "model_int8.onnx"))
    ops = [node.op_type for node in int8.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weight_scales = [init for init in int8.graph.initializer if init.name.endswith("_scale") and init.dims and init.dims[0] > 1]
    assert weight_scales, "per-channel weights have one scale per output channel"
    assert summary["calibration_images"] == 16 and summary["format"] == "QDQ" and summary["float_nodes_kept"] == []
    # Same answer as fp32 on most pixels of held-out inputs.
    inputs = to_model_input(_calibration(4, seed=1), MEAN, STD)
    fp32_session, int8_session = onnx_session(fp32), onnx_session(tmp_path / "model_int8.onnx")
    agree = np.mean([
        (run_single(fp32_session, x[None]).argmax(1) == run_single(int8_session, x[None]).argmax(1)).mean() for x in inputs
    ])
    assert agree > 0.9


def test_uint8_calibration_as_stored_gives_the_same_int8_model_as_float32(tmp_path):
    # `idd-edge calibrate` stores uint8 (its values are whole 0-255 pixels); the model must not change.
    fp32 = tmp_path / "model.onnx"
    fp32.write_bytes(export_to_onnx(TinySegNet(num_classes=5), (32, 32), opset=13).SerializeToString())
    calibration = _calibration(8)
    np.save(tmp_path / "calib.npy", calibration.astype(np.uint8))
    stored = load_calibration(tmp_path / "calib.npy", (32, 32))
    assert stored.dtype == np.uint8 and isinstance(stored, np.memmap)
    quantize_model(fp32, calibration, tmp_path / "from_float32.onnx", mean=MEAN, std=STD)
    quantize_model(fp32, stored, tmp_path / "from_uint8.onnx", mean=MEAN, std=STD)
    assert (tmp_path / "from_uint8.onnx").read_bytes() == (tmp_path / "from_float32.onnx").read_bytes()


def _tail_graph() -> onnx.ModelProto:
    """conv -> (end node) -> sigmoid -> mul: the tail after the end node is host work."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="head_conv"),
             helper.make_node("Sigmoid", ["c"], ["s"], name="tail_sigmoid"),
             helper.make_node("Mul", ["s", "c"], ["y"], name="tail_mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_nodes_after_the_end_nodes_stay_float(tmp_path):
    model = _tail_graph()
    assert downstream_nodes(model, end_tensors(model, ["head_conv"])) == ["tail_sigmoid", "tail_mul"]
    path = tmp_path / "tail.onnx"
    path.write_bytes(model.SerializeToString())
    summary = quantize_model(path, _calibration(4, (8, 8)), tmp_path / "tail_int8.onnx", mean=MEAN, std=STD,
                             end_nodes=["head_conv"])
    assert summary["float_nodes_kept"] == ["tail_sigmoid", "tail_mul"]
    int8 = onnx.load(str(tmp_path / "tail_int8.onnx"))
    quantized_tensors = {node.input[0] for node in int8.graph.node if node.op_type == "QuantizeLinear"}
    tail_outputs = {out for node in int8.graph.node if node.op_type in ("Sigmoid", "Mul") for out in node.output}
    assert tail_outputs and not tail_outputs & quantized_tensors  # the tail computes and returns float
    assert "c" in quantized_tensors or any(t.startswith("c") for t in quantized_tensors)  # the head is quantized


def test_unknown_end_node_and_bad_calibration_are_reported(tmp_path):
    with pytest.raises(Exception, match="not in the ONNX graph"):
        end_tensors(_tail_graph(), ["nope"])
    bad = tmp_path / "calib.npy"
    np.save(bad, np.zeros((2, 8, 8, 3), dtype=np.float64))
    with pytest.raises(InputError, match="uint8 or float32, got .* float64"):
        load_calibration(bad, (8, 8))
    with pytest.raises(InputError, match="not found"):
        load_calibration(tmp_path / "missing.npy", (8, 8))
