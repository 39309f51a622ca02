"""CONTRACT TEST of the HailoRT backend against a stand-in `hailo_platform` module.

HailoRT (proprietary, Hailo's apt packages) cannot run here. The stand-in records every call and checks
arguments the way HailoRT does (buffer shape, dtype, contiguity), so these tests pin the documented
InferModel sequence: VDevice params (group_id "SHARED", ROUND_ROBIN) -> create_infer_model per HEF ->
input UINT8 / outputs FLOAT32 -> configure -> create_bindings(output_buffers) -> set_buffer -> run.
What they cannot prove is that the real SDK behaves as documented; that needs a Pi with a Hailo-8/8L.
"""

from __future__ import annotations

import enum
import json
import sys
import types
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest

from idd_edge_runtime import hailo
from idd_edge_runtime.engine import Engine, Settings
from idd_edge_runtime.loader import load_runtime
from idd_edge_runtime.manifest import CompatibilityError
from idd_edge_runtime.yolo_postprocess import hailo_output_shapes
from tests._runtime_bundle import (
    INSTANCE_SIZE,
    SEMANTIC_SIZE,
    build_onnx_bundle,
    instance_entry,
    make_frame,
    semantic_entry,
    write_manifest,
)

IDENTIFY_TEXT = """Executing on device: 0000:01:00.0
Identifying board
Control Protocol Version: 2
Firmware Version: 4.23.0 (release,app,extended context switch buffer)
Logger Version: 0
Board Name: Hailo-8
Device Architecture: HAILO8L
Serial Number: HLDDLBB234500054
Part Number: HM21LB1C2LAE
Product Name: HAILO-8L AI ACC M.2 B+M KEY MODULE EXT TMP
"""


def _semantic_logits(rgb: np.ndarray) -> np.ndarray:
    """What the test segmenter computes, as NHWC float32 logits (road, person, rider, sky)."""
    x = rgb.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return np.stack([np.full_like(r, 0.1), r - g - b, g - r - b, b - r - g], axis=-1)


def _yolo_outputs(rgb: np.ndarray) -> Dict[str, np.ndarray]:
    """Split YOLOv8-seg outputs with one confident 'person' at stride-8 cell (row 4, col 6): a 32x32 box."""
    outputs = {}
    for i, shape in enumerate(hailo_output_shapes((INSTANCE_SIZE, INSTANCE_SIZE), 2)):
        array = np.zeros(shape, dtype=np.float32)
        if shape[2] == 64 and shape[0] == INSTANCE_SIZE // 8:
            array[..., 2::16] = 10.0  # DFL peaks at bin 2: 2 cells of 8 px on every side
        if shape[2] == 2 and shape[0] == INSTANCE_SIZE // 8:
            array[4, 6, 0] = 0.9  # class scores arrive sigmoided from the chip
        if shape[2] == 32 and shape[0] == INSTANCE_SIZE // 4:
            array[..., 0] = 5.0  # prototype 0: mask logit +5 everywhere
        if shape[2] == 32 and shape[0] == INSTANCE_SIZE // 8:
            array[..., 0] = 1.0  # coefficient 0
        outputs[f"yolo/conv{i}"] = array
    return outputs


