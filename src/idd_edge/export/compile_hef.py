"""`idd-edge compile-hef`: Hailo HEF files with the Dataflow Compiler (DFC), when it is installed.

Per model: `ClientRunner(hw_arch)` -> `translate_onnx_model` (start/end nodes from the export record; for
YOLOv8n-seg the head convs and the prototype output, as in Hailo's Model Zoo) -> model script generated
from the config (normalization, YOLO class sigmoids, optimization/compression level, calibset size) ->
`optimize(calibration)` -> integer emulation (`SDK_QUANTIZED`) scored on validation -> `compile()`.
Emulation scores: semantic models, mIoU with the gate's evaluator; YOLOv8n-seg, mask mAP of the
emulator's ten head tensors by the host scorer (`evaluate_yolo`, the device's decoder), recorded with
the exported ONNX fp32 scored by that same scorer on the same images (the gate's baseline for it).
Kept per model: parsed/optimized/compiled HAR, the model script, the compile log, the HEF, and
`compile.json` (DFC version, hw_arch, HEF size, FPS estimate when the compiler reports one, emulation
scores, the optimization level the DFC actually applied).

The DFC is proprietary and not on PyPI. Without it the stage still finishes: it writes the model scripts
and a status saying that no HEF was built, why, and how to install the DFC (`compile.hailo.require:
true` makes that an error instead). Nothing is ever estimated in place of a HEF or an emulation score.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from idd_edge import atomic
from idd_edge.errors import InputError, StageError
from idd_edge.export.quantize import CALIBRATION_DTYPES
from idd_edge_runtime.formats import HEF, ONNX_FP32
from idd_edge_runtime.manifest import DFC_MAJOR_FOR_ARCH, DFC_TO_HAILORT, HW_ARCHES, sha256_file

log = logging.getLogger(__name__)

DFC_MODULE = "hailo_sdk_client"
# The DFC/HailoRT pairs and hw_arch names are the runtime's (its manifest checks them on the device).


def newest_dfc(major: int) -> str:
    """The newest DFC (major.minor) of one line in the runtime's table: 3 for Hailo-8/8L, 5 for Hailo-10H."""
    line = [version for version in DFC_TO_HAILORT if int(version.split(".")[0]) == major]
    return max(line, key=lambda version: tuple(int(part) for part in version.split(".")))


#: How the install hint names the chips a DFC line serves.
CHIP_FAMILY = {"hailo8": "Hailo-8/8L", "hailo8l": "Hailo-8/8L", "hailo10h": "Hailo-10H"}


def install_hint(hw_arch: str = "hailo8") -> str:
    dfc = newest_dfc(DFC_MAJOR_FOR_ARCH[hw_arch])
    return (
        "the Hailo Dataflow Compiler (DFC, Python package hailo_sdk_client) is not installed. It is not on PyPI: "
        f"download hailo_dataflow_compiler-{dfc}.0-py3-none-linux_x86_64.whl (the newest DFC for {CHIP_FAMILY[hw_arch]}, "
        f"pairs with HailoRT {DFC_TO_HAILORT[dfc]}) from the Hailo Developer Zone (free registration), "
        "`pip install` it into this environment (x86_64 Linux, Ubuntu 22.04/24.04, Python 3.10-3.12, 16 GB RAM; a GPU "
        "is optional), then run `dvc repro --force compile_hef` (DVC does not notice a newly installed DFC)"
    )


#: Hailo archives the compile stage keeps next to the HEF, by DFC step.
HAR_FILES = {"parsed": "parsed.har", "optimized": "optimized.har", "compiled": "compiled.har"}


