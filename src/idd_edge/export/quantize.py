"""`idd-edge quantize`: portable INT8 models with ONNX Runtime static quantization.

Always available (no Hailo SDK needed): QDQ format, per-channel weights, activation ranges calibrated on
the same calibration set the Hailo DFC gets (the `.npy` of raw 0-255 NHWC pixels, normalized here the
way the model's input expects). Only the part of the graph that the Hailo chip runs is quantized: nodes
after the Hailo end nodes (e.g. YOLO's box decoding) stay float, as they run on the host there too.
The INT8 model's accuracy is measured by the gate stage with the same evaluator as training.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from idd_edge import atomic
from idd_edge.errors import InputError, StageError
from idd_edge_runtime.formats import ONNX_INT8
from idd_edge_runtime.manifest import sha256_file

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

#: Per-channel DequantizeLinear needs opset 13; older graphs are converted first.
MIN_PER_CHANNEL_OPSET = 13
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")
QUANT_TYPES = ("QInt8", "QUInt8")


def to_model_input(images_nhwc: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Raw 0-255 NHWC pixels -> the NCHW float32 tensor the ONNX model takes: (x - mean) / std per channel
    (mean/std on the 0-255 scale, as in the Hailo model script's `normalization` layer)."""
    images = np.asarray(images_nhwc, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    mean_array = np.asarray(mean, dtype=np.float32).reshape(1, 1, 1, 3)
    std_array = np.asarray(std, dtype=np.float32).reshape(1, 1, 1, 3)
    return np.ascontiguousarray(((images - mean_array) / std_array).transpose(0, 3, 1, 2))


class NpyCalibrationReader:
    """ONNX Runtime CalibrationDataReader over a calibration `.npy` (memory-mapped, one image per batch)."""

    def __init__(self, images_nhwc: np.ndarray, input_name: str, mean: Sequence[float], std: Sequence[float]):
        self.images, self.input_name, self.mean, self.std = images_nhwc, input_name, mean, std
        self._progress = tqdm(total=len(images_nhwc), desc="calibrating activations", leave=False)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.images):
            self._progress.close()
            return None
        batch = to_model_input(self.images[self._next], self.mean, self.std)
        self._next += 1
        self._progress.update(1)
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._next = 0


def end_tensors(model: onnx.ModelProto, end_nodes: Sequence[str]) -> set[str]:
    """Output tensor names of the Hailo end nodes (tensor names survive graph optimisation; node names may not)."""
    by_name = {node.name: node for node in model.graph.node}
    missing = [name for name in end_nodes if name not in by_name]
    if missing:
        raise StageError(f"end nodes {missing} are not in the ONNX graph")
    return {tensor for name in end_nodes for tensor in by_name[name].output}


def downstream_nodes(model: onnx.ModelProto, tensors: set[str]) -> list[str]:
    """Names of the nodes fed (directly or not) by `tensors`: the host-side tail after the end nodes."""
    frontier = set(tensors)
    tail: list[str] = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if frontier & set(node.input):
            tail.append(node.name)
            frontier.update(node.output)
    return tail


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _copy_metadata(source: Any, target: Any) -> None:
    """Carry the fp32 model's metadata (e.g. Ultralytics' names/stride/imgsz) over to the INT8 model."""
    present = {prop.key for prop in target.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in present:
            target.metadata_props.add(key=prop.key, value=prop.value)


#: Calibration arrays: uint8 as `idd-edge calibrate` writes them; float32 as it wrote them before.
CALIBRATION_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))


def load_calibration(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    """Memory-map a calibration array and check it is (N, H, W, 3) raw 0-255 pixels (uint8; float32 is
    read too). Consumers convert one image or batch at a time to float32 (`to_model_input`)."""
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, "calibration array not found; run `idd-edge calibrate`") from None
    except ValueError as exc:
        raise InputError(path, f"not a calibration array: {exc}") from None
    if images.ndim != 4 or images.shape[1:] != (*size_hw, 3) or images.dtype not in CALIBRATION_DTYPES or not len(images):
        raise InputError(path, f"expected (N, {size_hw[0]}, {size_hw[1]}, 3) uint8 or float32, got {images.shape} {images.dtype}")
    return images


