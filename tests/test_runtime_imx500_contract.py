"""Contract test of the runtime's IMX500 backend against stand-ins of picamera2's documented IMX500 API.

picamera2 runs only on Raspberry Pi OS with the AI Camera attached, so this is a contract test: the stand-ins
record every call and return what the documented API returns (`picamera2.devices.IMX500(network_file)` with
`camera_num`, `get_input_size() -> (width, height)`, `get_outputs(metadata, add_batch=False) -> list of float32
arrays | None`; `Picamera2(camera_num)`, `create_preview_configuration`, `start`, `capture_request` ->
request with `make_array("main")`, `get_metadata()`, `release()`). The test asserts the order picamera2
requires (network firmware before the camera), the size check against the manifest and the label maps.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from idd_edge_runtime import manifest as mf
from idd_edge_runtime.backends import BackendError
from idd_edge_runtime.imx500 import Imx500Camera, logits_to_labels
from tests._runtime_bundle import SEMANTIC_CLASSES, manifest_dict

HEIGHT, WIDTH = 6, 8


def _entry() -> mf.ModelEntry:
    entry = {"name": "seg", "role": "semantic", "format": "imx500", "file": "models/seg_imx500_packerOut.zip",
             "sha256": "ab" * 32, "input": {"width": WIDTH, "height": HEIGHT, "layout": "NCHW", "dtype": "uint8",
                                            "normalization": None},
             "output": {"kind": "logits"}, "classes": SEMANTIC_CLASSES, "gate": {"passed": True}}
    return mf.parse_manifest(manifest_dict([entry])).models[0]


def _standins(calls: list, outputs, input_size=(WIDTH, HEIGHT)):
    class IMX500:
        camera_num = 1

        def __init__(self, network_file):
            calls.append(("IMX500", network_file))

        def get_input_size(self):
            return input_size

        def get_outputs(self, metadata, add_batch=False):
            calls.append(("get_outputs", metadata, add_batch))
            return outputs

    class Request:
        def make_array(self, stream):
            calls.append(("make_array", stream))
            return np.zeros((480, 640, 3), np.uint8)

        def get_metadata(self):
            return {"CnnOutputTensor": "..."}

        def release(self):
            calls.append(("release",))

    class Picamera2:
        def __init__(self, camera_num):
            calls.append(("Picamera2", camera_num))

        def create_preview_configuration(self, main):
            return {"main": main}

        def start(self, config):
            calls.append(("start", config))

        def capture_request(self):
            return Request()

        def stop(self):
            calls.append(("stop",))

        def close(self):
            calls.append(("close",))

    return types.SimpleNamespace(IMX500=IMX500), types.SimpleNamespace(Picamera2=Picamera2)


def test_contract_network_first_then_camera_and_label_maps(tmp_path):
    rpk = tmp_path / "network.rpk"
    rpk.write_bytes(b"rpk")
    logits = np.random.default_rng(0).normal(size=(len(SEMANTIC_CLASSES), HEIGHT, WIDTH)).astype(np.float32)
    calls: list = []
    devices, picamera2 = _standins(calls, [logits])
    camera = Imx500Camera(_entry(), rpk, devices=devices, picamera2=picamera2)
    frame, labels = camera.read()
    camera.close()
    assert calls[:2] == [("IMX500", str(rpk)), ("Picamera2", 1)]
    assert calls[2] == ("start", {"main": {"size": (640, 480), "format": "RGB888"}})
    assert ("get_outputs", {"CnnOutputTensor": "..."}, False) in calls and calls[-3:] == [("release",), ("stop",), ("close",)]
    assert frame.shape == (480, 640, 3)
    np.testing.assert_array_equal(labels, logits.argmax(axis=0))


def test_contract_refusals_name_the_fix(tmp_path):
    calls: list = []
    devices, picamera2 = _standins(calls, None, input_size=(320, 320))
    with pytest.raises(BackendError, match=r"network.rpk not found; make one on the Pi with `imx500-package -i"):
        Imx500Camera(_entry(), tmp_path / "network.rpk", devices=devices, picamera2=picamera2)
    (tmp_path / "network.rpk").write_bytes(b"rpk")
    with pytest.raises(BackendError, match=r"takes 320x320 input but the manifest says 8x6"):
        Imx500Camera(_entry(), tmp_path / "network.rpk", devices=devices, picamera2=picamera2)
    assert ("Picamera2", 1) not in calls  # refused before the camera was opened


def test_output_layouts():
    entry = _entry()
    chw = np.random.default_rng(1).normal(size=(len(SEMANTIC_CLASSES), HEIGHT, WIDTH)).astype(np.float32)
    assert logits_to_labels(None, entry) is None  # no inference result with this frame yet
    np.testing.assert_array_equal(logits_to_labels([chw[None]], entry), chw.argmax(axis=0))
    np.testing.assert_array_equal(logits_to_labels([chw.transpose(1, 2, 0)], entry), chw.argmax(axis=0))
    with pytest.raises(BackendError, match=r"IMX500 output is \(3, 6, 8\)"):
        logits_to_labels([chw[:3]], entry)


def test_manifest_takes_an_imx500_entry_only_with_sensor_input():
    entry = _entry()
    assert entry.is_imx500 and entry.input.normalization is None
    bad = {"name": "seg", "role": "semantic", "format": "imx500", "file": "models/seg.zip", "sha256": "ab" * 32,
           "input": {"width": WIDTH, "height": HEIGHT, "layout": "NCHW", "dtype": "float32",
                     "normalization": {"mean": [1, 2, 3], "std": [1, 1, 1]}},
           "output": {"kind": "logits"}, "classes": SEMANTIC_CLASSES, "gate": {"passed": True}}
    with pytest.raises(mf.ManifestError, match="an IMX500 network takes the sensor's NCHW uint8 pixels"):
        mf.parse_manifest(manifest_dict([bad]))
