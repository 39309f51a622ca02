"""Device runtime on real ONNX Runtime: loading a bundle, semantic + instance inference, drawing, privacy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from idd_edge_runtime.engine import Engine, Settings
from idd_edge_runtime.loader import load_runtime
from idd_edge_runtime.manifest import InputSpec, ManifestError, Normalization
from idd_edge_runtime.preprocess import InputPreparer, check_frame
from idd_edge_runtime.semantic import argmax_channels_first, colorize, palette_lut
from tests._runtime_bundle import (
    CAR_REGION,
    PERSON_REGION,
    build_onnx_bundle,
    make_frame,
    semantic_entry,
    write_manifest,
)

ROAD, PERSON, RIDER, SKY = range(4)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return build_onnx_bundle(tmp_path / "bundle")


@pytest.fixture
def engine(bundle: Path):
    loaded = load_runtime(bundle, backend="onnx", onnx_threads=1)
    yield Engine(loaded)
    loaded.close()


def _edit_manifest(bundle: Path, edit) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    edit(data)
    write_manifest(bundle, data)


def test_bundle_loads_every_model_on_onnx_runtime(engine: Engine) -> None:
    loaded = engine.loaded
    assert engine.semantic_names == ["seg-logits", "seg-argmax"]
    assert loaded.instance is not None and loaded.instance.session.backend == "onnxruntime"
    assert loaded.failures == {} and loaded.hailo_device is None
    assert engine.default_settings() == Settings(semantic="seg-logits", yolo=True)


def test_semantic_labels_follow_the_models_rule_and_argmax_variants_agree(engine: Engine) -> None:
    frame = make_frame()
    logits = engine.infer(frame, Settings(semantic="seg-logits", yolo=False))
    argmax = engine.infer(frame, Settings(semantic="seg-argmax", yolo=False))
    assert logits.errors == [] and argmax.errors == []
    assert logits.labels.dtype == np.uint8 and logits.labels.shape == (64, 64)
    np.testing.assert_array_equal(logits.labels, argmax.labels)
    full = cv2.resize(logits.labels, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
    assert np.bincount(full[PERSON_REGION].ravel()).argmax() == PERSON
    assert np.bincount(full[CAR_REGION].ravel()).argmax() == SKY
    assert full[110:, 60:100].max() == ROAD


def test_instances_are_found_in_frame_pixels_with_masks(engine: Engine) -> None:
    frame = make_frame()
    result = engine.infer(frame, Settings(semantic=None, yolo=True))
    detections = result.detections
    assert result.errors == [] and result.labels is None
    order = np.lexsort((detections.boxes[:, 1], detections.boxes[:, 0]))
    np.testing.assert_allclose(detections.boxes[order], [[0, 20, 40, 60], [0, 60, 40, 100], [120, 20, 160, 60]], atol=0.5)
    assert detections.class_ids[order].tolist() == [0, 0, 1]  # person, person, car
    masks = detections.full_masks()
    person = masks[detections.class_ids == 0].any(axis=0)
    expected = np.zeros(frame.shape[:2], dtype=bool)
    expected[PERSON_REGION] = True
    iou = (person & expected).sum() / (person | expected).sum()
    assert iou > 0.9


def test_render_overlays_semantic_colours_and_instance_boxes(engine: Engine) -> None:
    frame = make_frame()
    result = engine.infer(frame, Settings(semantic="seg-logits", yolo=True, alpha=1.0))
    out = engine.render(result)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert result.timings.render_ms > 0 and result.timings.inference_ms > 0
    road_bgr = palette_lut(result.semantic_model.entry.classes)[ROAD, 0]
    np.testing.assert_array_equal(out[115, 80], road_bgr)  # alpha 1: pure class colour where nothing else is drawn
    np.testing.assert_array_equal(frame, make_frame())  # the input frame is never drawn on


def test_colorize_is_the_palette_lookup() -> None:
    from tests._runtime_bundle import SEMANTIC_CLASSES
    from idd_edge_runtime.manifest import ClassInfo

    classes = [ClassInfo(c["name"], tuple(c["color"])) for c in SEMANTIC_CLASSES]
    labels = np.random.default_rng(0).integers(0, 4, (17, 23)).astype(np.uint8)
    labels[0, 0] = 255  # void -> black
    colours = colorize(labels, palette_lut(classes))
    rgb = np.array([c.color for c in classes] + [(0, 0, 0)] * 252, dtype=np.uint8)
    np.testing.assert_array_equal(colours[..., ::-1], rgb[labels])


def test_argmax_channels_first_matches_numpy_including_ties() -> None:
    rng = np.random.default_rng(1)
    logits = rng.integers(0, 4, (7, 33, 21)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(argmax_channels_first(logits), logits.argmax(axis=0))


def test_input_preparer_matches_the_plain_formula() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (8, 6, 3)).astype(np.uint8)
    norm = Normalization((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    nchw = InputPreparer(InputSpec(6, 8, "NCHW", "float32", norm))(rgb)
    expected = ((rgb.astype(np.float64) - norm.mean) / norm.std).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(nchw, expected, rtol=1e-5, atol=1e-5)
    nhwc = InputPreparer(InputSpec(6, 8, "NHWC", "uint8", None))(rgb)
    assert nhwc.dtype == np.uint8 and nhwc.shape == (1, 8, 6, 3) and nhwc.flags.c_contiguous
    with pytest.raises(ValueError, match=r"expected \(8, 6, 3\) uint8"):
        InputPreparer(InputSpec(6, 8, "NHWC", "uint8", None))(rgb[:4])


def test_corrupt_frames_are_named() -> None:
    with pytest.raises(ValueError, match="not an image"):
        check_frame(None)
    with pytest.raises(ValueError, match="dtype float32"):
        check_frame(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        check_frame(np.zeros((0, 4, 3), np.uint8))
    assert check_frame(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)


def _texture(image: np.ndarray, region) -> float:
    """Mean absolute difference between horizontal neighbours: high for the checkered 'person', ~0 when blurred."""
    patch = image[region].astype(np.int16)
    return float(np.abs(np.diff(patch, axis=1)).mean())


def test_privacy_blurs_people_and_leaves_the_rest(engine: Engine) -> None:
    frame = make_frame()
    out, result = engine.process(frame, Settings(semantic=None, yolo=False, alpha=0.0, privacy=True))
    assert result.detections is not None and not result.privacy_incomplete
    inner = (slice(30, 90), slice(5, 35))
    assert _texture(frame, inner) > 5
    assert _texture(out, inner) < 0.25 * _texture(frame, inner)
    np.testing.assert_array_equal(out[CAR_REGION], frame[CAR_REGION])  # cars are not private
    np.testing.assert_array_equal(out[:, 70:110], frame[:, 70:110])  # nor the road


def test_privacy_uses_semantic_person_pixels_without_an_instance_model(bundle: Path) -> None:
    _edit_manifest(bundle, lambda d: d.update(models=[m for m in d["models"] if m["role"] == "semantic"]))
    loaded = load_runtime(bundle, backend="onnx", onnx_threads=1)
    try:
        engine = Engine(loaded)
        frame = make_frame()
        out, result = engine.process(frame, Settings(semantic="seg-logits", yolo=True, alpha=0.0, privacy=True))
        assert result.detections is None and not result.privacy_incomplete
        assert _texture(out, (slice(30, 90), slice(5, 35))) < 0.25 * _texture(frame, (slice(30, 90), slice(5, 35)))
        # No semantic model and no instance model: nothing can find the people, so the whole frame is blurred.
        out, result = engine.process(frame, Settings(semantic=None, yolo=False, alpha=0.0, privacy=True))
        assert result.privacy_incomplete
        assert _texture(out, (slice(30, 90), slice(5, 35))) < 0.25 * _texture(frame, (slice(30, 90), slice(5, 35)))
    finally:
        loaded.close()


def test_a_corrupt_model_is_reported_and_the_others_load(bundle: Path) -> None:
    (bundle / "models" / "seg-logits.onnx").write_bytes(b"\x08\x01garbage")
    loaded = load_runtime(bundle, backend="onnx")
    try:
        assert list(loaded.semantic) == ["seg-argmax"] and loaded.instance is not None
        assert "does not match its sha256" in loaded.failures["seg-logits"]
        assert any("seg-logits: not available" in m for m in loaded.messages())
    finally:
        loaded.close()
    loaded = load_runtime(bundle, backend="onnx", verify=False)  # skip checksums: ONNX Runtime itself refuses it
    try:
        assert "ONNX Runtime cannot load" in loaded.failures["seg-logits"]
    finally:
        loaded.close()


def test_failed_gate_is_refused_unless_allowed(bundle: Path) -> None:
    _edit_manifest(bundle, lambda d: d["models"][0]["gate"].update(passed=False))
    loaded = load_runtime(bundle, backend="onnx")
    assert "failed its accuracy gate" in loaded.failures["seg-logits"]
    loaded.close()
    loaded = load_runtime(bundle, backend="onnx", allow_failed_gate=True)
    assert "seg-logits" in loaded.semantic
    loaded.close()


def test_no_loadable_model_is_an_error(bundle: Path) -> None:
    for path in (bundle / "models").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(ManifestError, match="no model could be loaded"):
        load_runtime(bundle, backend="onnx")


def test_format_preference_without_a_hailo_device(bundle: Path) -> None:
    shutil.copyfile(bundle / "models" / "seg-logits.onnx", bundle / "models" / "seg-logits-int8.onnx")
    (bundle / "models" / "seg-logits.hef").write_bytes(b"not a real HEF")
    (bundle / "models" / "only.hef").write_bytes(b"also not a HEF")

    def edit(data: dict) -> None:
        data["hailo"] = {"hw_arch": "hailo8l", "dfc_version": "3.33", "hailort_version": "4.23"}
        data["models"] += [
            semantic_entry("seg-logits", "models/seg-logits-int8.onnx", bundle, fmt="onnx-int8"),
            semantic_entry("seg-logits", "models/seg-logits.hef", bundle, fmt="hef"),
            semantic_entry("only-hef", "models/only.hef", bundle, fmt="hef"),
        ]

    _edit_manifest(bundle, edit)
    loaded = load_runtime(bundle, backend="auto")  # no hailo_platform here: HEFs are skipped with a note
    try:
        assert loaded.semantic["seg-logits"].entry.format == "onnx-int8"
        assert "only a HEF" in loaded.failures["only-hef"]
        assert "hailo_platform" in loaded.hailo_note
    finally:
        loaded.close()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_ultralytics_yolov8n_seg_export_runs_through_the_runtime(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real YOLOv8n-seg architecture (random weights, 128 px) loads, runs and decodes without error."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # Ultralytics writes the export next to the (yaml) model: the working directory
    from ultralytics import YOLO

    from idd_edge_runtime.manifest import sha256_file

    exported = Path(YOLO("yolov8n-seg.yaml").export(format="onnx", imgsz=128, opset=12, simplify=False))
    shutil.copyfile(tmp_path / exported, bundle / "models" / "v8n.onnx")
    names = [{"name": f"class{i}", "color": [i, 255 - i, 128]} for i in range(80)]

    def edit(data: dict) -> None:
        entry = data["models"][2]
        entry.update(name="yolov8n-seg", file="models/v8n.onnx", sha256=sha256_file(bundle / "models" / "v8n.onnx"), classes=names)
        entry["postprocess"]["conf"] = 0.01  # random weights score low; still exercise NMS and masks

    _edit_manifest(bundle, edit)
    loaded = load_runtime(bundle, backend="onnx", onnx_threads=1)
    try:
        engine = Engine(loaded)
        out, result = engine.process(make_frame(), Settings(semantic=None, yolo=True))
        assert result.errors == [] and result.detections is not None
        assert out.shape == make_frame().shape
    finally:
        loaded.close()
