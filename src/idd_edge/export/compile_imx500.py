"""`idd-edge compile-imx500`: Sony IMX500 (Raspberry Pi AI Camera) packages with the open toolchain.

Per deployable semantic student: the trained network with its input normalisation put in front of it (the
sensor feeds raw 0-255 RGB, so `(x - mean) / std` is the first layer, as the Hailo model script's
`normalization` layer) -> Model Compression Toolkit (MCT) post-training quantization with the `imx500`
target platform on the calibration stage's own array (`artifacts/calib/<key>.npy`, its first
`calibration_images` frames), GPTQ instead when `compile.imx500.method: gptq` -> MCT's quantized ONNX ->
scored on validation by the gate's evaluator (ONNX Runtime with MCT's custom-op library) -> `imxconv-pt`
-> `packerOut.zip` (the input of `imx500-package` on the Pi) and the converter's memory report, parsed into
KB used of the 8 MB the sensor has for weights and feature maps.

A model the converter refuses (unsupported layer, does not fit) is recorded by name with the converter's
own error lines; one whose exported graph holds a layer setting the converter is known to refuse (a Resize
with `align_corners`, as in segmentation-models-pytorch's DeepLabV3+) is recorded with that reason before
MCT spends 10-30 s quantizing it; one that converts but does not fit is recorded with `fits: false`.
Nothing is dropped: `status.json` lists every exported model, the instance model (YOLO) with the reason it is not converted.

The toolchain lives in its own locked environment (`tools/imx500/`, `make imx500-env` -> `.venv-imx500/`;
`IDD_EDGE_IMX500_ENV` names another), because it pins torch and onnx versions the main lock cannot hold.
The CLI runs this module with that environment's python (the repository's sources on PYTHONPATH). Without
the environment or a Java runtime the stage writes a status saying why and builds nothing
(`compile.imx500.require: true` makes that an error).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from idd_edge import atomic
from idd_edge.errors import InputError, StageError
from idd_edge_runtime.formats import IMX500

log = logging.getLogger("idd_edge.export.compile_imx500")  # also when run as __main__ in the toolchain env

TOOLS_ENV_VARIABLE = "IDD_EDGE_IMX500_ENV"
DEFAULT_TOOLS_ENV = ".venv-imx500"
MCT_MODULE = "model_compression_toolkit"
CONVERTER = "imxconv-pt"
#: On-sensor memory for the network's weights and feature maps (Sony's IMX500 specification).
MEMORY_BUDGET_KB = 8 * 1024
METHODS = ("ptq", "gptq")
INSTALL_HINT = (
    "run `make imx500-env` (installs tools/imx500/uv.lock into .venv-imx500/, and Debian's "
    "openjdk-17-jre-headless when run as root), or point IDD_EDGE_IMX500_ENV at an environment with "
    "model-compression-toolkit and imx500-converter[pt]"
)


@dataclass(frozen=True)
class Imx500Settings:
    """The `compile.imx500` config."""

    method: str = "ptq"
    calibration_images: int = 32
    gptq_epochs: int = 5
    eval_images: int | None = None
    require: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(None, f"compile.imx500.method must be one of {METHODS}, got {self.method!r}")
        if self.calibration_images < 1 or self.gptq_epochs < 1:
            raise InputError(None, "compile.imx500.calibration_images and gptq_epochs must be >= 1")


# ------------------------------------------------------------------------------ converter memory report

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB)?\s*$", re.IGNORECASE)
_UNIT_KB = {"B": 1 / 1024, "KB": 1.0, "MB": 1024.0, "GB": 1024.0 * 1024.0}


def _kilobytes(value: Any, path: Path, key: str) -> float:
    if isinstance(value, (int, float)):
        return float(value) / 1024.0  # --report-size-unit B writes plain byte counts
    match = _SIZE.match(str(value))
    if not match:
        raise InputError(path, f"memory report: {key} {value!r} is not a size")
    return float(match.group(1)) * _UNIT_KB[(match.group(2) or "B").upper()]


def parse_memory_report(path: Path) -> dict[str, Any]:
    """KB used of the on-chip budget, from the converter's `<model>_MemoryReport.json`."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))["Memory Report"]
        used, available, fits = report["Memory Usage"], report["Total Memory Available On Chip"], report["Fit In Chip"]
    except FileNotFoundError:
        raise InputError(path, "converter memory report not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(path, f"not an IMX500 converter memory report ({type(exc).__name__}: {exc})") from None
    return {
        "used_kb": round(_kilobytes(used, path, "Memory Usage"), 2),
        "available_kb": round(_kilobytes(available, path, "Total Memory Available On Chip"), 2),
        "model_kb": round(_kilobytes(report.get("Model Memory Physical Size", 0), path, "Model Memory Physical Size"), 2),
        "runtime_kb": round(_kilobytes(report.get("Runtime Memory Physical Size", 0), path, "Runtime Memory Physical Size"), 2),
        "utilization": report.get("Memory Utilization"),
        "fits": bool(fits),
    }


_CONVERTER_ERROR = re.compile(r"\b(ERROR|FATAL|CRITICAL)\b|Error:|Exception", re.IGNORECASE)
# The converter's log lines: "<date> <time> LEVEL : message [/path/to/logger.py:185]".
_LOG_DECORATION = re.compile(r"^\d{4}-\d\d-\d\d [\d:.,]+ |\s*\[[^\]]+\.py:\d+\]$")


def converter_reason(log_text: str, limit: int = 12) -> str:
    """The converter's error block (from its first error line: the offending nodes and why, at most `limit`
    lines, without timestamps, logger paths and separators), or its last lines when no line is an error."""
    lines = [_LOG_DECORATION.sub("", line.strip()) for line in log_text.splitlines()]
    lines = [line for line in lines if line and not set(line) <= {"-"}]
    first = next((index for index, line in enumerate(lines) if _CONVERTER_ERROR.search(line)), None)
    picked = lines[-limit:] if first is None else lines[first:first + limit]
    return "\n".join(picked) or "the converter failed without output"


# --------------------------------------------------------------------------------------- toolchain


def tools_env() -> Path:
    """$IDD_EDGE_IMX500_ENV, else `.venv-imx500` in the working directory (DVC runs stages at the repository
    root), else the one beside these sources (an editable checkout run from elsewhere)."""
    if os.environ.get(TOOLS_ENV_VARIABLE):
        return Path(os.environ[TOOLS_ENV_VARIABLE])
    here = Path(DEFAULT_TOOLS_ENV)
    beside_sources = Path(__file__).resolve().parents[3] / DEFAULT_TOOLS_ENV
    return here if here.is_dir() or not beside_sources.is_dir() else beside_sources


def missing_tools(env: Path | None = None) -> str | None:
    """Why the toolchain cannot run here, or None when it can (this interpreter has MCT, the environment
    has the converter, and a Java runtime is on PATH)."""
    if importlib.util.find_spec(MCT_MODULE) is None:
        return f"model-compression-toolkit is not importable by {sys.executable}; {INSTALL_HINT}"
    if converter_path(env) is None:
        return f"{CONVERTER} not found next to {sys.executable}; {INSTALL_HINT}"
    if shutil.which("java") is None:
        return "no Java runtime on PATH (imxconv-pt needs Java 17: Debian's openjdk-17-jre-headless)"
    return None


def converter_path(env: Path | None = None) -> Path | None:
    for candidate in ((env / "bin" / CONVERTER) if env else None, Path(sys.executable).parent / CONVERTER):
        if candidate is not None and candidate.is_file():
            return candidate
    found = shutil.which(CONVERTER)
    return Path(found) if found else None


# ------------------------------------------------------------------------------------- one model


@dataclass(frozen=True)
class Imx500Target:
    """One semantic model: its trained network (rebuilt by `build`) and input contract."""

    name: str
    build: Callable[[], Any]
    input_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def normalised_network(model: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """`model` taking raw 0-255 RGB NCHW: the sensor feeds pixels, the first layer normalises them."""
    import torch

    class RawPixelInput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("inv_std", 1.0 / torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = (x - self.mean) * self.inv_std
            if is_smp_model(self.net):
                # segmentation_models_pytorch's forward checks the input shape with Python control flow
                # torch.fx (MCT) cannot trace; the input size is static here, so call its three parts.
                return self.net.segmentation_head(self.net.decoder(self.net.encoder(x)))
            return self.net(x)

    return RawPixelInput().eval()


def is_smp_model(model: Any) -> bool:
    """A segmentation_models_pytorch network without an auxiliary classification head."""
    return all(hasattr(model, part) for part in ("encoder", "decoder", "segmentation_head")) \
        and getattr(model, "classification_head", None) is None


def representative_dataset(calibration: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """MCT's representative dataset: one NCHW float32 0-255 frame per batch, every calibration frame once."""

    def frames() -> Iterator[list[np.ndarray]]:
        for image in calibration:
            yield [np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None])]

    return frames


def quantize_with_mct(network: Any, calibration: np.ndarray, settings: Imx500Settings, onnx_path: Path) -> dict[str, Any]:
    """MCT PTQ (or GPTQ) for the imx500 target platform, exported as MCT's quantized ONNX."""
    import model_compression_toolkit as mct

    dataset = representative_dataset(calibration)
    tpc = mct.get_target_platform_capabilities("pytorch", "imx500", target_platform_version="v1")
    if settings.method == "gptq":
        config = mct.gptq.get_pytorch_gptq_config(n_epochs=settings.gptq_epochs)
        quantized, _info = mct.gptq.pytorch_gradient_post_training_quantization(
            network, dataset, gptq_config=config, target_platform_capabilities=tpc)
    else:
        quantized, _info = mct.ptq.pytorch_post_training_quantization(network, dataset, target_platform_capabilities=tpc)
    mct.exporter.pytorch_export_model(quantized, save_model_path=str(onnx_path), repr_dataset=dataset)
    return {"mct_version": mct.__version__, "method": settings.method, "tpc": "imx500 v1"}


def mct_onnx_session(path: Path) -> Any:
    """ONNX Runtime session for MCT's quantized ONNX (its quantizers are custom ops of mct_quantizers)."""
    import onnxruntime as ort
    from mct_quantizers import get_ort_session_options

    return ort.InferenceSession(str(path), get_ort_session_options(), providers=["CPUExecutionProvider"])


def convert(onnx_path: Path, out_dir: Path, converter: Path) -> tuple[bool, str]:
    """`imxconv-pt -i model.onnx -o out_dir`; returns (succeeded, full log text)."""
    result = subprocess.run(
        [str(converter), "-i", str(onnx_path), "-o", str(out_dir), "--overwrite-output", "--report-size-unit", "K"],
        capture_output=True, text=True, check=False,
    )
    return result.returncode == 0 and (out_dir / IMX500.stage_file).is_file(), result.stdout + result.stderr


def compile_model(
    target: Imx500Target,
    calibration: np.ndarray,
    out_dir: Path,
    settings: Imx500Settings,
    converter: Path,
    evaluate: Callable[[Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Quantize, convert and (when converted) score one model into `out_dir` (replaced as a whole); returns
    its record.

    `calibration` is (N, H, W, 3) float32 0-255 (the calibration stage's array; the first
    `settings.calibration_images` frames are used); `evaluate(session)` scores MCT's quantized ONNX."""
    if calibration.ndim != 4 or calibration.shape[1:] != (*target.input_hw, 3):
        raise StageError(f"{target.name}: calibration must be (N, {target.input_hw[0]}, {target.input_hw[1]}, 3), "
                         f"got {calibration.shape}")
    started = time.perf_counter()
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    frames = np.asarray(calibration[: settings.calibration_images], dtype=np.float32)
    network = normalised_network(target.build(), target.mean, target.std)
    onnx_path = staging / "model_mct.onnx"
    record: dict[str, Any] = {"name": target.name, "input": {"height": target.input_hw[0], "width": target.input_hw[1],
                                                             "layout": "NCHW", "dtype": "uint8", "normalization": None},
                              "normalization_in_graph": {"mean": list(target.mean), "std": list(target.std)},
                              "calibration_images": int(len(frames)), "quantized_onnx": onnx_path.name}
    record.update(quantize_with_mct(network, frames, settings, onnx_path))
    converted, log_text = convert(onnx_path, staging / "converter", converter)
    atomic.write_text(staging / "convert.log", log_text)
    record["log"] = "convert.log"
    if converted:
        packer = staging / "converter" / IMX500.stage_file
        shutil.move(str(packer), staging / IMX500.stage_file)
        reports = sorted((staging / "converter").glob("*_MemoryReport.json"))
        if not reports:
            raise StageError(f"{target.name}: {CONVERTER} wrote no memory report (log: {out_dir / 'convert.log'})")
        shutil.move(str(reports[0]), staging / "memory_report.json")
        memory = parse_memory_report(staging / "memory_report.json")
        record.update({"converted": True, "packer_out": IMX500.stage_file, "memory": memory, "fits": memory["fits"],
                       "reason": None if memory["fits"] else
                       f"needs {memory['used_kb']:.0f} KB, the IMX500 has {memory['available_kb']:.0f} KB"})
        for name in ("dnnParams.xml",):
            if (staging / "converter" / name).is_file():
                shutil.move(str(staging / "converter" / name), staging / name)
    else:
        record.update({"converted": False, "packer_out": None, "memory": None, "fits": False,
                       "reason": f"{CONVERTER} refused the model: {converter_reason(log_text)}"})
    shutil.rmtree(staging / "converter", ignore_errors=True)
    # Scored only when the sensor can take the graph: validation costs minutes for the large student, and a
    # refused model has no IMX500 accuracy to report.
    record["evaluation"] = evaluate(mct_onnx_session(onnx_path)) if evaluate is not None and converted else None
    record["seconds"] = round(time.perf_counter() - started, 1)
    atomic.write_json(staging / "compile.json", record)
    atomic.replace_dir(staging, out_dir)
    return record


def not_built(name: str, out_dir: Path, reason: str) -> dict[str, Any]:
    record = {"name": name, "converted": False, "fits": None, "packer_out": None, "memory": None,
              "evaluation": None, "reason": reason}
    atomic.write_json(out_dir / "compile.json", record)
    return record


def compile_all(
    targets: Sequence[tuple[Imx500Target, np.ndarray]],
    skipped: Mapping[str, str],
    out_root: Path,
    settings: Imx500Settings,
    evaluators: Mapping[str, Callable[[Any], dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Every target through the toolchain (or a record of why not), and `out_root/status.json`.

    `skipped` maps the names of exported models this toolchain does not take to the reason."""
    started = time.perf_counter()
    reason = missing_tools(tools_env())
    if reason and settings.require:
        raise StageError(f"compile.imx500.require is true but {reason}")
    if reason:
        log.warning("no IMX500 package built: %s", reason)
    converter = converter_path(tools_env())
    models: dict[str, Any] = {}
    for target, calibration in targets:
        if reason:
            models[target.name] = not_built(target.name, out_root / target.name, reason)
            continue
        log.info("%s: MCT %s + %s", target.name, settings.method, CONVERTER)
        models[target.name] = compile_model(target, calibration, out_root / target.name, settings, converter,
                                            (evaluators or {}).get(target.name))
        log.info("%s: %s", target.name, summary_line(models[target.name]))
    for name, why in skipped.items():
        models[name] = not_built(name, out_root / name, why)
    status = {"toolchain_available": reason is None, "reason": reason, "method": settings.method,
              "memory_budget_kb": MEMORY_BUDGET_KB, "models": models,
              "seconds": round(time.perf_counter() - started, 1)}
    atomic.write_json(out_root / "status.json", status)
    return status


def summary_line(record: Mapping[str, Any]) -> str:
    if record.get("memory"):
        memory = record["memory"]
        return (f"{'fits' if record['fits'] else 'does NOT fit'}: {memory['used_kb']:.0f} KB of "
                f"{memory['available_kb']:.0f} KB")
    return f"not converted: {record.get('reason')}"


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compile-imx500", help="Sony IMX500 packages (MCT + imxconv-pt), or a status saying why not")
    parser.add_argument("--params", default="params.yaml")
    parser.set_defaults(handler=_run)


def settings_from_config(cfg: Mapping[str, Any]) -> Imx500Settings:
    return Imx500Settings(method=str(cfg["method"]), calibration_images=int(cfg["calibration_images"]),
                          gptq_epochs=int(cfg["gptq_epochs"]), eval_images=cfg.get("eval_images"),
                          require=bool(cfg["require"]))


def _run(args: argparse.Namespace) -> int:
    """In the toolchain's environment when this interpreter lacks MCT and that environment exists."""
    python = tools_env() / "bin" / "python"
    if importlib.util.find_spec(MCT_MODULE) is None and python.is_file():
        return _run_in_tools_env(python, args.params)
    return _compile_from_params(args.params)


def _run_in_tools_env(python: Path, params: str) -> int:
    import idd_edge
    import idd_edge_runtime

    sources = [str(Path(idd_edge.__file__).resolve().parents[1]), str(Path(idd_edge_runtime.__file__).resolve().parents[1])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sources + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    log.info("running in the IMX500 toolchain environment %s", python.parent.parent)
    return subprocess.run([str(python), "-m", __name__, "--params", params], env=env, check=False).returncode


def _compile_from_params(params_path: str) -> int:
    from idd_edge import config
    from idd_edge.export import preprocessing
    from idd_edge.export.quantize import load_calibration

    params = config.load_params(params_path)
    cfg = config.section(params, "compile.imx500", params_path)
    settings = settings_from_config(cfg)
    level = config.section(params, "label_level", params_path)
    val_dir = Path(config.section(params, "split.out", params_path)) / level["dir_name"] / "val"
    exports = preprocessing.load_exports(Path(config.section(params, "export.out", params_path)))
    calib_dir = Path(config.section(params, "calibrate.out", params_path))
    targets, evaluators, skipped = [], {}, {}
    for record in exports:
        why_not = skip_reason(record) or converter_precheck(Path(record["path"]))
        if why_not:
            skipped[record["name"]] = why_not
            continue
        target = target_from_record(record)
        targets.append((target, load_calibration(calib_dir / f"{preprocessing.calibration_key(record)}.npy", target.input_hw)))
        evaluators[target.name] = semantic_scorer(record, val_dir, level["name"], settings.eval_images)
    status = compile_all(targets, skipped, Path(cfg["out"]), settings, evaluators)
    log.info("IMX500: %d of %d models fit (%.0f s)", sum(bool(m["fits"]) for m in status["models"].values()),
             len(status["models"]), status["seconds"])
    return 0


def skip_reason(record: Mapping[str, Any]) -> str | None:
    """Why an exported model does not go through this IMX500 flow (None: it does). Ultralytics' models (the
    YOLOv8n-seg branch, and YOLO26n-sem even as a semantic run) need Sony's own MCT recipe for them and
    Ultralytics in the toolchain environment, which tools/imx500/ does not install."""
    if record["role"] != "semantic":
        return ("not converted: the IMX500 flow here takes the semantic students; YOLOv8n-seg "
                "needs Sony's own MCT recipe for Ultralytics models (not wired in)")
    from idd_edge.seg.trained import read_info
    from idd_edge.seg.ultralytics_sem import ARCH

    if read_info(Path(record["run_dir"]))["model"].get("arch") == ARCH:
        return ("not converted: YOLO26n-sem is an Ultralytics model; it needs Sony's own MCT recipe for them and "
                "Ultralytics in the toolchain environment (tools/imx500/ has neither)")
    return None


#: Resize coordinate modes imxconv-pt takes; its [INVOP] error for any other: "param:
#: coordinate_transformation_mode, value: align_corners, reason: Supported values: ['half_pixel',
#: 'pytorch_half_pixel']" (imx500-converter of tools/imx500/uv.lock).
CONVERTER_RESIZE_MODES = ("half_pixel", "pytorch_half_pixel")


def converter_precheck(onnx_path: Path) -> str | None:
    """Why imxconv-pt will refuse the exported graph at `onnx_path`, found before MCT's quantization is spent
    on it; None when this check finds nothing (the converter itself stays the judge of everything else).
    MCT exports the layers of the same torch model, so their Resize settings are the exported ONNX's."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except (OSError, DecodeError) as error:
        raise InputError(onnx_path, f"cannot read the exported ONNX: {error}") from error
    refused = []
    for node in graph.node:
        if node.op_type != "Resize":
            continue
        mode = next((attr.s.decode() for attr in node.attribute if attr.name == "coordinate_transformation_mode"),
                    "half_pixel")  # the ONNX default
        if mode not in CONVERTER_RESIZE_MODES:
            refused.append(f"{node.name or node.output[0]} ({mode})")
    if not refused:
        return None
    return (f"not converted: {CONVERTER} takes Resize with coordinate_transformation_mode "
            f"{' or '.join(CONVERTER_RESIZE_MODES)} only; the exported graph has {len(refused)} other: "
            f"{', '.join(refused)} (checked on {onnx_path.name} before MCT)")


def target_from_record(record: Mapping[str, Any]) -> Imx500Target:
    from idd_edge.export.preprocessing import input_hw

    def build() -> Any:
        from idd_edge.seg import load_trained

        model, _info = load_trained(Path(record["run_dir"]), input_hw(record))
        return model

    return Imx500Target(name=record["name"], build=build, input_hw=input_hw(record),
                        mean=tuple(record["normalization"]["mean"]), std=tuple(record["normalization"]["std"]))


def semantic_scorer(record: Mapping[str, Any], val_dir: Path, level: str, max_images: int | None):
    """`evaluate(session)` for `compile_model`: the gate's evaluator and preprocessing on MCT's quantized ONNX
    (which takes raw 0-255 pixels: its first layer normalises)."""
    from idd_edge.export import evaluate, preprocessing
    from idd_edge.labels import LEVEL_CLASS_NAMES

    def score(session: Any) -> dict[str, Any]:
        dataset = evaluate.validation_dataset(val_dir, level, preprocessing.input_hw(record))
        return evaluate.evaluate_semantic(evaluate.onnx_predictor(session, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), dataset,
                                          preprocessing.preprocess_fn(record), LEVEL_CLASS_NAMES[level], max_images,
                                          f"{record['name']} imx500")

    return score


if __name__ == "__main__":  # the CLI's re-run inside the toolchain environment
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("--params", default="params.yaml")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        sys.exit(_compile_from_params(parser.parse_args().params))
    except (InputError, StageError) as exc:
        print(f"idd-edge compile-imx500: error: {exc}", file=sys.stderr)
        sys.exit(2)