class FakeHailoPlatform:
    """Builds a stand-in `hailo_platform` module; `calls` records what the runtime did, in order."""

    def __init__(self, arch: str = "HAILO8L", version: str = "4.23.0"):
        self.calls: List[Tuple] = []
        self.models: Dict[str, Tuple[Tuple[int, ...], Callable[[np.ndarray], Dict[str, np.ndarray]]]] = {}
        self.arch, self.version = arch, version

    def register(self, hef_name: str, input_shape: Tuple[int, ...], compute: Callable[[np.ndarray], Dict[str, np.ndarray]]) -> None:
        self.models[hef_name] = (input_shape, compute)

    def module(self) -> types.ModuleType:
        calls, models, fake = self.calls, self.models, self
        mod = types.ModuleType("hailo_platform")
        mod.__version__ = self.version

        class FormatType(enum.Enum):
            UINT8 = "UINT8"
            FLOAT32 = "FLOAT32"

        class HailoSchedulingAlgorithm(enum.Enum):
            NONE = "NONE"
            ROUND_ROBIN = "ROUND_ROBIN"

        class Params:
            def __setattr__(self, name, value):
                calls.append(("params." + name, value))
                object.__setattr__(self, name, value)

        class Stream:
            def __init__(self, owner, direction, name, shape):
                self.owner, self.direction, self.name, self.shape = owner, direction, name, shape

            def set_format_type(self, fmt):
                calls.append((f"{self.direction}.set_format_type", self.name, fmt))
                self.owner.formats[(self.direction, self.name)] = fmt

        class Buffer:
            def __init__(self, direction, name, expected):
                self.direction, self.name, self.expected, self.buffer = direction, name, expected, None

            def set_buffer(self, buffer):
                if not buffer.flags.c_contiguous:
                    raise RuntimeError("Buffer must be C_CONTIGUOUS")
                if tuple(buffer.shape) != tuple(self.expected):
                    raise RuntimeError(f"buffer shape {buffer.shape} != stream shape {self.expected}")
                calls.append((f"bindings.{self.direction}.set_buffer", self.name, buffer.dtype.name, tuple(buffer.shape)))
                self.buffer = buffer

            def get_buffer(self):
                calls.append(("bindings.output.get_buffer", self.name))
                return self.buffer

        class Bindings:
            def __init__(self, model, output_buffers):
                self.model = model
                self._input = Buffer("input", "in", model.input_shape)
                self._outputs = {n: Buffer("output", n, s) for n, s in model.output_shapes.items()}
                for name, buffer in output_buffers.items():
                    self._outputs[name].set_buffer(buffer)

            def input(self, name=""):
                return self._input

            def output(self, name=""):
                return self._outputs[name]

        class Configured:
            def __init__(self, model):
                self.model = model

            def __enter__(self):
                calls.append(("configured.__enter__", self.model.name))
                return self

            def __exit__(self, *exc):
                calls.append(("configured.__exit__", self.model.name))

            def create_bindings(self, input_buffers=None, output_buffers=None):
                calls.append(("create_bindings", sorted(output_buffers or {})))
                return Bindings(self.model, output_buffers or {})

            def run(self, bindings, timeout):
                calls.append(("run", len(bindings), timeout))
                model = self.model
                assert model.formats[("input", "in")] is FormatType.UINT8
                (binding,) = bindings
                frame = binding.input().buffer
                if frame.dtype != np.uint8:
                    raise RuntimeError("input format is UINT8")
                for name, value in model.compute(frame).items():
                    out = binding.output(name).buffer
                    expected = np.uint8 if model.formats[("output", name)] is FormatType.UINT8 else np.float32
                    if out.dtype != expected:
                        raise RuntimeError(f"output {name}: buffer {out.dtype} does not match the format {expected.__name__}")
                    out[...] = value

        class InferModel:
            def __init__(self, path):
                self.name = Path(path).name
                self.input_shape, self.compute = models[self.name]
                example = self.compute(np.zeros(self.input_shape, np.uint8))
                self.output_shapes = {n: a.shape for n, a in example.items()}
                self.formats = {}

            def set_batch_size(self, size):
                calls.append(("set_batch_size", size))

            @property
            def output_names(self):
                return list(self.output_shapes)

            def input(self, name=""):
                return Stream(self, "input", "in", self.input_shape)

            def output(self, name=""):
                return Stream(self, "output", name, self.output_shapes[name])

            def configure(self):
                calls.append(("configure", self.name))
                return Configured(self)

        class VDevice:
            @staticmethod
            def create_params():
                calls.append(("VDevice.create_params",))
                return Params()

            def __init__(self, params=None):
                calls.append(("VDevice", params.group_id, params.scheduling_algorithm))

            def create_infer_model(self, hef_source, name=""):
                calls.append(("create_infer_model", Path(hef_source).name))
                return InferModel(hef_source)

            def release(self):
                calls.append(("VDevice.release",))

        class Identity:
            device_architecture = fake.arch
            firmware_version = f"{fake.version} (release,app)"

        class Control:
            def identify(self):
                calls.append(("identify",))
                return Identity()

        class Device:
            @staticmethod
            def scan():
                return ["0000:01:00.0"]

            def __init__(self, device_id=None):
                self.control = Control()

            def release(self):
                calls.append(("Device.release",))

        mod.FormatType, mod.HailoSchedulingAlgorithm, mod.VDevice, mod.Device = FormatType, HailoSchedulingAlgorithm, VDevice, Device
        return mod


def _hef_bundle(tmp_path: Path, arch: str = "hailo8l") -> Path:
    """The ONNX test bundle plus HEFs (opaque bytes) of the semantic and instance models."""
    bundle = build_onnx_bundle(tmp_path / "bundle")
    (bundle / "models" / "seg.hef").write_bytes(b"HEF semantic " * 10)
    (bundle / "models" / "yolo.hef").write_bytes(b"HEF yolo " * 10)
    data = json.loads((bundle / "manifest.json").read_text())
    data["hailo"] = {"hw_arch": arch, "dfc_version": "3.33.0", "hailort_version": "4.23.0"}
    data["models"] += [
        semantic_entry("seg-logits", "models/seg.hef", bundle, fmt="hef"),
        instance_entry("yolo-tiny", "models/yolo.hef", bundle, fmt="hef"),
    ]
    write_manifest(bundle, data)
    return bundle


