"""ONNX export of the deployable models, checked and compared with PyTorch.

Each model is exported with a static shape (batch 1, the training input size) and the configured opset
by the TorchScript exporter (what the Hailo parser was validated against), checked with the ONNX checker,
simplified with onnxsim (folds the shape arithmetic the Hailo parser cannot follow), optionally ended with
an on-graph ArgMax (the device then receives an (1, 1, H, W) label map), scanned for constructs the
Hailo toolchain rejects, and run by ONNX Runtime next to PyTorch on validation images: the largest
absolute logit difference and the share of pixels whose argmax agrees are recorded in `export.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from idd_edge import atomic
from idd_edge.errors import InputError, StageError
from idd_edge.export.onnx_io import labels_from_output, onnx_session, run_single
from idd_edge_runtime.formats import ONNX_FP32
from idd_edge_runtime.manifest import sha256_file

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

YOLO_NAME = "yolov8n_seg"
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
    import onnx

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
    import onnx

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


def compat_findings(model: onnx.ModelProto, name: str, mode: str,
                    end_nodes: Sequence[str] | None = None) -> list[Any]:
    """Scan for Hailo problems (up to `end_nodes`); in mode "error" any error-level finding stops the stage."""
    from idd_edge.export import hailo_compat

    if mode not in COMPAT_MODES:
        raise ValueError(f"hailo_compat mode must be one of {COMPAT_MODES}, got {mode!r}")
    if mode == "off":
        return []
    findings = hailo_compat.check_hailo_compat(model, end_nodes)
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
    """Export one semantic model to `out_dir/model.onnx` (`ONNX_FP32.stage_file`) and record `out_dir/export.json`.

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
    onnx_path = out_dir / ONNX_FP32.stage_file
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


def export_semantic_run(run_dir: Path, out_dir: Path, val_dir: Path, level: str, *, opset: int, argmax: bool,
                        simplify: bool, parity_images: int, min_argmax_agreement: float,
                        hailo_compat_mode: str) -> dict[str, Any]:
    """Export one trained run (`model.pt` + `model.json`) with parity measured on validation images."""
    from idd_edge.export.evaluate import validation_dataset
    from idd_edge.seg import load_trained

    model, info = load_trained(run_dir)
    if info["label_level"] != level:
        raise InputError(run_dir / "model.json", f"trained for {info['label_level']}, but the pipeline is at {level}; "
                         "retrain or set label_level")
    size_hw = (int(info["input_size"][0]), int(info["input_size"][1]))
    normalization = info["normalization"]
    # the training code's own validation transform, with the model's own input normalization
    dataset = validation_dataset(val_dir, level, size_hw, normalization)
    parity_inputs = [dataset[i][0][None].numpy() for i in range(min(parity_images, len(dataset)))]
    metadata = {
        "role": "semantic",
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "weights_sha256": sha256_file(run_dir / "model.pt"),
        "model": info["model"].get("name"),
        "label_level": level,
        "class_names": list(info["class_names"]),
        "preprocess": "resize",
        "normalization": {"mean": list(normalization["mean"]), "std": list(normalization["std"])},
    }
    return export_model(model, run_dir.name, size_hw, out_dir, parity_inputs, opset=opset, argmax=argmax,
                        simplify=simplify, min_argmax_agreement=min_argmax_agreement,
                        hailo_compat_mode=hailo_compat_mode, metadata=metadata)


