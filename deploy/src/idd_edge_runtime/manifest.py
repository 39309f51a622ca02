"""Bundle manifest: the schema, its validation, checksum verification and the Hailo compatibility check.

The training side (`idd-edge bundle`) writes a bundle with this module's `Manifest.to_dict()`; the device
loads it with `load_bundle()`. One piece of code on both sides, so a bundle the device would refuse
cannot be written in the first place.

Bundle layout::

    <bundle>/manifest.json
    <bundle>/models/<files>          every model file the manifest lists (HEF and/or ONNX)
    <bundle>/runtime/                optional: the idd-edge-runtime wheel or sources to install on the device

manifest.json (format_version 1; unknown keys are an error so a typo in the writer cannot go unnoticed)::

    format_version  int, 1
    version         release name, also the directory name on the device: [A-Za-z0-9][A-Za-z0-9._+-]{0,127}
    created         ISO-8601 timestamp with a time zone, e.g. "2025-01-31T12:00:00+00:00" ("Z" accepted)
    label_level     label level of the semantic models: "level1" | "level2" | "level3"
    source          provenance of the bundle
        git_commit  hex commit of the training repository (7-40 chars) or null (not a git checkout)
        dirty       bool: the working tree had uncommitted changes
        dvc_data    {path: hash}: DVC-tracked data the models were trained on (may be empty)
    hailo           what the HEFs were compiled for; all null when the bundle has no HEF
        hw_arch          "hailo8" | "hailo8l" | "hailo10h" (Raspberry Pi AI HAT+ 2) | null
        dfc_version      Dataflow Compiler version, "3.33" or "3.33.0" | null (3.x for Hailo-8/8L, 5.x for Hailo-10H)
        hailort_version  HailoRT version the DFC pairs with, "4.23" or "4.23.0" | null
    models          list, at least one entry; (name, format) pairs are unique. Entries sharing a name are
                    the same network in several formats (a HEF and its ONNX fallback): same role and classes.
        name        model name shown to the user, e.g. "mbv4s-deeplabv3plus"
        role        "semantic" | "instance"
        format      "hef" | "onnx" | "onnx-int8" | "imx500" (the IMX500 converter's packerOut.zip: on the Pi,
                    `imx500-package -i <file> -o <dir>` writes <dir>/network.rpk for the AI Camera)
        file        path relative to the bundle, under models/, POSIX separators, e.g. "models/mbv4s.hef"
        sha256      lowercase hex SHA-256 of the file
        input
            width, height   network input size in pixels (ints > 0)
            layout          "NCHW" | "NHWC" (a HEF takes NHWC); outputs come in the same layout (an
                            IMX500 network takes the sensor's NCHW uint8 pixels; its C x H x W logits come from
                            picamera2's `IMX500.get_outputs`, see imx500.py)
            dtype           "float32" | "uint8" (a HEF and an IMX500 network take uint8)
            normalization   {mean: [r, g, b], std: [r, g, b]} applied to 0-255 RGB input on the host as
                            (x - mean) / std, or null when the graph normalises itself (always null for a HEF:
                            the model script's `normalization` layer runs on the chip)
        output
            kind            "logits" (class scores per pixel) | "argmax" (class id per pixel, on-graph)
                            for semantic models; "yolov8-seg" for instance models
        classes     [{name, color: [r, g, b] 0-255}], index = class id the model predicts
        postprocess {conf, iou, reg_max, mask_dim}: required for instance models, absent or null otherwise
        gate        {..., passed: bool}: the accuracy gate's results; the runtime refuses a model that failed

Semantic input is the frame resized to width x height (no letterbox, as in training); instance input is
letterboxed (see letterbox.py). Colours are RGB like the label tables; the runtime converts for OpenCV.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from idd_edge_runtime.formats import BY_MANIFEST_NAME, HEF, IMX500

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODELS_DIR = "models"
RUNTIME_DIR = "runtime"

ROLES = ("semantic", "instance")
FORMATS = tuple(sorted(BY_MANIFEST_NAME))  # ("hef", "imx500", "onnx", "onnx-int8")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "uint8")
SEMANTIC_OUTPUT_KINDS = ("logits", "argmax")
INSTANCE_OUTPUT_KINDS = ("yolov8-seg",)
LABEL_LEVELS = ("level1", "level2", "level3")
HW_ARCHES = ("hailo8", "hailo8l", "hailo10h")

#: Dataflow Compiler -> HailoRT (major.minor) pairs. Hailo-8/8L: DFC 3.x with HailoRT 4.x. Hailo-10H (AI HAT+ 2):
#: DFC 5.x with HailoRT 5.x, a separate line (HailoRT's master branch; Hailo-8 stays on its hailo8 branch) that
#: cannot be installed beside 4.x on one Pi. Only pairs seen published are listed (5.2/5.2: a DFC 5.2.0 +
#: HailoRT 5.2.0 Hailo-10H setup on the Hailo community forum); others fall back to "same major" checks.
DFC_TO_HAILORT: Dict[str, str] = {
    "3.27": "4.17",
    "3.28": "4.18",
    "3.29": "4.19",
    "3.31": "4.21",
    "3.32": "4.22",
    "3.33": "4.23",
    "5.2": "5.2",
}
#: The DFC and HailoRT major versions each architecture needs.
DFC_MAJOR_FOR_ARCH: Dict[str, int] = {"hailo8": 3, "hailo8l": 3, "hailo10h": 5}
HAILORT_MAJOR_FOR_ARCH: Dict[str, int] = {"hailo8": 4, "hailo8l": 4, "hailo10h": 5}

_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
_DOTTED_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


class ManifestError(Exception):
    """A bundle or manifest the runtime cannot use; names the file and what to fix."""

    def __init__(self, path: "str | os.PathLike[str] | None", problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CompatibilityError(ManifestError):
    """The bundle's HEFs do not fit this device or its HailoRT; the message says what to do."""


