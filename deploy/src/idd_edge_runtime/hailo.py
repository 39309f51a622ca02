"""HailoRT backend (InferModel API) and Hailo device detection.

All HEFs of the process share one VDevice created with `group_id = "SHARED"` and the ROUND_ROBIN
scheduler, so the semantic and the YOLO HEF run on one Hailo-8/8L without manual network switching.
Outputs are requested as FLOAT32 so HailoRT dequantises on the host side of the driver (UINT8 for an
on-chip argmax: class ids); the input is the raw uint8 NHWC RGB frame (the model script normalises on
the chip).

`hailo_platform` comes from Hailo's apt packages on the Pi (`hailo-all`); this module imports it lazily
so the rest of the runtime works without it. The API sequence is pinned by a contract test with a
stand-in module (tests/test_runtime_hailo_contract.py), because the real SDK cannot run off the device.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, List, Optional

import numpy as np

from idd_edge_runtime.backends import BackendError
from idd_edge_runtime.manifest import ModelEntry

log = logging.getLogger(__name__)

#: Upper bound for one synchronous inference; a healthy Hailo-8 answers in milliseconds.
RUN_TIMEOUT_MS = 10_000

_ARCH_LINE = re.compile(r"Device Architecture:\s*(\S+)")
_FIRMWARE_LINE = re.compile(r"Firmware Version:\s*(\d+\.\d+\.\d+)")
_CLI_VERSION = re.compile(r"version\s+(\d+\.\d+\.\d+)", re.IGNORECASE)

#: Known failure texts of HailoRT and the fix to print beside them.
_HINTS = (
    ("HEF_NOT_COMPATIBLE_WITH_DEVICE", "the HEF was compiled for another Hailo architecture (hailo8 / hailo8l / hailo10h): rebuild the bundle for this device"),
    ("HEF format is not compatible", "the HEF was compiled for another Hailo architecture (hailo8 / hailo8l / hailo10h): rebuild the bundle for this device"),
    ("HEF_NOT_SUPPORTED", "the HEF is newer than this HailoRT: `sudo apt install hailo-all` or recompile with the matching DFC"),
    ("Driver version", "the hailo PCIe driver and HailoRT library differ: reinstall `hailo-all` and reboot"),
    ("OUT_OF_PHYSICAL_DEVICES", "another process holds the Hailo device: stop it, or enable the hailort service (multi-process)"),
)


@dataclass(frozen=True)
class DeviceInfo:
    """What `hailortcli fw-control identify` (or the Device API) says about the accelerator."""

    arch: str  # "hailo8" | "hailo8l" | other lower-case architecture names
    firmware_version: Optional[str]
    via: str  # "device-api" | "hailortcli"


def arch_name(raw: str) -> str:
    """Device API / hailortcli architecture name to the manifest's hw_arch ("HAILO8L" -> "hailo8l")."""
    name = str(raw).strip().lower()
    name = name.split(".")[-1]  # "DeviceArchitectureTypes.HAILO8L" on some Python versions
    return "hailo8" if name == "hailo8_a0" else name


def parse_identify(text: str) -> Optional[DeviceInfo]:
    """Parse `hailortcli fw-control identify` output; None when it names no device architecture."""
    arch = _ARCH_LINE.search(text)
    if arch is None:
        return None
    firmware = _FIRMWARE_LINE.search(text)
    return DeviceInfo(arch_name(arch.group(1)), firmware.group(1) if firmware else None, "hailortcli")


def import_hailo_platform() -> Optional[ModuleType]:
    """The hailo_platform module, or None where HailoRT's Python package is not installed."""
    try:
        return importlib.import_module("hailo_platform")
    except ImportError:
        return None
    except Exception as exc:  # a broken install (e.g. _pyhailort built for another Python) raises other errors
        log.warning("hailo_platform is installed but fails to import: %s", exc)
        return None


