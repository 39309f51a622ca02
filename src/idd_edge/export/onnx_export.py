"""ONNX export of the deployable models, checked and compared with PyTorch.

Each model is exported with a static shape (batch 1, the training input size) and the configured opset
by the TorchScript exporter (what the Hailo parser was validated against), checked with the ONNX checker,
simplified with onnxsim (folds the shape arithmetic the Hailo parser cannot follow), optionally ended with
an on-graph ArgMax (the device then receives an (1, 1, H, W) label map), scanned for constructs the
Hailo toolchain rejects, and run by ONNX Runtime next to PyTorch on validation images: the largest
absolute logit difference and the share of pixels whose argmax agrees are recorded in `export.json`.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from idd_edge import atomic
from idd_edge.errors import StageError
from idd_edge.export import hailo_compat
from idd_edge.export.onnx_io import labels_from_output, onnx_session, run_single, sha256_file

log = logging.getLogger(__name__)

INPUT_NAME = "input"
LOGITS_NAME = "logits"
LABELS_NAME = "labels"
COMPAT_MODES = ("error", "warn", "off")


@dataclass
class Parity:
    """ONNX Runtime vs PyTorch on the same inputs."""

    images: int
    pixels: int
    max_abs_logit_diff: float
    argmax_agreement: float  # share of pixels with the same class, 0..1


def export_to_onnx(model: Any, input_hw: tuple[int, int], opset: int, simplify: bool = True) -> onnx.ModelProto:
    """Trace `model` (an nn.Module returning one (1, C, H, W) tensor) into a checked, static ONNX graph."""
    import torch

    model = model.eval()
    dummy = torch.zeros(1, 3, *input_hw)
    with torch.no_grad():
        output = model(dummy)
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        raise StageError(f"the model must return one (1, C, H, W) tensor in export mode, got {_describe(output)}")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which needs onnxscript and
        # emits graphs (opset 18+) newer than the Hailo parser's documented range.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (dummy,), buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=[INPUT_NAME], output_names=[LOGITS_NAME])
    exported = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(exported, full_check=True)
    if simplify:
        import onnxsim

        exported, ok = onnxsim.simplify(exported)
        if not ok:
            raise StageError("onnxsim could not validate the simplified graph against the original")
        onnx.checker.check_model(exported, full_check=True)
    return exported


def append_argmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a logits graph ending in ArgMax over classes: output `labels`, (1, 1, H, W) int64."""
    graph_output = model.graph.output[0]
    dims = [dim.dim_value for dim in graph_output.type.tensor_type.shape.dim]
    with_argmax = onnx.ModelProto()
    with_argmax.CopyFrom(model)
    graph = with_argmax.graph
    graph.node.append(onnx.helper.make_node("ArgMax", [graph_output.name], [LABELS_NAME], name="/head/ArgMax",
                                            axis=1, keepdims=1))
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(LABELS_NAME, onnx.TensorProto.INT64, [dims[0], 1, *dims[2:]]))
    onnx.checker.check_model(with_argmax, full_check=True)
    return with_argmax


def measure_parity(model: Any, onnx_model: onnx.ModelProto, inputs: Iterable[np.ndarray],
                   argmax_model: onnx.ModelProto | None = None) -> Parity:
    """Compare PyTorch with ONNX Runtime on (1, 3, H, W) float32 inputs.

    The logit difference comes from `onnx_model` (logits); the argmax agreement from `argmax_model` when
    given (what the device runs), else from the argmax of `onnx_model`'s logits.
    """
    import torch

    logits_session = onnx_session(onnx_model.SerializeToString())
    labels_session = onnx_session(argmax_model.SerializeToString()) if argmax_model is not None else None
    images = pixels = agreeing = 0
    max_diff = 0.0
    model = model.eval()
    for batch in inputs:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with torch.no_grad():
            reference = model(torch.from_numpy(batch)).numpy()
        logits = run_single(logits_session, batch)
        if logits.shape != reference.shape:
            raise StageError(f"ONNX output shape {logits.shape} differs from PyTorch {reference.shape}")
        max_diff = max(max_diff, float(np.abs(logits - reference).max()))
        labels = labels_from_output(run_single(labels_session, batch) if labels_session else logits)
        expected = reference.argmax(axis=1)
        agreeing += int((labels == expected).sum())
        pixels += expected.size
        images += batch.shape[0]
    if not images:
        raise StageError("no inputs to measure ONNX parity on")
    return Parity(images=images, pixels=pixels, max_abs_logit_diff=max_diff, argmax_agreement=agreeing / pixels)