@dataclass(frozen=True)
class Normalization:
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


@dataclass(frozen=True)
class InputSpec:
    width: int
    height: int
    layout: str
    dtype: str
    normalization: Optional[Normalization]


@dataclass(frozen=True)
class ClassInfo:
    name: str
    color: Tuple[int, int, int]


@dataclass(frozen=True)
class PostprocessSpec:
    conf: float
    iou: float
    reg_max: int
    mask_dim: int


@dataclass(frozen=True)
class ModelEntry:
    name: str
    role: str
    format: str
    file: str
    sha256: str
    input: InputSpec
    output_kind: str
    classes: Tuple[ClassInfo, ...]
    postprocess: Optional[PostprocessSpec]
    gate: Mapping[str, Any]

    @property
    def gate_passed(self) -> bool:
        return bool(self.gate.get("passed"))

    @property
    def is_hef(self) -> bool:
        return self.format == HEF.manifest

    @property
    def is_imx500(self) -> bool:
        return self.format == IMX500.manifest

    @property
    def label(self) -> str:
        """Human name of this entry: model name and format."""
        return f"{self.name} ({self.format})"


@dataclass(frozen=True)
class HailoInfo:
    hw_arch: Optional[str] = None
    dfc_version: Optional[str] = None
    hailort_version: Optional[str] = None