@dataclass(frozen=True)
class HailoSettings:
    """The `compile.hailo` config: target and optimisation of the DFC."""

    hw_arch: str = "hailo8"
    optimization_level: int = 2
    compression_level: int = 0
    calib_batch_size: int = 1
    require: bool = False
    emulation_images: int | None = None
    extra_script_lines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.hw_arch not in HW_ARCHES:
            raise InputError(None, f"compile.hailo.hw_arch must be one of {HW_ARCHES}, got {self.hw_arch!r}")
        if not 0 <= self.optimization_level <= 4:
            raise InputError(None, f"compile.hailo.optimization_level must be 0..4, got {self.optimization_level}")
        if not 0 <= self.compression_level <= 5:
            raise InputError(None, f"compile.hailo.compression_level must be 0..5, got {self.compression_level}")


@dataclass(frozen=True)
class ModelTarget:
    """One model to compile: its ONNX, nodes and the model-script specifics of its role."""

    name: str
    onnx_path: Path
    input_hw: tuple[int, int]
    start_nodes: tuple[str, ...]
    end_nodes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sigmoid_layers: tuple[str, ...] = field(default=())


def dfc_available() -> bool:
    return importlib.util.find_spec(DFC_MODULE) is not None


def model_script(target: ModelTarget, settings: HailoSettings, calibset_size: int) -> str:
    """The `.alls` model script: on-chip normalization of raw 0-255 input, output activations, optimisation."""
    lines = [f"normalization1 = normalization({_floats(target.mean)}, {_floats(target.std)})"]
    lines += [f"change_output_activation({layer}, sigmoid)" for layer in target.sigmoid_layers]
    lines.append(f"model_optimization_config(calibration, batch_size={settings.calib_batch_size}, "
                 f"calibset_size={calibset_size})")
    lines.append(f"model_optimization_flavor(optimization_level={settings.optimization_level}, "
                 f"compression_level={settings.compression_level})")
    lines += list(settings.extra_script_lines)
    return "\n".join(lines) + "\n"


def _floats(values: Sequence[float]) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def check_dfc_line(dfc_version: str | None, hw_arch: str) -> None:
    """A DFC compiles for one line of chips only (3.x: Hailo-8/8L, 5.x: Hailo-10H): say so before it fails."""
    match = re.match(r"(\d+)\.", dfc_version or "")
    wanted = DFC_MAJOR_FOR_ARCH[hw_arch]
    if match and int(match.group(1)) != wanted:
        raise StageError(f"compile.hailo.hw_arch is {hw_arch}, which needs DFC {wanted}.x, but the installed DFC is "
                         f"{dfc_version}: {install_hint(hw_arch)}")


def hailort_for(dfc_version: str | None) -> str | None:
    """The HailoRT version a DFC version pairs with (None when unknown)."""
    if not dfc_version:
        return None
    match = re.match(r"(\d+)\.(\d+)", dfc_version)
    return DFC_TO_HAILORT.get(f"{match.group(1)}.{match.group(2)}") if match else None


_FPS = re.compile(r"(\d+(?:\.\d+)?)\s*FPS|FPS\D{0,20}?(\d+(?:\.\d+)?)", re.IGNORECASE)
_LEVEL_REDUCED = re.compile(r"optimization level to (\d)", re.IGNORECASE)


def parse_compile_log(text: str) -> dict[str, Any]:
    """FPS figures the compiler reported (each with its log line; the last one is the estimate) and the
    optimization level the DFC says it reduced to, if it did."""
    reports = []
    for line in text.splitlines():
        match = _FPS.search(line)
        if match:
            reports.append({"fps": float(match.group(1) or match.group(2)), "line": line.strip()})
    reduced = _LEVEL_REDUCED.findall(text)
    return {
        "fps_estimate": reports[-1]["fps"] if reports else None,
        "fps_reports": reports,
        "optimization_level_reduced_to": int(reduced[-1]) if reduced else None,
    }