def adopt_yolo_export(yolo_dir: Path, out_dir: Path, name: str, hailo_compat_mode: str,
                      postprocess: Mapping[str, Any]) -> dict[str, Any]:
    """Bring the YOLO branch's ONNX (its own export stage, parity checked there) into the deployment chain:
    copy it, record its input contract, Hailo end nodes and host post-processing settings (`yolo.postprocess`
    over the sidecar's), and scan the on-chip part for blockers."""
    import onnx

    from idd_edge.yolo.export import ONNX_NAME, SIDECAR_NAME

    sidecar_path = yolo_dir / SIDECAR_NAME
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(sidecar_path, "YOLO export not found; run `idd-edge yolo-export` first") from None
    model = onnx.load(str(yolo_dir / ONNX_NAME))
    end_nodes = list(sidecar["hailo_end_nodes"])
    findings = compat_findings(model, name, hailo_compat_mode, end_nodes)
    onnx_path = out_dir / ONNX_FP32.stage_file
    atomic.write_bytes(onnx_path, model.SerializeToString())
    record = {
        "name": name,
        "role": "instance",
        "source": str(yolo_dir / ONNX_NAME),
        "label_level": None,
        "class_names": list(sidecar["classes"]),
        "preprocess": "letterbox",
        "normalization": {"mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]},  # the 1/255 input scale
        "postprocess": {**sidecar["postprocess"], **postprocess},
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "opset": sidecar["opset"],
        "input": {"name": sidecar["input"]["name"], "shape": sidecar["input"]["shape"], "layout": "NCHW", "dtype": "float32"},
        "output": {"name": "output0", "kind": "yolov8-seg", "shape": sidecar["outputs"].get("output0")},
        "hailo": {"start_nodes": [sidecar["input"]["name"]], "end_nodes": end_nodes},
        "hailo_compat": [finding.as_dict() for finding in findings],
        "parity": {"max_relative_diff": sidecar["parity_max_relative_diff"]},
    }
    atomic.write_json(out_dir / "export.json", record)
    return record


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="deployable models -> ONNX (static, parity-checked, Hailo-scanned)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", help="export only this training run (one of export.models); DVC runs one per stage")
    which.add_argument("--yolo", action="store_true", help="only bring in the YOLO branch's ONNX")
    parser.add_argument("--params", default="params.yaml")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from idd_edge import config

    params = config.load_params(args.params)
    cfg = config.section(params, "export", args.params)
    level = config.section(params, "label_level", args.params)
    val_dir = Path(config.section(params, "split.out", args.params)) / level["dir_name"] / "val"
    out_root, runs_dir, metrics_dir = Path(cfg["out"]), Path(cfg["runs_dir"]), Path(cfg["metrics_dir"])
    runs = [] if args.yolo else [args.run] if args.run else list(cfg["models"])
    for run in runs:
        record = export_semantic_run(
            runs_dir / run, out_root / run, val_dir, level["name"], opset=int(cfg["opset"]), argmax=bool(cfg["argmax"]),
            simplify=bool(cfg["simplify"]), parity_images=int(cfg["parity_images"]),
            min_argmax_agreement=float(cfg["min_argmax_agreement"]), hailo_compat_mode=str(cfg["hailo_compat"]),
        )
        _write_metrics(metrics_dir / f"{run}.json", record)
    if args.yolo or not args.run:
        yolo_dir = Path(config.section(params, "yolo.export.out", args.params))
        record = adopt_yolo_export(yolo_dir, out_root / YOLO_NAME, YOLO_NAME, str(cfg["hailo_compat"]),
                                   config.section(params, "yolo.postprocess", args.params))
        _write_metrics(metrics_dir / f"{YOLO_NAME}.json", record)
    return 0


def _write_metrics(path: Path, record: Mapping[str, Any]) -> None:
    """Per-model DVC metrics: ONNX size, parity and the number of Hailo compatibility findings."""
    findings = record["hailo_compat"]
    atomic.write_json(path, {
        "onnx_mb": round(record["bytes"] / 1e6, 3), "parity": record["parity"],
        "hailo_compat_errors": sum(f["severity"] == "error" for f in findings),
        "hailo_compat_warnings": sum(f["severity"] == "warning" for f in findings),
    })
    log.info("%s: exported (%.2f MB), parity %s", record["name"], record["bytes"] / 1e6, record["parity"])