def hailo_nodes(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Default start/end nodes for `translate_onnx_model`: the graph input and the nodes producing outputs."""
    outputs = {output.name for output in model.graph.output}
    return {
        "start_nodes": [tensor.name for tensor in model.graph.input],
        "end_nodes": [node.name for node in model.graph.node if outputs & set(node.output)],
    }


def compat_findings(model: onnx.ModelProto, name: str, mode: str) -> list[hailo_compat.CompatFinding]:
    """Scan for Hailo problems; in mode "error" any error-level finding stops the stage."""
    if mode not in COMPAT_MODES:
        raise ValueError(f"hailo_compat mode must be one of {COMPAT_MODES}, got {mode!r}")
    if mode == "off":
        return []
    findings = hailo_compat.check_hailo_compat(model)
    for finding in findings:
        log.warning("%s: Hailo compatibility %s", name, finding)
    blocking = hailo_compat.errors(findings)
    if blocking and mode == "error":
        listed = "; ".join(str(finding) for finding in blocking)
        raise StageError(f"{name}: the ONNX graph has constructs the Hailo toolchain rejects: {listed} "
                         "(set export.hailo_compat=warn to export anyway)")
    return findings


def export_model(
    model: Any,
    name: str,
    input_hw: tuple[int, int],
    out_dir: Path,
    parity_inputs: Sequence[np.ndarray],
    *,
    opset: int,
    argmax: bool = False,
    simplify: bool = True,
    min_argmax_agreement: float = 0.999,
    hailo_compat_mode: str = "error",
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export one semantic model to `out_dir/model.onnx` and record `out_dir/export.json`.

    Fails (StageError) when ONNX Runtime agrees with PyTorch on fewer than `min_argmax_agreement` of
    the parity pixels, or (in compat mode "error") when the graph has known Hailo blockers.
    """
    logits_model = export_to_onnx(model, input_hw, opset, simplify)
    final = append_argmax(logits_model) if argmax else logits_model
    findings = compat_findings(final, name, hailo_compat_mode)
    parity = measure_parity(model, logits_model, parity_inputs, final if argmax else None)
    log.info("%s: ONNX parity on %d images: max |logit diff| %.2e, argmax agreement %.5f",
             name, parity.images, parity.max_abs_logit_diff, parity.argmax_agreement)
    if parity.argmax_agreement < min_argmax_agreement:
        raise StageError(f"{name}: ONNX Runtime argmax agrees with PyTorch on {parity.argmax_agreement:.4%} of "
                         f"pixels, below the required {min_argmax_agreement:.4%}")
    onnx_path = out_dir / "model.onnx"
    atomic.write_bytes(onnx_path, final.SerializeToString())
    output = final.graph.output[0]
    record = {
        "name": name,
        **(metadata or {}),
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "opset": opset,
        "simplified": simplify,
        "input": {"name": INPUT_NAME, "shape": [1, 3, *input_hw], "layout": "NCHW", "dtype": "float32"},
        "output": {"name": output.name, "kind": "argmax" if argmax else "logits",
                   "shape": [dim.dim_value for dim in output.type.tensor_type.shape.dim]},
        "hailo": hailo_nodes(final),
        "hailo_compat": [finding.as_dict() for finding in findings],
        "parity": asdict(parity),
    }
    atomic.write_json(out_dir / "export.json", record)
    return record


def _describe(output: Any) -> str:
    if hasattr(output, "shape"):
        return f"a tensor of shape {tuple(output.shape)}"
    return type(output).__name__