@contextlib.contextmanager
def captured_output(log_path: Path) -> Iterator[None]:
    """Send everything written to stdout/stderr (Python and the DFC's native code) to `log_path` as well.

    File-descriptor level, because the compiler's allocator prints from C++; the text is echoed to the
    real stderr afterwards so the user still sees it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for fd in (1, 2):
            os.dup2(sink.fileno(), fd)
        # Python-level streams too: they need not write to fds 1/2 (e.g. under pytest's capture).
        text_sink = open(sink.fileno(), "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
        try:
            with contextlib.redirect_stdout(text_sink), contextlib.redirect_stderr(text_sink):
                yield
        finally:
            text_sink.close()  # flushes; closefd=False leaves the sink open
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = sink.read()
            atomic.write_bytes(log_path, text)
            sys.stderr.write(text.decode("utf-8", errors="replace"))


def compile_model(
    target: ModelTarget,
    calibration: np.ndarray,
    out_dir: Path,
    settings: HailoSettings,
    evaluate: Callable[[Callable[[np.ndarray], np.ndarray]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the DFC flow for one model into `out_dir` (replaced as a whole at the end).

    `calibration` is (N, H, W, 3) raw 0-255 pixels, uint8 as stored (float32 accepted), handed to the DFC
    as the float32 it wants; `evaluate(infer)` scores the quantized emulation,
    where `infer(nhwc_batch)` returns the emulator's output. Returns the `compile.json` record.
    """
    if (calibration.ndim != 4 or calibration.shape[1:] != (*target.input_hw, 3)
            or calibration.dtype not in CALIBRATION_DTYPES):
        raise StageError(f"{target.name}: calibration must be (N, {target.input_hw[0]}, {target.input_hw[1]}, 3) "
                         f"uint8 or float32, got {calibration.shape} {calibration.dtype}")
    sdk = importlib.import_module(DFC_MODULE)
    dfc_version = getattr(sdk, "__version__", None)
    check_dfc_line(dfc_version, settings.hw_arch)
    script = model_script(target, settings, len(calibration))
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    atomic.write_text(staging / "model.alls", script)
    record: dict[str, Any] = {
        "name": target.name, "built": False, "hw_arch": settings.hw_arch, "dfc_version": dfc_version,
        "hailort_version": hailort_for(dfc_version), "onnx": str(target.onnx_path),
        "start_nodes": list(target.start_nodes), "end_nodes": list(target.end_nodes), "model_script": "model.alls",
        "calibration_images": int(len(calibration)), "optimization_level_requested": settings.optimization_level,
        "compression_level": settings.compression_level,
    }
    try:
        with captured_output(staging / "compile.log"):
            hef = _run_dfc(sdk, target, settings, script, calibration, staging, record, evaluate)
    except Exception as exc:  # noqa: BLE001 - any DFC failure ends the stage with the log's location
        raise StageError(f"{target.name}: the Hailo DFC failed ({type(exc).__name__}: {exc}); "
                         f"full log: {staging / 'compile.log'}") from exc
    atomic.write_bytes(staging / HEF.stage_file, hef)
    record.update(parse_compile_log((staging / "compile.log").read_text(encoding="utf-8", errors="replace")))
    record.update({"built": True, "hef": HEF.stage_file, "hef_bytes": len(hef),
                   "hef_sha256": sha256_file(staging / HEF.stage_file), "har": dict(HAR_FILES),
                   "log": "compile.log"})
    atomic.write_json(staging / "compile.json", record)
    atomic.replace_dir(staging, out_dir)
    return record


def _run_dfc(sdk: Any, target: ModelTarget, settings: HailoSettings, script: str, calibration: np.ndarray,
             staging: Path, record: dict[str, Any], evaluate: Callable | None) -> bytes:
    """parse -> optimize -> emulate -> compile; HARs saved into `staging`, emulation scores into `record`."""
    height, width = target.input_hw
    runner = sdk.ClientRunner(hw_arch=settings.hw_arch)
    runner.translate_onnx_model(
        str(target.onnx_path), target.name, start_node_names=list(target.start_nodes),
        end_node_names=list(target.end_nodes), net_input_shapes={target.start_nodes[0]: [1, 3, height, width]},
    )
    runner.save_har(str(staging / HAR_FILES["parsed"]))
    runner.load_model_script(script)
    runner.optimize(np.ascontiguousarray(calibration, dtype=np.float32))  # the DFC's format: NHWC float32 0-255
    runner.save_har(str(staging / HAR_FILES["optimized"]))
    record["emulation"] = None
    if evaluate is not None:
        with runner.infer_context(sdk.InferenceContext.SDK_QUANTIZED) as context:
            record["emulation"] = evaluate(lambda batch: runner.infer(context, batch))
    hef = runner.compile()
    runner.save_har(str(staging / HAR_FILES["compiled"]))
    return hef