@dataclass(frozen=True)
class SourceInfo:
    git_commit: Optional[str]
    dirty: bool
    dvc_data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    format_version: int
    version: str
    created: str
    label_level: str
    source: SourceInfo
    hailo: HailoInfo
    models: Tuple[ModelEntry, ...]

    def model_names(self, role: str) -> List[str]:
        """Distinct model names of a role, in manifest order."""
        names: List[str] = []
        for entry in self.models:
            if entry.role == role and entry.name not in names:
                names.append(entry.name)
        return names

    def entries(self, name: str) -> List[ModelEntry]:
        """All formats of one model, in manifest order."""
        return [entry for entry in self.models if entry.name == name]

    @property
    def has_hef(self) -> bool:
        return any(entry.is_hef for entry in self.models)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (what manifest.json holds); `parse_manifest(m.to_dict())` round-trips."""
        return {
            "format_version": self.format_version,
            "version": self.version,
            "created": self.created,
            "label_level": self.label_level,
            "source": {
                "git_commit": self.source.git_commit,
                "dirty": self.source.dirty,
                "dvc_data": dict(self.source.dvc_data),
            },
            "hailo": {
                "hw_arch": self.hailo.hw_arch,
                "dfc_version": self.hailo.dfc_version,
                "hailort_version": self.hailo.hailort_version,
            },
            "models": [_entry_to_dict(entry) for entry in self.models],
        }


def _entry_to_dict(entry: ModelEntry) -> Dict[str, Any]:
    norm = entry.input.normalization
    data: Dict[str, Any] = {
        "name": entry.name,
        "role": entry.role,
        "format": entry.format,
        "file": entry.file,
        "sha256": entry.sha256,
        "input": {
            "width": entry.input.width,
            "height": entry.input.height,
            "layout": entry.input.layout,
            "dtype": entry.input.dtype,
            "normalization": None if norm is None else {"mean": list(norm.mean), "std": list(norm.std)},
        },
        "output": {"kind": entry.output_kind},
        "classes": [{"name": c.name, "color": list(c.color)} for c in entry.classes],
    }
    if entry.postprocess is not None:
        post = entry.postprocess
        data["postprocess"] = {"conf": post.conf, "iou": post.iou, "reg_max": post.reg_max, "mask_dim": post.mask_dim}
    data["gate"] = dict(entry.gate)
    return data


# ---------------------------------------------------------------------------------------------- parsing


class _Reader:
    """Typed access to one JSON object, with errors that name the field (`models[2].input.width`)."""

    def __init__(self, obj: Any, where: str, path: Optional[str]):
        if not isinstance(obj, dict):
            raise ManifestError(path, f"{where or 'manifest'} must be an object, got {type(obj).__name__}")
        self.obj, self.where, self.path = obj, where, path

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> ManifestError:
        return ManifestError(self.path, f"{self._name(key)}: {problem}")

    def only(self, allowed: Sequence[str], optional: Sequence[str] = ()) -> None:
        unknown = sorted(set(self.obj) - set(allowed) - set(optional))
        if unknown:
            raise ManifestError(self.path, f"{self.where or 'manifest'}: unknown field(s) {unknown}")
        missing = [key for key in allowed if key not in self.obj]
        if missing:
            raise ManifestError(self.path, f"{self.where or 'manifest'}: missing field(s) {missing}")

    def raw(self, key: str) -> Any:
        return self.obj.get(key)

    def string(self, key: str, pattern: "re.Pattern[str] | None" = None, choices: Sequence[str] = (), nullable: bool = False) -> Optional[str]:
        value = self.obj.get(key)
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string{' or null' if nullable else ''}, got {value!r}")
        if choices and value not in choices:
            raise self.fail(key, f"must be one of {list(choices)}, got {value!r}")
        if pattern is not None and not pattern.match(value):
            raise self.fail(key, f"{value!r} does not match {pattern.pattern}")
        return value

    def integer(self, key: str, minimum: int = 1) -> int:
        value = self.obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, low: float, high: float, low_open: bool = False) -> float:
        value = self.obj.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if value > high or value < low or (low_open and value == low):
            raise self.fail(key, f"must be in {'(' if low_open else '['}{low}, {high}], got {value!r}")
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self.obj.get(key)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def child(self, key: str) -> "_Reader":
        return _Reader(self.obj.get(key), self._name(key), self.path)


def parse_manifest(data: Any, path: "str | os.PathLike[str] | None" = None) -> Manifest:
    """Validate the JSON form of a manifest and return it typed; raises ManifestError naming the field."""
    where = None if path is None else os.fspath(path)
    top = _Reader(data, "", where)
    top.only(("format_version", "version", "created", "label_level", "source", "hailo", "models"))
    format_version = top.raw("format_version")
    if format_version != FORMAT_VERSION:
        if isinstance(format_version, int) and not isinstance(format_version, bool) and format_version > FORMAT_VERSION:
            raise ManifestError(
                where,
                f"format_version {format_version} is newer than this runtime reads ({FORMAT_VERSION}): "
                "install the idd-edge-runtime from the bundle's runtime/ folder",
            )
        raise top.fail("format_version", f"must be {FORMAT_VERSION}, got {format_version!r}")
    version = top.string("version", _VERSION_NAME)
    created = top.string("created")
    _check_timestamp(created, top)
    label_level = top.string("label_level", choices=LABEL_LEVELS)
    source = _parse_source(top.child("source"))
    hailo = _parse_hailo(top.child("hailo"))
    models_raw = top.raw("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise top.fail("models", "must be a non-empty list")
    models = tuple(_parse_model(_Reader(item, f"models[{i}]", where)) for i, item in enumerate(models_raw))
    manifest = Manifest(FORMAT_VERSION, version, created, label_level, source, hailo, models)  # type: ignore[arg-type]
    _check_consistency(manifest, where)
    return manifest


def _check_timestamp(value: Optional[str], reader: _Reader) -> None:
    text = str(value)
    try:
        stamp = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise reader.fail("created", f"{text!r} is not an ISO-8601 timestamp") from None
    if stamp.tzinfo is None:
        raise reader.fail("created", f"{text!r} has no time zone (write UTC, e.g. +00:00)")


def _parse_source(reader: _Reader) -> SourceInfo:
    reader.only(("git_commit", "dirty", "dvc_data"))
    commit = reader.string("git_commit", _GIT_COMMIT, nullable=True)
    dvc_data = reader.raw("dvc_data")
    if not isinstance(dvc_data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in dvc_data.items()):
        raise reader.fail("dvc_data", "must be an object of path -> hash strings")
    return SourceInfo(commit, reader.boolean("dirty"), dict(dvc_data))


def _parse_hailo(reader: _Reader) -> HailoInfo:
    reader.only(("hw_arch", "dfc_version", "hailort_version"))
    hw_arch = reader.string("hw_arch", choices=HW_ARCHES, nullable=True)
    dfc = reader.string("dfc_version", _DOTTED_VERSION, nullable=True)
    hailort = reader.string("hailort_version", _DOTTED_VERSION, nullable=True)
    if dfc is not None:
        wanted = DFC_MAJOR_FOR_ARCH.get(hw_arch or "", 3)
        if major_minor(dfc)[0] != wanted:
            raise reader.fail("dfc_version", f"{dfc}: {hw_arch or 'Hailo-8/8L'} HEFs come from DFC {wanted}.x "
                                             "(DFC 3.x: Hailo-8/8L; DFC 5.x: Hailo-10H)")
        paired = DFC_TO_HAILORT.get(_mm_text(dfc))
        if paired is not None and hailort is not None and _mm_text(hailort) != paired:
            raise reader.fail("hailort_version", f"{hailort} does not pair with DFC {dfc} (DFC {_mm_text(dfc)} pairs with HailoRT {paired})")
    return HailoInfo(hw_arch, dfc, hailort)


def _parse_model(reader: _Reader) -> ModelEntry:
    reader.only(("name", "role", "format", "file", "sha256", "input", "output", "classes", "gate"), optional=("postprocess",))
    name = reader.string("name")
    role = reader.string("role", choices=ROLES)
    fmt = reader.string("format", choices=FORMATS)
    file = reader.string("file")
    _check_model_path(str(file), reader)
    sha256 = reader.string("sha256", _SHA256)
    input_spec = _parse_input(reader.child("input"), fmt)
    output = reader.child("output")
    output.only(("kind",))
    kind = output.string("kind", choices=SEMANTIC_OUTPUT_KINDS if role == "semantic" else INSTANCE_OUTPUT_KINDS)
    classes = _parse_classes(reader)
    if kind == "argmax" and len(classes) > 256:
        raise reader.fail("classes", f"{len(classes)} classes do not fit an on-graph argmax in uint8")
    postprocess = None
    if role == "instance":
        post = reader.child("postprocess")
        post.only(("conf", "iou", "reg_max", "mask_dim"))
        postprocess = PostprocessSpec(
            conf=post.number("conf", 0.0, 1.0, low_open=True),
            iou=post.number("iou", 0.0, 1.0, low_open=True),
            reg_max=post.integer("reg_max"),
            mask_dim=post.integer("mask_dim"),
        )
    elif reader.raw("postprocess") is not None:
        raise reader.fail("postprocess", "only instance models have post-processing settings")
    gate = reader.child("gate")
    gate.boolean("passed")
    return ModelEntry(str(name), str(role), str(fmt), str(file), str(sha256), input_spec, str(kind), classes, postprocess, dict(gate.obj))


def _check_model_path(file: str, reader: _Reader) -> None:
    pure = PurePosixPath(file)
    if "\\" in file or pure.is_absolute() or ".." in pure.parts or len(pure.parts) < 2 or pure.parts[0] != MODELS_DIR:
        raise reader.fail("file", f"{file!r} must be a relative POSIX path under {MODELS_DIR}/ without '..'")


def _parse_input(reader: _Reader, fmt: Optional[str]) -> InputSpec:
    reader.only(("width", "height", "layout", "dtype", "normalization"))
    layout = str(reader.string("layout", choices=LAYOUTS))
    dtype = str(reader.string("dtype", choices=DTYPES))
    norm_raw = reader.raw("normalization")
    normalization = None
    if norm_raw is not None:
        norm = reader.child("normalization")
        norm.only(("mean", "std"))
        mean, std = norm.raw("mean"), norm.raw("std")
        if not _three_numbers(mean) or not _three_numbers(std) or min(std) <= 0:
            raise reader.fail("normalization", "needs mean and std as three numbers each (RGB, 0-255 scale), std > 0")
        normalization = Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std))  # type: ignore[arg-type]
    if fmt == HEF.manifest:
        if layout != "NHWC" or dtype != "uint8":
            raise reader.fail("layout", f"a HEF takes NHWC uint8 input, manifest says {layout} {dtype}")
        if normalization is not None:
            raise reader.fail(
                "normalization",
                "must be null for a HEF: the model script normalises on the chip (host normalisation would apply it twice)",
            )
    if fmt == IMX500.manifest and (layout, dtype, normalization) != (IMX500.layout, IMX500.dtype, None):
        raise reader.fail("layout", f"an IMX500 network takes the sensor's {IMX500.layout} {IMX500.dtype} pixels and "
                                    f"normalises them itself (normalization null), manifest says {layout} {dtype}")
    if dtype == "uint8" and normalization is not None:
        raise reader.fail("normalization", "uint8 input cannot carry host normalisation; use float32 or put it on the graph")
    return InputSpec(reader.integer("width"), reader.integer("height"), layout, dtype, normalization)


def _three_numbers(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def _parse_classes(reader: _Reader) -> Tuple[ClassInfo, ...]:
    raw = reader.raw("classes")
    if not isinstance(raw, list) or not raw:
        raise reader.fail("classes", "must be a non-empty list of {name, color}")
    classes = []
    for i, item in enumerate(raw):
        entry = _Reader(item, f"{reader.where}.classes[{i}]", reader.path)
        entry.only(("name", "color"))
        color = entry.raw("color")
        if not (
            isinstance(color, list)
            and len(color) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
        ):
            raise entry.fail("color", f"must be [r, g, b] integers 0-255, got {color!r}")
        classes.append(ClassInfo(str(entry.string("name")), (color[0], color[1], color[2])))
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise reader.fail("classes", f"class names repeat: {names}")
    return tuple(classes)


def _check_consistency(manifest: Manifest, where: Optional[str]) -> None:
    seen: Dict[Tuple[str, str], int] = {}
    first_of_name: Dict[str, ModelEntry] = {}
    files: Dict[str, str] = {}
    for i, entry in enumerate(manifest.models):
        key = (entry.name, entry.format)
        if key in seen:
            raise ManifestError(where, f"models[{i}]: {entry.label} is listed twice (also models[{seen[key]}])")
        seen[key] = i
        if entry.file in files:
            raise ManifestError(where, f"models[{i}]: file {entry.file} is also used by {files[entry.file]}")
        files[entry.file] = entry.label
        first = first_of_name.setdefault(entry.name, entry)
        if first.role != entry.role or first.classes != entry.classes:
            raise ManifestError(
                where, f"models[{i}]: {entry.label} must have the same role and classes as {first.label} (same network)"
            )
    instance_names = manifest.model_names("instance")
    if len(instance_names) > 1:
        raise ManifestError(where, f"at most one instance model per bundle, found {instance_names}")
    if manifest.has_hef:
        missing = [k for k, v in vars(manifest.hailo).items() if v is None]
        if missing:
            raise ManifestError(where, f"hailo: {missing} must be set when the bundle contains HEF files")


# ---------------------------------------------------------------------------------------------- bundle files


def sha256_file(path: "str | os.PathLike[str]", chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(bundle_dir: "str | os.PathLike[str]") -> Manifest:
    """Read and validate `<bundle_dir>/manifest.json` (no checksum verification)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not Path(bundle_dir).is_dir():
        raise ManifestError(bundle_dir, "is not a bundle directory (expected a folder with manifest.json)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(path, "missing: not an idd-edge bundle") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return parse_manifest(data, path)


def verify_checksums(bundle_dir: "str | os.PathLike[str]", manifest: Manifest, names: Optional[Sequence[str]] = None) -> None:
    """Check every model file (or those of `names`) exists and matches its sha256; reports all problems at once."""
    bundle = Path(bundle_dir)
    problems = []
    for entry in manifest.models:
        if names is not None and entry.name not in names:
            continue
        path = bundle / entry.file
        if not path.is_file():
            problems.append(f"{entry.file} is missing")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{entry.file} does not match its sha256 (corrupt or replaced)")
    if problems:
        raise ManifestError(bundle, "; ".join(problems) + ": ship the bundle again")


def load_bundle(bundle_dir: "str | os.PathLike[str]", verify: bool = True) -> Manifest:
    """Load a bundle's manifest, verifying model checksums unless `verify` is False."""
    manifest = load_manifest(bundle_dir)
    if verify:
        verify_checksums(bundle_dir, manifest)
    return manifest


def bundle_file_list(bundle_dir: "str | os.PathLike[str]") -> List[str]:
    """Every regular file of a bundle, relative POSIX paths, sorted (what shipping transfers and verifies)."""
    root = Path(bundle_dir)
    files = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            full = Path(dirpath) / filename
            if full.is_file():
                files.append(full.relative_to(root).as_posix())
    return sorted(files)


# ---------------------------------------------------------------------------------------------- compatibility


def major_minor(version: str) -> Tuple[int, int]:
    match = _DOTTED_VERSION.match(version.strip())
    if not match:
        raise ValueError(f"not a version number: {version!r}")
    return int(match.group(1)), int(match.group(2))


def _mm_text(version: str) -> str:
    major, minor = major_minor(version)
    return f"{major}.{minor}"


def check_hailo_compatibility(manifest: Manifest, device_arch: Optional[str], hailort_version: Optional[str]) -> None:
    """Refuse HEFs the device cannot run, before HailoRT fails with a cryptic status code.

    `device_arch` is "hailo8", "hailo8l" or "hailo10h" as detected on the device; `hailort_version` the installed
    HailoRT library version. Raises CompatibilityError with the fix in the message.
    """
    hailo = manifest.hailo
    if not manifest.has_hef:
        return
    if device_arch is None:
        raise CompatibilityError(None, "no Hailo device found (`hailortcli fw-control identify` fails): check the PCIe connection and that the hailo driver is loaded, or run with --backend onnx")
    if hailo.hw_arch != device_arch:
        raise CompatibilityError(
            None,
            f"bundle {manifest.version} was compiled for {hailo.hw_arch} but this device is a {device_arch} "
            f"(HailoRT would fail with HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE): rebuild the bundle with "
            f"hailo.hw_arch={device_arch}, or run its ONNX fallback with --backend onnx",
        )
    if hailort_version is None:
        raise CompatibilityError(None, "HailoRT is not installed: `sudo apt install hailo-all`, then reboot")
    needed = major_minor(str(hailo.hailort_version))
    have = major_minor(hailort_version)
    line = HAILORT_MAJOR_FOR_ARCH.get(device_arch)
    if line is not None and have[0] != line:
        raise CompatibilityError(
            None,
            f"this {device_arch} needs HailoRT {line}.x but HailoRT {hailort_version} is installed (HailoRT 4.x drives "
            f"Hailo-8/8L, 5.x drives Hailo-10H; the two cannot be installed together): install the HailoRT "
            f"{line}.x packages for this board",
        )
    if have[0] != needed[0] or have < needed:
        raise CompatibilityError(
            None,
            f"HEFs of bundle {manifest.version} were compiled with DFC {hailo.dfc_version}, which needs HailoRT "
            f">= {needed[0]}.{needed[1]}, but this device has HailoRT {hailort_version} (HailoRT would fail with "
            f"HAILO_HEF_NOT_SUPPORTED): upgrade with `sudo apt update && sudo apt install hailo-all`, or recompile "
            f"with the DFC that pairs with {have[0]}.{have[1]} ({_dfc_for(have)})",
        )


def _dfc_for(hailort: Tuple[int, int]) -> str:
    text = f"{hailort[0]}.{hailort[1]}"
    matches = [dfc for dfc, rt in DFC_TO_HAILORT.items() if rt == text]
    return f"DFC {matches[0]}" if matches else "see Hailo's DFC/HailoRT compatibility table"