def detect_device(
    hailo_platform: Optional[ModuleType] = None,
    run: Callable[..., "subprocess.CompletedProcess[str]"] = subprocess.run,
) -> Optional[DeviceInfo]:
    """Find the first Hailo device: through the Device API when available, else `hailortcli`."""
    if hailo_platform is not None:
        with contextlib.suppress(Exception):
            device_ids = hailo_platform.Device.scan()
            if not device_ids:
                return None
            device = hailo_platform.Device(device_ids[0])
            try:
                info = device.control.identify()
            finally:
                with contextlib.suppress(Exception):
                    device.release()
            firmware = _FIRMWARE_LINE.search(f"Firmware Version: {info.firmware_version}")
            return DeviceInfo(arch_name(str(info.device_architecture)), firmware.group(1) if firmware else None, "device-api")
    if shutil.which("hailortcli") is None:
        return None
    try:
        result = run(["hailortcli", "fw-control", "identify"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("hailortcli fw-control identify failed: %s", exc)
        return None
    if result.returncode != 0:
        log.info("hailortcli fw-control identify: %s", (result.stderr or result.stdout).strip()[-300:])
        return None
    return parse_identify(result.stdout)


def hailort_version(
    hailo_platform: Optional[ModuleType] = None,
    run: Callable[..., "subprocess.CompletedProcess[str]"] = subprocess.run,
) -> Optional[str]:
    """The installed HailoRT library version ("4.23.0"), or None."""
    if hailo_platform is not None and isinstance(getattr(hailo_platform, "__version__", None), str):
        return hailo_platform.__version__
    if shutil.which("hailortcli") is None:
        return None
    try:
        result = run(["hailortcli", "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _CLI_VERSION.search(result.stdout or "")
    return match.group(1) if match else None


def explain(exc: BaseException) -> str:
    """HailoRT's error text plus the fix, when it is a known failure."""
    text = str(exc)
    for needle, hint in _HINTS:
        if needle in text:
            return f"{text} -> {hint}"
    return text


class HailoDevice:
    """One shared VDevice (group "SHARED", ROUND_ROBIN scheduling) that opens HEFs as HailoSessions."""

    def __init__(self, hailo_platform: Optional[ModuleType] = None):
        hp = hailo_platform or import_hailo_platform()
        if hp is None:
            raise BackendError("HailoRT's Python package (hailo_platform) is not installed: `sudo apt install hailo-all`")
        self._hp = hp
        try:
            params = hp.VDevice.create_params()
            params.scheduling_algorithm = hp.HailoSchedulingAlgorithm.ROUND_ROBIN
            # One group for every HEF of this process: HailoRT time-shares the device between them.
            params.group_id = "SHARED"
            self._vdevice = hp.VDevice(params)
        except Exception as exc:
            raise BackendError(f"cannot open the Hailo device: {explain(exc)}") from exc
        self._sessions: List[HailoSession] = []

    def open(self, entry: ModelEntry, path: "str | os.PathLike[str]") -> "HailoSession":
        session = HailoSession(self._hp, self._vdevice, entry, path)
        self._sessions.append(session)
        return session

    def close(self) -> None:
        for session in self._sessions:
            session.close()
        self._sessions.clear()
        if self._vdevice is not None:
            with contextlib.suppress(Exception):
                self._vdevice.release()
            self._vdevice = None


class HailoSession:
    """One HEF configured on the shared VDevice; `run` is a synchronous inference of one frame."""

    backend = "hailort"

    def __init__(self, hp: ModuleType, vdevice: object, entry: ModelEntry, path: "str | os.PathLike[str]"):
        self.entry = entry
        self._stack = contextlib.ExitStack()
        try:
            infer_model = vdevice.create_infer_model(os.fspath(path))  # type: ignore[attr-defined]
            infer_model.set_batch_size(1)
            infer_model.input().set_format_type(hp.FormatType.UINT8)
            self._output_names = list(infer_model.output_names)
            # FLOAT32: HailoRT dequantises ((q - zero_point) * scale) so post-processing sees real values.
            # An on-chip argmax is a class-id map: kept as UINT8, there is nothing to dequantise.
            on_chip_argmax = entry.output_kind == "argmax"
            self._output_dtype = np.uint8 if on_chip_argmax else np.float32
            output_format = hp.FormatType.UINT8 if on_chip_argmax else hp.FormatType.FLOAT32
            for name in self._output_names:
                infer_model.output(name).set_format_type(output_format)
            self._input_shape = tuple(int(d) for d in infer_model.input().shape)
            self._output_shapes = {name: tuple(int(d) for d in infer_model.output(name).shape) for name in self._output_names}
            self._configured = self._stack.enter_context(infer_model.configure())
        except Exception as exc:
            self._stack.close()
            raise BackendError(f"{entry.label}: HailoRT cannot load {path}: {explain(exc)}") from exc
        self._infer_model = infer_model  # keeps the VDevice alive as long as this session
        expected = (entry.input.height, entry.input.width, 3)
        if self._input_shape != expected:
            self.close()
            raise BackendError(f"{entry.label}: the HEF input is {self._input_shape} but the manifest says {expected} (HWC)")

    @property
    def output_names(self) -> List[str]:
        return list(self._output_names)

    def run(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        frame = np.ascontiguousarray(tensor[0] if tensor.ndim == 4 else tensor, dtype=np.uint8)
        # Fresh output buffers per frame: results travel to other pipeline threads while the next frame runs.
        buffers = {name: np.empty(shape, dtype=self._output_dtype) for name, shape in self._output_shapes.items()}
        try:
            bindings = self._configured.create_bindings(output_buffers=buffers)
            bindings.input().set_buffer(frame)
            self._configured.run([bindings], RUN_TIMEOUT_MS)
            return {name: bindings.output(name).get_buffer() for name in self._output_names}
        except Exception as exc:
            raise BackendError(f"{self.entry.label}: inference failed: {explain(exc)}") from exc

    def close(self) -> None:
        self._stack.close()
