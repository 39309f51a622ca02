"""`idd-edge bundle`: the device bundle `artifacts/bundle/<version>/` of the models that passed the gate.

    <version>/manifest.json     schema and validation: idd_edge_runtime.manifest (the device reads it too)
    <version>/models/<name>.hef            when the DFC built it and its emulation passed the gate
    <version>/models/<name>_int8.onnx      ONNX Runtime INT8 (CPU fallback), when it passed the gate
    <version>/models/<name>.onnx           fp32 ONNX (CPU fallback)
    <version>/runtime/                     the idd-edge-runtime package sources (`pip install ./runtime`)

A format goes in only when the gate evaluated it and it passed; a model whose gate failed goes in not
at all (the gate report names the classes that regressed). The manifest records per model the input
size and normalisation, the class names and colours of the label level, the gate results, and for the
bundle the hw_arch and DFC/HailoRT versions of its HEFs, the source git commit and the DVC data hashes.
The bundle is built in a staging folder, validated and checksum-verified with the runtime's own loader,
then swapped into place.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from idd_edge import atomic
from idd_edge.errors import InputError, StageError
from idd_edge.jsonfile import read_json_if_present
from idd_edge_runtime.formats import ALL_FORMATS, HEF, IMX500, ONNX_FP32, ONNX_INT8

log = logging.getLogger(__name__)

RUNTIME_SOURCE = Path("deploy")


def git_source(repo: Path = Path(".")) -> dict[str, Any]:
    """Commit and dirtiness of the working tree (None/False outside a git checkout)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                                text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "dirty": False}
    return {"git_commit": commit, "dirty": bool(status.strip())}


def dvc_data_hashes(lock_path: Path, prefixes: Sequence[str] = ("data/",)) -> dict[str, str]:
    """{path: md5} of the DVC-tracked outputs under `prefixes` recorded in dvc.lock (the data the models
    were trained on); empty when there is no lock file yet."""
    import yaml

    if not lock_path.is_file():
        return {}
    try:
        lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(lock_path, f"not valid YAML: {exc}") from None
    hashes: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            path, digest = str(out.get("path", "")), out.get("md5") or out.get("hash")
            if digest and any(path.startswith(prefix) for prefix in prefixes):
                hashes[path] = str(digest)
    return dict(sorted(hashes.items()))


def default_version(source: Mapping[str, Any]) -> str:
    """`<package version>+g<commit>` (`.dirty` when the tree had changes), e.g. 0.1.0+g1a2b3c4."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("idd-edge")
    except PackageNotFoundError:
        package = "0.0.0"
    commit = source.get("git_commit")
    return package + (f"+g{commit[:7]}" if commit else "") + (".dirty" if source.get("dirty") else "")


def class_table(class_names: Sequence[str], level: str | None) -> list[dict[str, Any]]:
    """[{name, color}] in class-id order: the label level's palette for semantic models; a fixed, distinct
    palette for instance classes."""
    from idd_edge.labels import level_palette

    if level is not None:
        palette = level_palette(level)
        if len(palette) != len(class_names):
            raise StageError(f"{len(class_names)} class names but {level} has {len(palette)} classes")
        return [{"name": name, "color": [int(c) for c in palette[i]]} for i, name in enumerate(class_names)]
    instance_palette = [(220, 20, 60), (255, 0, 0), (0, 0, 230), (0, 60, 100), (0, 0, 70), (119, 11, 32), (0, 80, 100)]
    return [{"name": name, "color": list(instance_palette[i % len(instance_palette)])} for i, name in enumerate(class_names)]


def gate_summary(gate: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """The manifest's per-entry gate record: verdict of the model and the figures of this format."""
    entry = gate["formats"][fmt]
    return {
        "passed": bool(gate["passed"] and entry["passed"]),
        "metric": gate["metric"],
        "format": fmt,
        "reference_value": gate["reference"]["value"],
        "value": entry["value"],
        "drop_points": entry["drop_points"],
        "regressed_classes": entry["regressed_classes"],
        "validation_images": gate["reference"].get("images"),
    }


def model_entries(record: Mapping[str, Any], gate: Mapping[str, Any], files: Mapping[str, Path],
                  compiled: Mapping[str, Any] | None) -> list[tuple[dict[str, Any], Path]]:
    """Manifest entries (with their source files) of the formats of one model that passed the gate."""
    height, width = int(record["input"]["shape"][2]), int(record["input"]["shape"][3])
    classes = class_table(record["class_names"], record.get("label_level"))
    kind = record["output"]["kind"]
    entries = []
    for fmt in ALL_FORMATS:
        source = files.get(fmt.gate)
        result = gate["formats"].get(fmt.gate)
        if source is None or result is None or not result["passed"]:
            continue
        entry = {
            "name": record["name"],
            "role": record["role"],
            "format": fmt.manifest,
            "file": f"models/{record['name']}{fmt.bundle_suffix}",
            "sha256": None,  # filled from the copied file
            "input": {
                "width": width, "height": height, "layout": fmt.layout, "dtype": fmt.dtype,
                # A HEF (model script) and an IMX500 network (first layer) normalise on the chip; ONNX takes
                # host-normalised float input.
                "normalization": dict(record["normalization"]) if fmt.host_normalises else None,
            },
            "output": {"kind": kind},
            "classes": classes,
            "gate": gate_summary(gate, fmt.gate),
        }
        if fmt is HEF and compiled:
            entry["gate"]["fps_estimate"] = compiled.get("fps_estimate")
        if record["role"] == "instance":
            post = record["postprocess"]
            entry["postprocess"] = {"conf": post["conf_threshold"], "iou": post["iou_threshold"],
                                    "reg_max": post["reg_max"], "mask_dim": post["mask_dim"]}
        entries.append((entry, source))
    return entries