def not_built(target: ModelTarget, out_dir: Path, settings: HailoSettings, calibset_size: int, reason: str) -> dict[str, Any]:
    """Status of a model whose HEF was not built: the model script (ready for a machine with the DFC) and why."""
    record = {
        "name": target.name, "built": False, "reason": reason, "hw_arch": settings.hw_arch, "dfc_version": None,
        "hailort_version": None, "onnx": str(target.onnx_path), "start_nodes": list(target.start_nodes),
        "end_nodes": list(target.end_nodes), "model_script": "model.alls", "calibration_images": calibset_size,
        "optimization_level_requested": settings.optimization_level, "compression_level": settings.compression_level,
        "emulation": None, "hef": None,
    }
    atomic.write_text(out_dir / "model.alls", model_script(target, settings, calibset_size))
    atomic.write_json(out_dir / "compile.json", record)
    return record


def compile_all(
    targets: Sequence[tuple[ModelTarget, np.ndarray]],
    out_root: Path,
    settings: HailoSettings,
    evaluators: Mapping[str, Callable[[Callable[[np.ndarray], np.ndarray]], dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Compile every target (or record why not) and write `out_root/status.json`."""
    available = dfc_available()
    if not available and settings.require:
        raise StageError(f"compile.hailo.require is true but {install_hint(settings.hw_arch)}")
    if not available:
        log.warning("no HEF built: %s", install_hint(settings.hw_arch))
    models = {}
    for target, calibration in targets:
        out_dir = out_root / target.name
        if available:
            log.info("%s: compiling for %s with the Hailo DFC", target.name, settings.hw_arch)
            models[target.name] = compile_model(target, calibration, out_dir, settings, (evaluators or {}).get(target.name))
        else:
            models[target.name] = not_built(target, out_dir, settings, int(len(calibration)), install_hint(settings.hw_arch))
    status = {"dfc_available": available, "hw_arch": settings.hw_arch,
              "reason": None if available else install_hint(settings.hw_arch), "models": models}
    atomic.write_json(out_root / "status.json", status)
    return status


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compile-hef", help="Hailo HEF files with the Dataflow Compiler (status only without it)")
    parser.add_argument("--params", default="params.yaml")
    parser.set_defaults(handler=_run)


def settings_from_config(cfg: Mapping[str, Any]) -> HailoSettings:
    return HailoSettings(
        hw_arch=str(cfg["hw_arch"]), optimization_level=int(cfg["optimization_level"]),
        compression_level=int(cfg["compression_level"]), calib_batch_size=int(cfg["calib_batch_size"]),
        require=bool(cfg["require"]), emulation_images=cfg.get("emulation_images"),
        extra_script_lines=tuple(cfg.get("extra_script_lines") or ()),
    )


def target_from_record(record: Mapping[str, Any], sigmoid_layers: Sequence[str] = ()) -> ModelTarget:
    from idd_edge.export.preprocessing import input_hw

    return ModelTarget(
        name=record["name"], onnx_path=Path(record["path"]), input_hw=input_hw(record),
        start_nodes=tuple(record["hailo"]["start_nodes"]), end_nodes=tuple(record["hailo"]["end_nodes"]),
        mean=tuple(record["normalization"]["mean"]), std=tuple(record["normalization"]["std"]),
        sigmoid_layers=tuple(sigmoid_layers),
    )


def _run(args: argparse.Namespace) -> int:
    from idd_edge import config
    from idd_edge.export import preprocessing
    from idd_edge.export.quantize import load_calibration

    params = config.load_params(args.params)
    cfg = config.section(params, "compile", args.params)
    settings = settings_from_config(cfg["hailo"])
    level = config.section(params, "label_level", args.params)
    val_dir = Path(config.section(params, "split.out", args.params)) / level["dir_name"] / "val"
    exports = preprocessing.load_exports(Path(config.section(params, "export.out", args.params)))
    calib_dir = Path(config.section(params, "calibrate.out", args.params))
    data_yaml = Path(config.section(params, "yolo.bridge.out", args.params)) / "data.yaml"
    targets, evaluators = [], {}
    for record in exports:
        sigmoid_layers = cfg["yolo"]["class_output_layers"] if record["role"] == "instance" else ()
        target = target_from_record(record, sigmoid_layers)
        targets.append((target, load_calibration(calib_dir / f"{preprocessing.calibration_key(record)}.npy", target.input_hw)))
        if record["role"] == "semantic":
            evaluators[target.name] = semantic_emulation_scorer(record, val_dir, level["name"], settings.emulation_images)
        else:
            evaluators[target.name] = yolo_emulation_scorer(record, data_yaml, settings.emulation_images)
    status = compile_all(targets, Path(cfg["out"]), settings, evaluators)
    built = [name for name, model in status["models"].items() if model["built"]]
    log.info("HEF built for %d of %d models%s", len(built), len(status["models"]),
             "" if status["dfc_available"] else " (Hailo DFC not installed; see compile status)")
    return 0


def semantic_emulation_scorer(record: Mapping[str, Any], val_dir: Path, level: str, max_images: int | None):
    """`evaluate(infer)` for `compile_model`: the gate's evaluator fed through the DFC emulator."""
    from idd_edge.export import evaluate, preprocessing
    from idd_edge.labels import LEVEL_CLASS_NAMES

    def score(infer: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        dataset = evaluate.validation_dataset(val_dir, level, preprocessing.input_hw(record))
        return evaluate.evaluate_semantic(lambda batch: evaluate.nhwc_labels(infer(batch)), dataset,
                                          preprocessing.preprocess_fn(record), LEVEL_CLASS_NAMES[level], max_images,
                                          f"{record['name']} emulation")

    return score


def yolo_emulation_scorer(record: Mapping[str, Any], data_yaml: Path, max_images: int | None):
    """`evaluate(infer)` for `compile_model`: mask mAP of the emulator's ten head tensors (Hailo layout)
    on the YOLO bridge's validation split, and under `baseline` the exported ONNX fp32 scored by the same
    host scorer on the same images, the reference the gate holds the emulation to (see gate.py)."""
    from idd_edge.export import evaluate_yolo
    from idd_edge.export.onnx_io import onnx_session
    from idd_edge.export.preprocessing import input_hw

    def score(infer: Callable[[np.ndarray], Any]) -> dict[str, Any]:
        split = evaluate_yolo.load_val_split(data_yaml)
        names = [split.names[i] for i in range(len(split.names))]
        if names != list(record["class_names"]):
            raise InputError(data_yaml, f"classes {names} differ from {record['name']}'s {list(record['class_names'])}; "
                                        "re-run the YOLO stages")
        size_hw = input_hw(record)
        emulation = evaluate_yolo.evaluate_yolo(infer, split, size_hw, "hailo", max_images, f"{record['name']} emulation")
        fp32 = evaluate_yolo.onnx_predictor(onnx_session(record["path"]))
        baseline = evaluate_yolo.evaluate_yolo(fp32, split, size_hw, "onnx", max_images, f"{record['name']} ONNX fp32")
        return {**emulation, "baseline": {"format": ONNX_FP32.gate, **baseline}}

    return score
