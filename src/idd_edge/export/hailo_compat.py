"""Static check of an ONNX graph for constructs the Hailo Dataflow Compiler is known to reject.

The DFC is closed source and not installable here, so its parser cannot be asked directly; instead the
export stage scans the graph for the problems that projects (the seed among them) and forum threads ran
into, so they surface at export time instead of hours later at compile time:

* activation ops the seed had to replace: hard-sigmoid / hard-swish (as ops or as the decomposed
  `Add(+3) -> Clip(0, 6) -> Div(6)` pattern), GELU / Erf;
* shapes computed at run time: dynamic or non-batch-1 inputs, Resize whose scales/sizes are not
  constants, Reshape whose target shape is not a constant, leftover `Shape` ops;
* data-dependent control flow and outputs (Loop, If, Scan, NonZero, NonMaxSuppression);
* reshape / transpose patterns outside the 4-D NHWC tensors the chip works on (moving the batch axis is
  an error; rank > 4 and general transposes are warnings, since only some patterns are recognised).

The list is not exhaustive: an empty report means "none of the known problems", not "will compile".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

ERROR = "error"
WARNING = "warning"

#: Ops the Hailo parser rejects (or that the seed had to remove before compiling), with the fix.
UNSUPPORTED_OPS: dict[str, str] = {
    "HardSigmoid": "hard-sigmoid is not supported by the Hailo parser; use Sigmoid (the seed's Hailo LR-ASPP did)",
    "HardSwish": "hard-swish is not supported by the Hailo parser; use x * sigmoid(x) (SiLU) or ReLU",
    "Gelu": "GELU is not supported by the Hailo parser; use ReLU/SiLU in deployable models",
    "Erf": "Erf (exact GELU) is not supported by the Hailo parser; use ReLU/SiLU in deployable models",
    "Loop": "control flow (Loop) cannot be compiled; unroll it at export time",
    "If": "control flow (If) cannot be compiled; trace one branch at export time",
    "Scan": "control flow (Scan) cannot be compiled",
    "NonZero": "data-dependent output shape (NonZero) cannot be compiled; move it to host post-processing",
    "NonMaxSuppression": "NMS must run on the host: end the graph before it (as the Hailo YOLO recipes do)",
}


@dataclass(frozen=True)
class CompatFinding:
    """One construct in the graph that the Hailo toolchain is known to reject (error) or often rejects."""

    node: str
    op_type: str
    severity: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.severity}: {self.op_type} node {self.node!r}: {self.problem}"


def check_hailo_compat(model: onnx.ModelProto, end_nodes: Iterable[str] | None = None) -> list[CompatFinding]:
    """All known Hailo compatibility problems of `model` (errors first, then warnings, in graph order).

    With `end_nodes`, only the part of the graph the chip runs is scanned (the end nodes and everything
    they depend on); what follows them (e.g. YOLO box decoding) runs on the host.
    """
    graph = model.graph
    on_chip = _ancestors(graph, set(end_nodes)) if end_nodes is not None else None
    constants = _constant_values(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is a helper here; the checks degrade gracefully
        inferred = model
    ranks = _tensor_ranks(inferred.graph)
    producers = {output: node for node in graph.node for output in node.output}

    findings = list(_input_findings(graph))
    for index, node in enumerate(graph.node):
        name = node.name or f"#{index}"
        if on_chip is not None and name not in on_chip:
            continue
        if node.op_type in UNSUPPORTED_OPS:
            findings.append(CompatFinding(name, node.op_type, ERROR, UNSUPPORTED_OPS[node.op_type]))
        elif node.op_type in ("Resize", "Upsample"):
            findings.extend(_resize_findings(node, name, constants))
        elif node.op_type == "Reshape":
            findings.extend(_reshape_findings(node, name, constants, ranks))
        elif node.op_type == "Transpose":
            findings.extend(_transpose_findings(node, name))
        elif node.op_type == "Shape":
            findings.append(CompatFinding(name, "Shape", WARNING,
                                          "shape computed at run time; export with static shapes and simplify (onnxsim)"))
        elif node.op_type == "Clip" and _is_decomposed_hard_sigmoid(node, constants, producers):
            findings.append(CompatFinding(name, "Clip", ERROR,
                                          "decomposed hard-sigmoid/hard-swish (Add +3, Clip 0..6, /6); use Sigmoid/SiLU"))
    return sorted(findings, key=lambda finding: finding.severity != ERROR)


def _ancestors(graph: onnx.GraphProto, end_nodes: set[str]) -> set[str]:
    """Names of `end_nodes` and of every node they depend on."""
    missing = end_nodes - {node.name for node in graph.node}
    if missing:
        raise ValueError(f"end nodes {sorted(missing)} are not in the graph")
    producers = {output: node for node in graph.node for output in node.output}
    keep: set[str] = set()
    stack = [node for node in graph.node if node.name in end_nodes]
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep.add(node.name)
        stack.extend(producers[tensor] for tensor in node.input if tensor in producers)
    return keep


def errors(findings: Iterable[CompatFinding]) -> list[CompatFinding]:
    return [finding for finding in findings if finding.severity == ERROR]


def _input_findings(graph: onnx.GraphProto) -> Iterable[CompatFinding]:
    initializers = {init.name for init in graph.initializer}
    for tensor in graph.input:
        if tensor.name in initializers:
            continue
        dims = tensor.type.tensor_type.shape.dim
        static = [dim.dim_value if dim.HasField("dim_value") else None for dim in dims]
        if any(value is None for value in static):
            yield CompatFinding(tensor.name, "input", ERROR,
                                f"dynamic input shape {_shape_text(dims)}; export with a static shape")
        elif len(static) != 4 or static[0] != 1:
            yield CompatFinding(tensor.name, "input", ERROR, f"input shape {static}: the chip takes one 4-D NCHW image (batch 1)")


def _resize_findings(node: onnx.NodeProto, name: str, constants: dict[str, np.ndarray]) -> Iterable[CompatFinding]:
    # Resize(X, roi, scales, sizes) since opset 11; Resize(X, scales) in opset 10 and Upsample(X, scales):
    # every size-determining input must be constant.
    size_inputs = node.input[1:] if node.op_type == "Upsample" or len(node.input) == 2 else node.input[2:4]
    if any(tensor and tensor not in constants for tensor in size_inputs):
        yield CompatFinding(name, node.op_type, ERROR,
                            "dynamic resize (scales/sizes computed at run time); use fixed interpolation sizes")
    mode = _attribute(node, "mode", b"nearest")
    if mode not in (b"nearest", b"linear", b"bilinear"):
        yield CompatFinding(name, node.op_type, WARNING,
                            f"resize mode {mode.decode()!r}; the Hailo resize layer does nearest and bilinear")


def _reshape_findings(node: onnx.NodeProto, name: str, constants: dict[str, np.ndarray],
                      ranks: dict[str, int]) -> Iterable[CompatFinding]:
    shape = constants.get(node.input[1]) if len(node.input) > 1 else None
    if shape is None:
        yield CompatFinding(name, "Reshape", ERROR, "dynamic reshape (target shape computed at run time)")
        return
    shape = shape.astype(np.int64).reshape(-1)
    if shape.size and shape[0] not in (0, 1):  # 0 copies the input's batch dim, which is 1
        yield CompatFinding(name, "Reshape", ERROR,
                            f"reshape to {shape.tolist()} changes the batch axis; the chip keeps batch 1")
    rank = max(shape.size, ranks.get(node.input[0], 0))
    if rank > 4:
        yield CompatFinding(name, "Reshape", WARNING,
                            f"reshape through a rank-{rank} tensor; only some such patterns (channel shuffle) parse")


def _transpose_findings(node: onnx.NodeProto, name: str) -> Iterable[CompatFinding]:
    perm = [int(axis) for axis in _attribute(node, "perm", [])]
    if perm and perm[0] != 0:
        yield CompatFinding(name, "Transpose", ERROR, f"transpose {perm} moves the batch axis")
    elif len(perm) > 4:
        yield CompatFinding(name, "Transpose", WARNING, f"rank-{len(perm)} transpose {perm}; the chip works on 4-D tensors")
    else:
        yield CompatFinding(name, "Transpose", WARNING,
                            f"transpose {perm or 'reversed'}: only some transposes are supported; check the parser log")


def _is_decomposed_hard_sigmoid(clip: onnx.NodeProto, constants: dict[str, np.ndarray],
                                producers: dict[str, onnx.NodeProto]) -> bool:
    """Clip(0, 6) fed by Add(x, 3): the pattern older exporters emit for hard-sigmoid / hard-swish.
    (Clip(0, 6) alone is ReLU6, which Hailo supports.)"""
    low = constants.get(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else None
    high = constants.get(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
    low_value = float(low.reshape(-1)[0]) if low is not None else _attribute(clip, "min", None)
    high_value = float(high.reshape(-1)[0]) if high is not None else _attribute(clip, "max", None)
    if low_value != 0.0 or high_value != 6.0:
        return False
    source = producers.get(clip.input[0])
    if source is None or source.op_type != "Add":
        return False
    return any(
        tensor in constants and constants[tensor].size == 1 and float(constants[tensor].reshape(-1)[0]) == 3.0
        for tensor in source.input
    )


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Tensors whose value is fixed in the graph: initializers and outputs of Constant nodes."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
                elif attribute.name in ("value_float", "value_int"):
                    values[node.output[0]] = np.asarray(onnx.helper.get_attribute_value(attribute))
                elif attribute.name in ("value_floats", "value_ints"):
                    values[node.output[0]] = np.asarray(list(onnx.helper.get_attribute_value(attribute)))
    return values


def _tensor_ranks(graph: onnx.GraphProto) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
    return ranks


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _shape_text(dims) -> str:
    return "[" + ", ".join(str(dim.dim_value) if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in dims) + "]"