def quantize_model(
    fp32_path: Path,
    calibration: np.ndarray,
    out_path: Path,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    end_nodes: Sequence[str] = (),
    per_channel: bool = True,
    activation_type: str = "QInt8",
    weight_type: str = "QInt8",
    calibrate_method: str = "MinMax",
) -> dict[str, Any]:
    """Statically quantize `fp32_path` to QDQ INT8 at `out_path`; returns what was done (for the record)."""
    import onnx

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibrate_method not in CALIBRATION_METHODS:
        raise InputError(None, f"quantize.calibrate_method must be one of {CALIBRATION_METHODS}, got {calibrate_method!r}")
    for name, value in (("activation_type", activation_type), ("weight_type", weight_type)):
        if value not in QUANT_TYPES:
            raise InputError(None, f"quantize.{name} must be one of {QUANT_TYPES}, got {value!r}")
    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    tail_tensors = end_tensors(model, end_nodes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=out_path.parent if out_path.parent.exists() else None) as tmp:
        source, prepared, quantized = Path(tmp) / "source.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        if per_channel and opset < MIN_PER_CHANNEL_OPSET:
            # Per-channel DequantizeLinear (its `axis`) exists from opset 13; the seed's YOLO export is opset 11.
            from onnx import version_converter

            onnx.save(version_converter.convert_version(model, MIN_PER_CHANNEL_OPSET), str(source))
        else:
            source = fp32_path
        # Shape inference + graph optimisation first, as ONNX Runtime recommends for static quantization.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        excluded = downstream_nodes(onnx.load(str(prepared)), tail_tensors)
        with _quiet_root_logger():  # ORT logs every per-channel scale adjustment at INFO on the root logger
            quantize_static(
                str(prepared), str(quantized), NpyCalibrationReader(calibration, input_name, mean, std),
                quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=getattr(QuantType, activation_type), weight_type=getattr(QuantType, weight_type),
                calibrate_method=getattr(CalibrationMethod, calibrate_method), nodes_to_exclude=excluded,
                # No CalibMaxIntermediateOutputs: in ORT 1.31 MinMax drops (not merges) the chunks it clears.
                # MinMax keeps only per-image ReduceMin/ReduceMax scalars, so memory stays small anyway.
            )
        int8 = onnx.load(str(quantized))
        onnx.checker.check_model(int8)
        _copy_metadata(model, int8)
        atomic.write_bytes(out_path, int8.SerializeToString())
    return {
        "file": out_path.name,
        "sha256": sha256_file(out_path),
        "bytes": out_path.stat().st_size,
        "source": str(fp32_path),
        "source_bytes": fp32_path.stat().st_size,
        "format": "QDQ",
        "per_channel": per_channel,
        "activation_type": activation_type,
        "weight_type": weight_type,
        "calibrate_method": calibrate_method,
        "calibration_images": int(len(calibration)),
        "opset": max(opset, MIN_PER_CHANNEL_OPSET) if per_channel else opset,
        "float_nodes_kept": excluded,
    }


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quantize", help="INT8 ONNX models (ONNX Runtime static QDQ quantization)")
    parser.add_argument("--params", default="params.yaml")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from idd_edge import config
    from idd_edge.export import preprocessing

    params = config.load_params(args.params)
    cfg = config.section(params, "quantize", args.params)
    exports = preprocessing.load_exports(Path(config.section(params, "export.out", args.params)))
    calib_dir = Path(config.section(params, "calibrate.out", args.params))
    out_root = Path(cfg["out"])
    for record in exports:
        key, size_hw = preprocessing.calibration_key(record), preprocessing.input_hw(record)
        calibration = load_calibration(calib_dir / f"{key}.npy", size_hw)
        out_dir = out_root / record["name"]
        out_dir.mkdir(parents=True, exist_ok=True)
        normalization = record["normalization"]
        log.info("%s: quantizing with %d calibration images", record["name"], len(calibration))
        summary = quantize_model(
            Path(record["path"]), calibration, out_dir / ONNX_INT8.stage_file,
            mean=normalization["mean"], std=normalization["std"], end_nodes=record["hailo"]["end_nodes"],
            per_channel=bool(cfg["per_channel"]), activation_type=cfg["activation_type"],
            weight_type=cfg["weight_type"], calibrate_method=cfg["calibrate_method"],
        )
        atomic.write_json(out_dir / "quantize.json", {"name": record["name"], **summary})
        log.info("%s: INT8 model %.2f MB (fp32 %.2f MB)", record["name"], summary["bytes"] / 1e6, summary["source_bytes"] / 1e6)
    return 0
