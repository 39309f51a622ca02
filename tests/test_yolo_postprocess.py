"""Host YOLOv8-seg post-processing (idd_edge_runtime.yolo_postprocess): parity with Ultralytics' own
prediction on the same ONNX model and image, the Hailo split layout (float and quantised) against the ONNX
layout, and the pieces (NMS, DFL, letterbox, output matching) against their references."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from idd_edge_runtime import yolo_postprocess as yp
from idd_edge_runtime.letterbox import Letterbox, letterbox
from tests.yolo_fixtures import EXPORT_IMGSZ, NUM_CLASSES, build_model, exported_model, street_image

LOW_CONF = 0.3  # the perturbed model's scores: enough detections to compare, both sides use the same


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return exported_model(tmp_path_factory.getbasetemp() / "yolo_models")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod((rb - lt).clip(0), axis=1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def run_ours_onnx(onnx_dir, image, conf=LOW_CONF):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_dir / "yolov8n_seg.onnx"), providers=["CPUExecutionProvider"])
    canvas, geometry = letterbox(image, EXPORT_IMGSZ)
    tensor = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    output0, output1 = session.run(["output0", "output1"], {"images": tensor})
    config = yp.PostprocessConfig(num_classes=NUM_CLASSES, conf_threshold=conf, iou_threshold=0.5)
    return yp.decode_onnx(output0, output1, geometry, config)


@pytest.mark.parametrize("shape", [(90, 160), (160, 90), (128, 128)])
def test_matches_ultralytics_prediction_on_the_same_onnx_model(onnx_model, shape):
    from idd_edge.yolo.offline import import_ultralytics

    import_ultralytics()
    import torchvision  # noqa: F401  - Ultralytics' NMS then uses torchvision's, as in any normal install
    from ultralytics import YOLO

    _, onnx_dir = onnx_model
    image = street_image(*shape)
    ours = run_ours_onnx(onnx_dir, image)
    theirs = YOLO(str(onnx_dir / "yolov8n_seg.onnx"), task="segment").predict(
        image, imgsz=EXPORT_IMGSZ, conf=LOW_CONF, iou=0.5, retina_masks=True, device="cpu", verbose=False
    )[0]
    assert len(ours) == len(theirs.boxes) >= 5
    their_boxes = theirs.boxes.xyxy.numpy()
    assert box_iou(ours.boxes, their_boxes).min() >= 0.99
    np.testing.assert_array_equal(ours.class_ids, theirs.boxes.cls.numpy().astype(int))
    np.testing.assert_allclose(ours.scores, theirs.boxes.conf.numpy(), atol=1e-5)
    their_masks = theirs.masks.data.numpy().astype(bool)
    assert their_masks.shape[1:] == image.shape[:2]
    assert mask_ious(ours.full_masks(), their_masks).min() >= 0.98


def hailo_outputs(model, tensor):
    """The ten NHWC tensors a Hailo HEF of this model returns: per-stride head convs, sigmoided classes."""
    import torch

    head, captured, hooks = model.model[-1], {}, []
    for i in range(3):
        for name in ("cv2", "cv3", "cv4"):
            hooks.append(getattr(head, name)[i].register_forward_hook(
                lambda _m, _a, out, key=f"{name}_{i}": captured.__setitem__(key, out)))
    hooks.append(head.proto.register_forward_hook(lambda _m, _a, out: captured.__setitem__("proto", out)))
    with torch.no_grad():
        (prediction, protos), _ = model(torch.from_numpy(tensor))
    for hook in hooks:
        hook.remove()
    outputs = {}
    for key, value in captured.items():
        nhwc = value.permute(0, 2, 3, 1).numpy()
        outputs[key] = 1.0 / (1.0 + np.exp(-nhwc)) if key.startswith("cv3") else nhwc
    return outputs, prediction.numpy(), protos.numpy()


@pytest.fixture(scope="module")
def hailo_case():
    model = build_model()
    canvas, geometry = letterbox(street_image(), EXPORT_IMGSZ)
    tensor = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    outputs, prediction, protos = hailo_outputs(model, tensor)
    config = yp.PostprocessConfig(num_classes=NUM_CLASSES, conf_threshold=LOW_CONF, iou_threshold=0.5)
    return outputs, yp.decode_onnx(prediction, protos, geometry, config), geometry, config


def assert_same_detections(a: yp.InstanceDetections, b: yp.InstanceDetections, mask_iou: float = 0.98) -> None:
    assert len(a) == len(b) >= 5
    assert box_iou(a.boxes, b.boxes).min() >= 0.99
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    assert mask_ious(a.full_masks(), b.full_masks()).min() >= mask_iou


def test_hailo_split_layout_decodes_like_the_onnx_layout(hailo_case):
    outputs, reference, geometry, config = hailo_case
    rng = np.random.default_rng(0)
    names = list(outputs)
    rng.shuffle(names)  # matched by shape, not by order or name
    shuffled = {f"yolov8n_seg/conv{i}": outputs[name] for i, name in enumerate(names)}
    assert_same_detections(yp.decode_hailo(shuffled, geometry, config), reference)


def test_hailo_integer_outputs_are_dequantised(hailo_case):
    outputs, reference, geometry, config = hailo_case
    quantized, quantization = {}, {}
    for name, value in outputs.items():  # 16-bit affine quantisation, as `a16_w16` outputs would be
        low, high = float(value.min()), float(value.max())
        scale = (high - low) / 65535 or 1.0
        zero_point = round(-low / scale)
        quantized[name] = np.clip(np.round(value / scale) + zero_point, 0, 65535).astype(np.uint16)
        quantization[name] = (scale, zero_point)
    assert_same_detections(yp.decode_hailo(quantized, geometry, config, quantization), reference, mask_iou=0.95)
    with pytest.raises(ValueError, match="no \\(scale, zero_point\\)"):
        yp.decode_hailo(quantized, geometry, config)


def test_hailo_output_matching_errors(hailo_case):
    outputs, _, geometry, config = hailo_case
    missing = {k: v for k, v in outputs.items() if k != "cv4_1"}
    with pytest.raises(ValueError, match="stride-16 mask coefficients"):
        yp.decode_hailo(missing, geometry, config)
    with pytest.raises(ValueError, match="indistinguishable"):
        yp.decode_hailo(outputs, geometry, yp.PostprocessConfig(num_classes=32))
    assert sorted(yp.hailo_output_shapes((512, 512), 5)) == sorted(
        [(128, 128, 32), *((512 // s, 512 // s, c) for s in (8, 16, 32) for c in (64, 5, 32))]
    )


@pytest.mark.parametrize("count", [300, yp._PAIRWISE_NMS_MAX + 500])  # IoU-matrix and row-by-row paths
def test_nms_matches_torchvision(count):
    import torch
    import torchvision

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 200, (count, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (count, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, count).astype(np.float32)
    classes = rng.integers(0, 3, count)
    ours = yp.nms(boxes, scores, classes, 0.5)
    offset = torch.from_numpy(boxes) + torch.from_numpy(classes)[:, None] * 4096.0
    reference = torchvision.ops.nms(offset, torch.from_numpy(scores), 0.5).numpy()
    np.testing.assert_array_equal(ours, reference)


def test_dfl_expectation_is_the_expected_bin():
    logits = np.full((1, 4, 16), -1e4, dtype=np.float32)
    logits[0, 0, 3] = logits[0, 1, 0] = 0.0  # one-hot bins 3 and 0
    logits[0, 2, 4] = logits[0, 2, 6] = 0.0  # half on bins 4 and 6
    logits[0, 3] = 0.0  # uniform: mean bin 7.5
    np.testing.assert_allclose(yp._dfl_expectation(logits), [[3.0, 0.0, 5.0, 7.5]], atol=1e-5)


@pytest.mark.parametrize("shape", [(270, 480), (480, 270), (100, 100), (37, 501)])
def test_letterbox_matches_ultralytics(shape):
    from idd_edge.yolo.offline import import_ultralytics

    import_ultralytics()
    import torch
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils import ops

    image = street_image(*shape)
    canvas, geometry = letterbox(image, 128)
    np.testing.assert_array_equal(canvas, LetterBox((128, 128), auto=False)(image=image))
    boxes = np.array([[10.5, 20.25, 90.0, 60.0], [-5.0, 0.0, 140.0, 127.0]], dtype=np.float32)
    theirs = ops.scale_boxes((128, 128), torch.from_numpy(boxes.copy()), shape).numpy()
    np.testing.assert_allclose(geometry.boxes_to_source(boxes), theirs, atol=1e-4)


def test_no_detections_gives_empty_well_formed_result(hailo_case):
    outputs, _, geometry, _ = hailo_case
    result = yp.decode_hailo(outputs, geometry, yp.PostprocessConfig(num_classes=NUM_CLASSES, conf_threshold=1.0))
    assert len(result) == 0 and result.boxes.shape == (0, 4) and result.full_masks().shape == (0, 90, 160)


def test_masks_stay_inside_their_boxes(hailo_case):
    _, reference, _, _ = hailo_case
    for (x0, y0, x1, y1), box, mask in zip(reference.mask_regions, reference.boxes, reference.masks):
        assert mask.shape == (y1 - y0, x1 - x0)
        assert x0 >= box[0] and x1 - 1 < box[2] + 1 and y0 >= box[1] and y1 - 1 < box[3] + 1


def test_config_validation():
    with pytest.raises(ValueError, match="conf_threshold"):
        yp.PostprocessConfig(num_classes=5, conf_threshold=1.5)
    with pytest.raises(ValueError, match="channels"):
        geometry = Letterbox.fit((32, 32), 32)
        yp.decode_onnx(np.zeros((1, 40, 10)), np.zeros((1, 32, 4, 4)), geometry, yp.PostprocessConfig(5))


def test_runtime_package_never_imports_torch():
    code = (
        "import sys, idd_edge_runtime.yolo_postprocess, idd_edge_runtime.letterbox;"
        "bad = [m for m in ('torch', 'ultralytics', 'idd_edge') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_multi_label_candidates_match_ultralytics_validation_nms(tmp_path_factory):
    """`multi_label` (mAP evaluation): every class above the threshold is a candidate of its anchor, as in
    Ultralytics' validator; the detections are its NMS output, less those whose mask is empty."""
    import onnxruntime as ort

    from idd_edge.yolo.offline import import_ultralytics
    from tests.yolo_fixtures import exported_scoring_model

    import_ultralytics()
    import torch
    from ultralytics.utils.nms import non_max_suppression

    _, onnx_dir = exported_scoring_model(tmp_path_factory.getbasetemp() / "yolo_models")
    session = ort.InferenceSession(str(onnx_dir / "yolov8n_seg.onnx"), providers=["CPUExecutionProvider"])
    canvas, geometry = letterbox(street_image(EXPORT_IMGSZ, EXPORT_IMGSZ), EXPORT_IMGSZ)  # no resize, no padding
    tensor = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    output0, output1 = session.run(["output0", "output1"], {"images": tensor})
    config = yp.PostprocessConfig(num_classes=NUM_CLASSES, conf_threshold=0.001, iou_threshold=0.7, multi_label=True)
    ours = yp.decode_onnx(output0, output1, geometry, config)
    single = yp.decode_onnx(output0, output1, geometry, yp.PostprocessConfig(NUM_CLASSES, 0.001, 0.7))
    theirs = non_max_suppression(torch.from_numpy(output0), 0.001, 0.7, nc=NUM_CLASSES, multi_label=True, max_det=300)[0]
    theirs = {(int(c), round(float(s), 5)) for c, s in zip(theirs[:, 5], theirs[:, 4])}
    ours_pairs = {(int(c), round(float(s), 5)) for c, s in zip(ours.class_ids, ours.scores)}
    assert ours_pairs <= theirs and len(ours_pairs) >= 0.9 * len(theirs)
    single_pairs = {(int(c), round(float(s), 5)) for c, s in zip(single.class_ids, single.scores)}
    assert ours_pairs - single_pairs  # second-best classes of some anchors made it through NMS
