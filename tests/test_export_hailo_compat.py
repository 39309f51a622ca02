"""The Hailo compatibility scan flags known blockers and leaves deployable graphs alone."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from idd_edge.export.hailo_compat import ERROR, WARNING, check_hailo_compat
from idd_edge.export.onnx_export import export_to_onnx
from tests.export_support import TinySegNet


def _graph(nodes, inputs=None, initializers=(), output_shape=(1, 4, 8, 8)) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])]
    output = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs, [output], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _const(name: str, values, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _kinds(findings):
    return {(f.op_type, f.severity) for f in findings}


def test_clean_conv_net_has_no_findings():
    model = export_to_onnx(TinySegNet(num_classes=3), (32, 32), opset=13)
    assert check_hailo_compat(model) == []


def test_hard_swish_gelu_and_erf_are_errors():
    for op in ("HardSwish", "HardSigmoid", "Gelu", "Erf"):
        findings = check_hailo_compat(_graph([helper.make_node(op, ["x"], ["y"], name="act")]))
        assert _kinds(findings) == {(op, ERROR)}, op
        assert findings[0].node == "act"


def test_torch_hardswish_export_is_caught():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Hardswish())
    for opset in (13, 17):  # HardSigmoid+Mul below opset 14, HardSwish from 14
        findings = check_hailo_compat(export_to_onnx(net, (16, 16), opset=opset))
        assert any(f.severity == ERROR and f.op_type in ("HardSwish", "HardSigmoid") for f in findings)


def test_decomposed_hard_sigmoid_is_an_error_but_relu6_is_not():
    add = helper.make_node("Add", ["x", "three"], ["a"], name="add3")
    clip = helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip06")
    div = helper.make_node("Div", ["c", "six"], ["y"], name="div6")
    consts = [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0)]
    findings = check_hailo_compat(_graph([add, clip, div], initializers=consts))
    assert _kinds(findings) == {("Clip", ERROR)}
    relu6 = helper.make_node("Clip", ["x", "zero", "six"], ["y"], name="relu6")
    assert check_hailo_compat(_graph([relu6], initializers=consts[1:])) == []


def test_dynamic_resize_is_an_error_constant_resize_is_not():
    shape = helper.make_node("Shape", ["x"], ["s"], name="shape")
    cast = helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT, name="cast")
    scales = helper.make_node("Div", ["sf", "sf"], ["scales"], name="scales")
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", name="up")
    findings = check_hailo_compat(_graph([shape, cast, scales, resize]))
    assert ("Resize", ERROR) in _kinds(findings)
    assert ("Shape", WARNING) in _kinds(findings)
    fixed = helper.make_node("Resize", ["x", "", "k"], ["y"], mode="linear", name="up")
    assert check_hailo_compat(_graph([fixed], initializers=[_const("k", [1, 1, 2, 2])])) == []


def test_reshape_rules():
    dynamic = check_hailo_compat(_graph([helper.make_node("Shape", ["x"], ["s"]),
                                         helper.make_node("Reshape", ["x", "s"], ["y"], name="r")]))
    assert ("Reshape", ERROR) in _kinds(dynamic)
    batch = check_hailo_compat(_graph([helper.make_node("Reshape", ["x", "t"], ["y"], name="r")],
                                      initializers=[_const("t", [4, 1, 8, 8], np.int64)]))
    assert _kinds(batch) == {("Reshape", ERROR)}
    rank5 = check_hailo_compat(_graph([helper.make_node("Reshape", ["x", "t"], ["y"], name="r")],
                                      initializers=[_const("t", [1, 2, 2, 8, 8], np.int64)]))
    assert _kinds(rank5) == {("Reshape", WARNING)}
    plain = check_hailo_compat(_graph([helper.make_node("Reshape", ["x", "t"], ["y"], name="r")],
                                      initializers=[_const("t", [1, 4, 64, 1], np.int64)]))
    assert plain == []


def test_transpose_rules():
    batch_axis = check_hailo_compat(_graph([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0, 2, 3])]))
    assert _kinds(batch_axis) == {("Transpose", ERROR)}
    nhwc = check_hailo_compat(_graph([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])]))
    assert _kinds(nhwc) == {("Transpose", WARNING)}


def test_dynamic_or_batched_inputs_are_errors():
    dynamic = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])]
    assert _kinds(check_hailo_compat(_graph([helper.make_node("Relu", ["x"], ["y"])], inputs=dynamic))) == {("input", ERROR)}
    batched = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])]
    assert _kinds(check_hailo_compat(_graph([helper.make_node("Relu", ["x"], ["y"])], inputs=batched))) == {("input", ERROR)}


def test_errors_come_before_warnings():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), helper.make_node("Erf", ["t"], ["y"])]
    severities = [f.severity for f in check_hailo_compat(_graph(nodes))]
    assert severities == [ERROR, WARNING]


def test_only_the_part_before_the_end_nodes_is_scanned():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="head"), helper.make_node("Erf", ["r"], ["y"], name="host_tail")]
    assert _kinds(check_hailo_compat(_graph(nodes))) == {("Erf", ERROR)}
    assert check_hailo_compat(_graph(nodes), end_nodes=["head"]) == []