def build_bundle(
    exports: Sequence[Mapping[str, Any]],
    gate_metrics: Mapping[str, Any],
    quant_dir: Path,
    hailo_dir: Path,
    out_root: Path,
    *,
    version: str,
    label_level: str,
    source: Mapping[str, Any],
    runtime_source: Path | None = RUNTIME_SOURCE,
    imx500_dir: Path | None = None,
) -> dict[str, Any]:
    """Write `out_root/<version>/` (staged, validated with the runtime's manifest loader, swapped in)."""
    from idd_edge_runtime import manifest as manifest_schema

    gated = gate_metrics.get("models", {})
    staging = out_root / f".{version}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / manifest_schema.MODELS_DIR).mkdir(parents=True)
    entries: list[dict[str, Any]] = []
    hailo = {"hw_arch": None, "dfc_version": None, "hailort_version": None}
    excluded: dict[str, str] = {}
    for record in exports:
        name = record["name"]
        gate = gated.get(name)
        if gate is None:
            excluded[name] = "not gated (no accuracy measurement)"
            continue
        if not gate["passed"]:
            excluded[name] = "; ".join(gate["messages"]) or "failed the accuracy gate"
            continue
        compiled = read_json_if_present(hailo_dir / name / "compile.json")
        files = {ONNX_FP32.gate: Path(record["path"]), ONNX_INT8.gate: quant_dir / name / ONNX_INT8.stage_file}
        if compiled and compiled.get("built"):
            files[HEF.gate] = hailo_dir / name / HEF.stage_file
            built = {key: compiled.get(key) for key in hailo}
            if hailo["hw_arch"] is not None and built != hailo:
                raise StageError(f"{name}: HEF built with {built}, other HEFs with {hailo}: rebuild them together")
            hailo = built
        packaged = read_json_if_present(imx500_dir / name / "compile.json") if imx500_dir else None
        if packaged and packaged.get("converted") and packaged.get("fits"):  # the sensor runs only what fits it
            files[IMX500.gate] = imx500_dir / name / IMX500.stage_file
        for entry, source_file in model_entries(record, gate, files, compiled):
            destination = staging / entry["file"]
            shutil.copyfile(source_file, destination)
            entry["sha256"] = manifest_schema.sha256_file(destination)
            entries.append(entry)
    if not entries:
        shutil.rmtree(staging)
        raise StageError("no model passed the accuracy gate: nothing to bundle (" +
                         "; ".join(f"{name}: {why}" for name, why in excluded.items()) + ")")
    if not any(entry["format"] == HEF.manifest for entry in entries):
        hailo = {"hw_arch": None, "dfc_version": None, "hailort_version": None}
    manifest_dict = {
        "format_version": manifest_schema.FORMAT_VERSION,
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "label_level": label_level,
        "source": {"git_commit": source.get("git_commit"), "dirty": bool(source.get("dirty")),
                   "dvc_data": dict(source.get("dvc_data") or {})},
        "hailo": hailo,
        "models": entries,
    }
    manifest = manifest_schema.parse_manifest(manifest_dict, staging / manifest_schema.MANIFEST_NAME)  # refuse to write a bad one
    atomic.write_json(staging / manifest_schema.MANIFEST_NAME, manifest.to_dict())
    if runtime_source is not None:
        _copy_runtime(runtime_source, staging / manifest_schema.RUNTIME_DIR)
    manifest_schema.load_bundle(staging)  # what the device will do: parse + verify every checksum
    destination = out_root / version
    atomic.replace_dir(staging, destination)
    for name, why in excluded.items():
        log.warning("%s left out of the bundle: %s", name, why)
    return {"path": str(destination), "manifest": manifest.to_dict(), "excluded": excluded}


def _copy_runtime(source: Path, destination: Path) -> None:
    """The runtime package (pyproject + sources, no caches) so the device can `pip install ./runtime`."""
    if not (source / "pyproject.toml").is_file():
        raise InputError(source, "runtime package not found (expected deploy/pyproject.toml)")
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*"))


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bundle", help="device bundle: gated models + manifest.json + runtime")
    parser.add_argument("--params", default="params.yaml")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from idd_edge import config
    from idd_edge.export.preprocessing import load_exports

    params = config.load_params(args.params)
    cfg = config.section(params, "bundle", args.params)
    metrics_path = Path(config.section(params, "gate.metrics", args.params))
    gate_metrics = read_json_if_present(metrics_path)
    if gate_metrics is None:
        raise InputError(metrics_path, "gate results not found; run `idd-edge gate` first")
    source = {**git_source(), "dvc_data": dvc_data_hashes(Path("dvc.lock"))}
    version = cfg["version"] or default_version(source)
    result = build_bundle(
        load_exports(Path(config.section(params, "export.out", args.params))), gate_metrics,
        Path(config.section(params, "quantize.out", args.params)), Path(config.section(params, "compile.out", args.params)),
        Path(cfg["out"]), version=version, label_level=config.section(params, "label_level.name", args.params), source=source,
        imx500_dir=Path(config.section(params, "compile.imx500.out", args.params)),
    )
    shipped = [f"{m['name']} ({m['format']})" for m in result["manifest"]["models"]]
    log.info("bundle %s: %s", result["path"], ", ".join(shipped))
    return 0