@pytest.fixture
def fake() -> FakeHailoPlatform:
    fake = FakeHailoPlatform()
    fake.register("seg.hef", (SEMANTIC_SIZE, SEMANTIC_SIZE, 3), lambda x: {"seg/argmax_logits": _semantic_logits(x)})
    fake.register("yolo.hef", (INSTANCE_SIZE, INSTANCE_SIZE, 3), _yolo_outputs)
    return fake


def test_contract_hailort_infer_model_sequence(tmp_path: Path, fake: FakeHailoPlatform, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hailo_platform", fake.module())  # the runtime imports it by name
    bundle = _hef_bundle(tmp_path)
    loaded = load_runtime(bundle, backend="auto")
    assert loaded.device_info == hailo.DeviceInfo("hailo8l", "4.23.0", "device-api")
    assert loaded.semantic["seg-logits"].session.backend == "hailort"
    assert loaded.semantic["seg-argmax"].session.backend == "onnxruntime"  # no HEF of it: ONNX fallback
    assert loaded.instance.session.backend == "hailort"
    hp = sys.modules["hailo_platform"]
    setup = [c for c in fake.calls if c[0] not in ("identify", "Device.release")]
    yolo_outputs = [f"yolo/conv{i}" for i in range(10)]
    assert setup == [
        ("VDevice.create_params",),
        ("params.scheduling_algorithm", hp.HailoSchedulingAlgorithm.ROUND_ROBIN),
        ("params.group_id", "SHARED"),
        ("VDevice", "SHARED", hp.HailoSchedulingAlgorithm.ROUND_ROBIN),
        ("create_infer_model", "seg.hef"),
        ("set_batch_size", 1),
        ("input.set_format_type", "in", hp.FormatType.UINT8),
        ("output.set_format_type", "seg/argmax_logits", hp.FormatType.FLOAT32),
        ("configure", "seg.hef"),
        ("configured.__enter__", "seg.hef"),
        ("create_infer_model", "yolo.hef"),
        ("set_batch_size", 1),
        ("input.set_format_type", "in", hp.FormatType.UINT8),
        *[("output.set_format_type", name, hp.FormatType.FLOAT32) for name in yolo_outputs],
        ("configure", "yolo.hef"),
        ("configured.__enter__", "yolo.hef"),
    ]

    fake.calls.clear()
    engine = Engine(loaded)
    frame = make_frame()
    result = engine.infer(frame, Settings(semantic="seg-logits", yolo=True))
    assert result.errors == []
    first_run = fake.calls[: 1 + 1 + 1 + 1 + 1]
    assert first_run == [
        ("create_bindings", ["seg/argmax_logits"]),
        ("bindings.output.set_buffer", "seg/argmax_logits", "float32", (SEMANTIC_SIZE, SEMANTIC_SIZE, 4)),
        ("bindings.input.set_buffer", "in", "uint8", (SEMANTIC_SIZE, SEMANTIC_SIZE, 3)),
        ("run", 1, hailo.RUN_TIMEOUT_MS),
        ("bindings.output.get_buffer", "seg/argmax_logits"),
    ]
    assert ("run", 1, hailo.RUN_TIMEOUT_MS) in fake.calls[5:]

    # The HEF path gives the same class map as the ONNX model of the same network.
    onnx = engine.infer(frame, Settings(semantic="seg-argmax", yolo=False))
    agreement = (result.labels == onnx.labels).mean()
    assert agreement > 0.99
    # And the split YOLO outputs decode to the one planted detection: stride-8 anchor (6.5, 4.5) +- 2 cells
    # -> input box x 36..68, y 20..52, mapped back through the letterbox (scale 0.8, 16 px top padding).
    detections = result.detections
    assert len(detections) == 1 and detections.class_ids.tolist() == [0]
    np.testing.assert_allclose(detections.boxes[0], [45, 5, 85, 45], atol=0.5)
    assert detections.masks[0].all()

    fake.calls.clear()
    loaded.close()
    assert ("configured.__exit__", "seg.hef") in fake.calls and ("configured.__exit__", "yolo.hef") in fake.calls
    assert fake.calls[-1] == ("VDevice.release",)


def test_contract_on_chip_argmax_stays_uint8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHailoPlatform()
    fake.register("seg.hef", (SEMANTIC_SIZE, SEMANTIC_SIZE, 3), lambda x: {"seg/argmax1": _semantic_logits(x).argmax(axis=2).astype(np.uint8)[..., None]})
    fake.register("yolo.hef", (INSTANCE_SIZE, INSTANCE_SIZE, 3), _yolo_outputs)
    bundle = _hef_bundle(tmp_path)
    data = json.loads((bundle / "manifest.json").read_text())
    data["models"][3]["output"]["kind"] = "argmax"
    write_manifest(bundle, data)
    hp = fake.module()
    loaded = load_runtime(bundle, backend="hailo", hailo_platform=hp)
    try:
        assert ("output.set_format_type", "seg/argmax1", hp.FormatType.UINT8) in fake.calls
        engine = Engine(loaded)
        frame = make_frame()
        hef = engine.infer(frame, Settings(semantic="seg-logits", yolo=False))
        onnx = engine.infer(frame, Settings(semantic="seg-argmax", yolo=False))
        assert hef.errors == [] and hef.labels.dtype == np.uint8
        assert (hef.labels == onnx.labels).mean() > 0.99
        assert ("bindings.output.set_buffer", "seg/argmax1", "uint8", (SEMANTIC_SIZE, SEMANTIC_SIZE, 1)) in fake.calls
    finally:
        loaded.close()


def test_contract_wrong_architecture_is_refused_before_hailort(tmp_path: Path, fake: FakeHailoPlatform) -> None:
    bundle = _hef_bundle(tmp_path, arch="hailo8")  # compiled for Hailo-8, device is a Hailo-8L
    with pytest.raises(CompatibilityError, match=r"compiled for hailo8 but this device is a hailo8l"):
        load_runtime(bundle, backend="hailo", hailo_platform=fake.module())
    assert not any(call[0] == "create_infer_model" for call in fake.calls)
    loaded = load_runtime(bundle, backend="auto", hailo_platform=fake.module())  # auto: ONNX fallbacks, with the reason
    try:
        assert loaded.hailo_device is None and "HEFs refused" in loaded.hailo_note
        assert {m.session.backend for m in loaded.semantic.values()} == {"onnxruntime"}
    finally:
        loaded.close()


def test_contract_old_hailort_is_refused(tmp_path: Path) -> None:
    fake = FakeHailoPlatform(version="4.17.0")
    bundle = _hef_bundle(tmp_path)
    with pytest.raises(CompatibilityError, match=r"needs HailoRT >= 4.23.*has HailoRT 4.17.0"):
        load_runtime(bundle, backend="hailo", hailo_platform=fake.module())


def test_contract_hailo_backend_without_hailort(tmp_path: Path) -> None:
    bundle = _hef_bundle(tmp_path)
    assert hailo.import_hailo_platform() is None  # no HailoRT on this machine
    with pytest.raises(CompatibilityError, match="apt install hailo-all"):
        load_runtime(bundle, backend="hailo")


def test_contract_identify_parsing_and_cli_detection() -> None:
    assert hailo.parse_identify(IDENTIFY_TEXT) == hailo.DeviceInfo("hailo8l", "4.23.0", "hailortcli")
    assert hailo.parse_identify("Device Architecture: HAILO8\n").arch == "hailo8"
    assert hailo.parse_identify("Device Architecture: HAILO8_A0\n").arch == "hailo8"
    assert hailo.parse_identify("no device") is None
    assert hailo.arch_name("DeviceArchitectureTypes.HAILO8L") == "hailo8l"


def test_contract_hailortcli_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    seen = []

    def run(cmd, **kwargs):
        seen.append(cmd)
        out = IDENTIFY_TEXT if cmd[1:] == ["fw-control", "identify"] else "HailoRT-CLI version 4.23.0\n"
        return subprocess.CompletedProcess(cmd, 0, out, "")

    monkeypatch.setattr(hailo.shutil, "which", lambda name: "/usr/bin/hailortcli" if name == "hailortcli" else None)
    assert hailo.detect_device(None, run=run) == hailo.DeviceInfo("hailo8l", "4.23.0", "hailortcli")
    assert hailo.hailort_version(None, run=run) == "4.23.0"
    assert seen == [["hailortcli", "fw-control", "identify"], ["hailortcli", "--version"]]


def test_contract_known_hailort_errors_get_a_fix() -> None:
    message = hailo.explain(RuntimeError("Failed to create infer model, status = HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE(93)"))
    assert "rebuild the bundle for this device" in message
    assert "reboot" in hailo.explain(RuntimeError("Driver version (4.17.0) is different from library version (4.23.0)"))
