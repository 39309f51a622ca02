"""One semantic preprocessing: the device, the gate/calibration and the training validation feed the same
tensor for the same camera frame (`idd_edge_runtime.preprocess.resize_semantic` everywhere)."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from idd_edge import atomic
from idd_edge.export.preprocessing import calibration_targets, preprocess_fn
from idd_edge.export.quantize import to_model_input
from idd_edge.seg.data import IDDSegDataset
from idd_edge.seg.trained import NORMALIZATION
from idd_edge_runtime.manifest import InputSpec, Normalization
from idd_edge_runtime.preprocess import resize_semantic
from idd_edge_runtime.semantic import SemanticModel

MEAN, STD = NORMALIZATION["mean"], NORMALIZATION["std"]
FRAME_HW = (180, 320)
#: (H, W) model inputs: both axes shrink (the usual case), one shrinks and one grows, both grow, unchanged.
INPUT_SIZES = [(96, 128), (128, 256), (256, 384), FRAME_HW]


def textured_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """BGR uint8: smooth gradients plus fine noise, so that filters that do not average every source
    pixel (aliasing) and colour-order mistakes both show."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    smooth = np.stack([cols / width * 200, rows / height * 180, (rows + cols) / (height + width) * 150], axis=-1)
    return np.clip(smooth + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)


def semantic_record(size_hw: tuple[int, int]) -> dict:
    """The parts of an `export.json` that the host preprocessing reads."""
    return {"preprocess": "resize", "input": {"shape": [1, 3, *size_hw]}}


def device_model(size_hw: tuple[int, int], layout: str, dtype: str, normalization: Normalization | None) -> SemanticModel:
    spec = InputSpec(size_hw[1], size_hw[0], layout, dtype, normalization)
    session = SimpleNamespace(entry=SimpleNamespace(input=spec, classes=[], name="seg"))
    return SemanticModel(session)


@pytest.mark.parametrize("size_hw", INPUT_SIZES)
def test_device_onnx_input_equals_the_gate_input(size_hw):
    frame_bgr = textured_frame(*FRAME_HW)
    device = device_model(size_hw, "NCHW", "float32", Normalization(tuple(MEAN), tuple(STD))).prepare(frame_bgr)
    gate_pixels = preprocess_fn(semantic_record(size_hw))(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
    np.testing.assert_allclose(device, to_model_input(gate_pixels, MEAN, STD), atol=1e-5)


@pytest.mark.parametrize("size_hw", INPUT_SIZES)
def test_device_hef_input_equals_the_calibration_pixels(size_hw):
    """A HEF takes raw uint8 NHWC (normalised on the chip): exactly the calibration set's pixels."""
    frame_bgr = textured_frame(*FRAME_HW, seed=1)
    device = device_model(size_hw, "NHWC", "uint8", None).prepare(frame_bgr)
    (calibration_fn, _size), = calibration_targets([semantic_record(size_hw)]).values()
    calibration = calibration_fn(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
    assert calibration.dtype == np.float32
    np.testing.assert_array_equal(device[0].astype(np.float32), calibration)


@pytest.mark.parametrize("size_hw", INPUT_SIZES[:2])
def test_training_validation_input_equals_the_device_input(tmp_path, size_hw):
    frame_bgr = textured_frame(*FRAME_HW, seed=2)
    atomic.write_png(tmp_path / "val" / "images" / "drive0_000.png", cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
    atomic.write_png(tmp_path / "val" / "masks" / "drive0_000.png", np.zeros(FRAME_HW, np.uint8))
    validation_image, _mask = IDDSegDataset(tmp_path / "val", "level1", size_hw)[0]
    device = device_model(size_hw, "NCHW", "float32", Normalization(tuple(MEAN), tuple(STD))).prepare(frame_bgr)
    np.testing.assert_allclose(validation_image.numpy()[None], device, atol=1e-5)


def _torchvision_antialiased(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    return v2.Resize(list(size_hw), antialias=True)(tensor).permute(1, 2, 0).numpy()


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("size_hw", [(256, 256), (128, 224), (180, 240)])
def test_shrinking_averages_like_the_antialiased_resize(size_hw):
    """Shrinking textured frames, resize_semantic stays near torchvision's antialiased resize (what the host
    used before) and far nearer than plain bilinear, which skips source pixels and aliases."""
    rgb = textured_frame(360, 640, seed=3)
    reference = _torchvision_antialiased(rgb, size_hw)
    ours = _mean_abs(resize_semantic(rgb, size_hw[1], size_hw[0]), reference)
    bilinear = _mean_abs(cv2.resize(rgb, size_hw[::-1], interpolation=cv2.INTER_LINEAR), reference)
    assert ours < 0.6 * bilinear and ours < 4.0, (ours, bilinear)


def test_enlarging_is_bilinear():
    rgb = textured_frame(60, 80, seed=4)
    ours = resize_semantic(rgb, 200, 150)
    assert np.abs(ours.astype(np.int16) - _torchvision_antialiased(rgb, (150, 200))).max() <= 1
    assert resize_semantic(rgb, 80, 60) is rgb  # already at size: no copy, no filtering
