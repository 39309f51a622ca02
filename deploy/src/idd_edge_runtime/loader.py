"""Open a bundle on this machine: check it, pick a backend per model, load what can be loaded.

Per model name the runtime prefers its HEF when HailoRT and a compatible Hailo device are present,
else the ONNX fallback of the same name (int8 before float: faster on a CPU and it passed the same gate).
A model whose files fail their checksum, whose gate failed, or whose backend refuses it is reported and
skipped; the app runs with the others. Only a bundle with nothing loadable at all is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

from idd_edge_runtime import hailo
from idd_edge_runtime.backends import BackendError, open_session
from idd_edge_runtime.formats import HEF, MODEL_FORMATS
from idd_edge_runtime.instance import InstanceModel
from idd_edge_runtime.manifest import (
    CompatibilityError,
    Manifest,
    ManifestError,
    ModelEntry,
    check_hailo_compatibility,
    load_manifest,
    sha256_file,
)
from idd_edge_runtime.semantic import SemanticModel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "hailo", "onnx")
_CPU_FORMAT_ORDER = tuple(fmt.manifest for fmt in MODEL_FORMATS if fmt is not HEF)  # int8 first


@dataclass
class LoadedBundle:
    """The models of one bundle that loaded, and why the others did not."""

    bundle_dir: Path
    manifest: Manifest
    semantic: Dict[str, SemanticModel] = field(default_factory=dict)
    instance: Optional[InstanceModel] = None
    failures: Dict[str, str] = field(default_factory=dict)
    hailo_device: Optional[hailo.HailoDevice] = None
    device_info: Optional[hailo.DeviceInfo] = None
    hailo_note: Optional[str] = None

    def messages(self) -> List[str]:
        notes = [f"{name}: not available: {why}" for name, why in self.failures.items()]
        return ([self.hailo_note] if self.hailo_note else []) + notes

    def describe(self) -> str:
        loaded = [f"{m.name} [{m.entry.format}/{m.session.backend}]" for m in self.semantic.values()]
        if self.instance is not None:
            loaded.append(f"{self.instance.name} [{self.instance.entry.format}/{self.instance.session.backend}]")
        return f"bundle {self.manifest.version}: " + ", ".join(loaded)

    def close(self) -> None:
        for model in self.semantic.values():
            model.session.close()
        if self.instance is not None:
            self.instance.session.close()
        if self.hailo_device is not None:
            self.hailo_device.close()


def _open_hailo(manifest: Manifest, backend: str, hailo_platform: Optional[ModuleType]) -> "tuple[Optional[hailo.HailoDevice], Optional[hailo.DeviceInfo], Optional[str]]":
    """The shared Hailo device when this bundle's HEFs can run here; else (None, info, why not)."""
    if backend == "hailo" and not manifest.has_hef:
        raise CompatibilityError(None, f"bundle {manifest.version} has no HEF: run it with --backend onnx or auto")
    if backend == "onnx" or not manifest.has_hef:
        return None, None, None
    hp = hailo_platform if hailo_platform is not None else hailo.import_hailo_platform()
    if hp is None:
        why = "HailoRT's Python package (hailo_platform) is not installed: `sudo apt install hailo-all` (using ONNX fallbacks)"
        if backend == "hailo":
            raise CompatibilityError(None, why)
        return None, None, why
    info = hailo.detect_device(hp)
    try:
        check_hailo_compatibility(manifest, info.arch if info else None, hailo.hailort_version(hp))
        device = hailo.HailoDevice(hp)
    except (CompatibilityError, BackendError) as exc:
        if backend == "hailo":
            raise
        return None, info, f"HEFs refused: {exc} (using ONNX fallbacks)"
    return device, info, None


def load_runtime(
    bundle_dir: "str | Path",
    backend: str = "auto",
    verify: bool = True,
    onnx_threads: int = 0,
    allow_failed_gate: bool = False,
    hailo_platform: Optional[ModuleType] = None,
) -> LoadedBundle:
    """Load every usable model of the bundle (see module doc); raises ManifestError if none loads."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    bundle = Path(bundle_dir)
    manifest = load_manifest(bundle)
    device, info, note = _open_hailo(manifest, backend, hailo_platform)
    if note:
        log.warning(note)
    loaded = LoadedBundle(bundle, manifest, hailo_device=device, device_info=info, hailo_note=note)
    for role in ("semantic", "instance"):
        for name in manifest.model_names(role):
            _load_model(loaded, manifest.entries(name), device, verify, onnx_threads, allow_failed_gate)
    if not loaded.semantic and loaded.instance is None:
        loaded.close()
        raise ManifestError(bundle, "no model could be loaded: " + "; ".join(loaded.messages()))
    for message in loaded.messages():
        log.warning(message)
    return loaded


def _candidates(entries: List[ModelEntry], device: Optional[hailo.HailoDevice]) -> List[ModelEntry]:
    order = ((HEF.manifest,) if device is not None else ()) + _CPU_FORMAT_ORDER
    return sorted((e for e in entries if e.format in order), key=lambda e: order.index(e.format))


def _load_model(
    loaded: LoadedBundle,
    entries: List[ModelEntry],
    device: Optional[hailo.HailoDevice],
    verify: bool,
    onnx_threads: int,
    allow_failed_gate: bool,
) -> None:
    name = entries[0].name
    reasons = []
    candidates = _candidates(entries, device)
    if not candidates:
        reasons.append("only a HEF, and no usable Hailo device" + (f" ({loaded.hailo_note})" if loaded.hailo_note else ""))
    for entry in candidates:
        if not entry.gate_passed and not allow_failed_gate:
            reasons.append(f"{entry.format} failed its accuracy gate (rebuild the bundle, or --allow-failed-gate)")
            continue
        path = loaded.bundle_dir / entry.file
        if verify:
            if not path.is_file():
                reasons.append(f"{entry.file} is missing")
                continue
            if sha256_file(path) != entry.sha256:
                reasons.append(f"{entry.file} does not match its sha256 (corrupt: ship the bundle again)")
                continue
        try:
            session = open_session(entry, path, device, onnx_threads=onnx_threads)
            model = SemanticModel(session) if entry.role == "semantic" else InstanceModel(session)
        except (BackendError, ValueError) as exc:
            reasons.append(str(exc))
            continue
        if reasons:
            log.warning("%s: using %s (%s)", name, entry.format, "; ".join(reasons))
        if entry.role == "semantic":
            loaded.semantic[name] = model  # type: ignore[assignment]
        else:
            loaded.instance = model  # type: ignore[assignment]
        return
    loaded.failures[name] = "; ".join(reasons)
