"""Host YOLO mask-mAP scorer (idd_edge.export.evaluate_yolo) against Ultralytics' own validator.

Ground truth that makes the comparison non-vacuous: the validation frames are labelled with the fixture
model's own confident predictions (`pseudo_labelled_split`: polygons of the visible part of each
confident, uncut detection), so the model scores well above zero, but not perfectly: its other
detections still count as false positives and rank among the true ones. Square frames of several sizes
(letterboxed by a resize, no padding): an untrained model's features "see" objects in grey padding,
which only adds false positives that clipping conventions then judge differently.

Measured here (6 frames, 10 labels, classes 2 and 4 present):
    this scorer, ONNX layout = Hailo split layout:     box mAP50-95 0.5741, mask mAP50-95 0.6283, mask mAP50 0.7256
    Ultralytics validator, masks at input size:        box 0.5735, mask 0.6058, mask mAP50 0.7245
    Ultralytics validator defaults (gate.yolo_scores): box 0.5735, mask 0.3068, mask mAP50 0.6260
and on 4 frames of the input size (nothing resampled): 0.6060 mask mAP50-95 for this scorer and the
validator with input-size masks alike (box 0.4825, mask mAP50 0.7002 both). Boxes differ by predicted
boxes cut by the frame (the device clips them, the validator does not); masks with input-size masks
(`save_txt=True, mask_ratio=1`) by the raster (input size there, source size here). The validator's
defaults compare masks at prototype resolution (input / 4), where small objects lose many IoU points:
the systematic gap for which the gate holds the Hailo emulation to ONNX fp32 scored by this scorer.
"""

from __future__ import annotations

import numpy as np
import pytest

from idd_edge.errors import InputError
from idd_edge.export import evaluate_yolo
from idd_edge.export.gate import yolo_scores
from idd_edge.export.onnx_io import onnx_session
from tests.yolo_fixtures import (
    EXPORT_IMGSZ,
    NUM_CLASSES,
    exported_scoring_model,
    hailo_layout_predictor,
    pseudo_labelled_split,
)

pytestmark = pytest.mark.slow
SQUARE_SIZES = [(128, 128), (128, 128), (96, 96), (160, 160), (256, 256), (128, 128)]
INPUT_HW = (EXPORT_IMGSZ, EXPORT_IMGSZ)


@pytest.fixture(scope="module")
def scoring_case(tmp_path_factory):
    import json

    _checkpoint, export_dir = exported_scoring_model(tmp_path_factory.getbasetemp() / "yolo_models")
    onnx_path = export_dir / "yolov8n_seg.onnx"
    end_nodes = json.loads((export_dir / "yolov8n_seg.json").read_text())["hailo_end_nodes"]
    data_yaml = pseudo_labelled_split(tmp_path_factory.mktemp("pseudo"), onnx_path, SQUARE_SIZES)
    return onnx_path, end_nodes, data_yaml


def _validator_native_masks(onnx_path, data_yaml, work_dir):
    """Ultralytics' validator with masks at input size: `save_txt` switches it to `process_mask_native`
    and `mask_ratio=1` rasterises its labels at input size instead of a quarter."""
    from idd_edge.yolo.offline import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    return YOLO(str(onnx_path), task="segment").val(
        data=str(data_yaml), imgsz=EXPORT_IMGSZ, batch=1, device="cpu", plots=False, verbose=False,
        project=str(work_dir), name="native", exist_ok=True, save_txt=True, mask_ratio=1,
    )


def test_scores_agree_with_ultralytics_validator(scoring_case, tmp_path):
    onnx_path, end_nodes, data_yaml = scoring_case
    split = evaluate_yolo.load_val_split(data_yaml)
    assert sum(len(evaluate_yolo.label_path(p).read_text().splitlines()) for p in split.images) >= 8
    ours = evaluate_yolo.evaluate_yolo(evaluate_yolo.onnx_predictor(onnx_session(onnx_path)), split, INPUT_HW, "onnx")
    hailo = evaluate_yolo.evaluate_yolo(hailo_layout_predictor(onnx_path, end_nodes), split, INPUT_HW, "hailo")
    native = _validator_native_masks(onnx_path, data_yaml, tmp_path)
    defaults = yolo_scores(onnx_path, data_yaml, EXPORT_IMGSZ, tmp_path)

    assert ours["value"] > 0.4 and ours["box_map50_95"] > 0.4  # non-trivial ground truth
    assert len(ours["present"]) >= 2 and ours["images"] == len(SQUARE_SIZES)
    # The split Hailo layout (head convs + prototypes) decodes to the same score as the ONNX layout.
    for key in ("value", "box_map50_95", "mask_map50"):
        assert hailo[key] == pytest.approx(ours[key], abs=1e-3), key
    # Same definitions as the validator: boxes exactly, masks within the source-vs-input raster.
    assert ours["box_map50_95"] == pytest.approx(float(native.box.map), abs=0.005)
    assert ours["mask_map50"] == pytest.approx(float(native.seg.map50), abs=0.01)
    assert ours["value"] == pytest.approx(float(native.seg.map), abs=0.03)
    assert ours["present"] == [native.names[int(c)] for c in native.seg.ap_class_index]
    for c in native.seg.ap_class_index:
        assert ours["per_class"][native.names[int(c)]] == pytest.approx(float(native.seg.maps[int(c)]), abs=0.06)
    # gate.yolo_scores (validator defaults): the same boxes, masks judged at input / 4 (never finer).
    assert ours["box_map50_95"] == pytest.approx(defaults["box_map50_95"], abs=0.005)
    assert defaults["value"] < ours["value"] and defaults["present"] == ours["present"]


def test_input_size_frames_score_exactly_like_the_validator(scoring_case, tmp_path):
    """Frames of the input size: no resampling anywhere, so nothing but the definitions can differ."""
    onnx_path, _end_nodes, _ = scoring_case
    data_yaml = pseudo_labelled_split(tmp_path / "data", onnx_path, [(128, 128)] * 4)
    split = evaluate_yolo.load_val_split(data_yaml)
    ours = evaluate_yolo.evaluate_yolo(evaluate_yolo.onnx_predictor(onnx_session(onnx_path)), split, INPUT_HW, "onnx")
    native = _validator_native_masks(onnx_path, data_yaml, tmp_path)
    assert ours["value"] > 0.3
    assert ours["value"] == pytest.approx(float(native.seg.map), abs=1e-4)
    assert ours["mask_map50"] == pytest.approx(float(native.seg.map50), abs=1e-4)
    assert ours["box_map50_95"] == pytest.approx(float(native.box.map), abs=1e-4)


def test_labels_rasterise_like_ultralytics(tmp_path):
    """Resampled to 1000 points, truncated, filled; an overlap goes to the smaller instance."""
    from idd_edge.yolo.offline import import_ultralytics

    import_ultralytics()
    from ultralytics.data.utils import polygons2masks_overlap
    from ultralytics.utils.ops import resample_segments

    shape = (60, 90)
    polygons = [np.array([[0.05, 0.1], [0.7, 0.15], [0.6, 0.9], [0.1, 0.7]]),
                np.array([[0.5, 0.4], [0.95, 0.45], [0.8, 0.98]])]
    path = tmp_path / "labels" / "val" / "a.txt"
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"{c} " + " ".join(f"{v:.4f}" for v in p.ravel()) + "\n" for c, p in enumerate(polygons)))
    labels = evaluate_yolo.read_labels(path, shape, NUM_CLASSES)

    segments = resample_segments([np.round(p, 4).astype(np.float32) for p in polygons], n=1000)
    pixels = [s * np.array([shape[1], shape[0]], dtype=np.float32) for s in segments]
    theirs, order = polygons2masks_overlap(shape, np.stack(pixels), downsample_ratio=1)
    for k, (region, mask) in enumerate(zip(labels.regions, labels.masks)):
        full = np.zeros(shape, dtype=bool)
        full[region[1]:region[3], region[0]:region[2]] = mask
        np.testing.assert_array_equal(full, theirs == 1 + int(np.flatnonzero(order == k)[0]))
    np.testing.assert_allclose(labels.boxes[0], [0.05 * 90, 0.1 * 60, 0.7 * 90, 0.9 * 60], atol=1e-3)
    assert labels.class_ids.tolist() == [0, 1]


def test_cropped_mask_iou_equals_ultralytics_mask_iou():
    from idd_edge.yolo.offline import import_ultralytics

    import_ultralytics()
    import torch
    from ultralytics.utils.metrics import mask_iou

    rng = np.random.default_rng(0)
    shape = (40, 50)

    def random_instances(count):
        regions, masks, full = [], [], np.zeros((count, *shape), dtype=bool)
        for k in range(count):
            x0, y0 = rng.integers(0, 30), rng.integers(0, 20)
            x1, y1 = x0 + rng.integers(1, 20), y0 + rng.integers(1, 20)
            mask = rng.random((y1 - y0, x1 - x0)) > 0.3
            regions.append([x0, y0, x1, y1])
            masks.append(mask)
            full[k, y0:y1, x0:x1] = mask
        return np.array(regions), masks, full

    (ra, ma, fa), (rb, mb, fb) = random_instances(6), random_instances(9)
    ours = evaluate_yolo.mask_ious(ra, ma, rb, mb)
    theirs = mask_iou(torch.from_numpy(fa.reshape(6, -1)).float(), torch.from_numpy(fb.reshape(9, -1)).float())
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-6)
    assert (ours > 0).any()


@pytest.mark.parametrize("line, problem", [
    ("7 0.1 0.1 0.5 0.1 0.5 0.5", "class 7"),
    ("1 0.1 0.1 0.5", "even number"),
    ("1 0.5 0.5 0.2 0.2", "box-only"),
    ("1 0.1 0.1 1.5 0.1 0.5 0.5", "normalised"),
    ("car 0.1 0.1 0.5 0.1 0.5 0.5", "not numbers"),
])
def test_bad_label_lines_name_the_file(tmp_path, line, problem):
    path = tmp_path / "bad.txt"
    path.write_text(f"0 0.1 0.1 0.2 0.1 0.2 0.2\n{line}\n")
    with pytest.raises(InputError, match=problem) as error:
        evaluate_yolo.read_labels(path, (10, 10), NUM_CLASSES)
    assert str(path) in str(error.value) and "line 2" in str(error.value)


def test_dataset_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="yolo-bridge"):
        evaluate_yolo.load_val_split(tmp_path / "data.yaml")
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: {0: a}\n")
    with pytest.raises(InputError, match="`val`"):
        evaluate_yolo.load_val_split(tmp_path / "data.yaml")
    (tmp_path / "data.yaml").write_text("val: images/val\nnames: {0: a}\n")
    with pytest.raises(InputError, match="not a directory"):
        evaluate_yolo.load_val_split(tmp_path / "data.yaml")
    assert evaluate_yolo.label_path(tmp_path / "images" / "val" / "x.png") == tmp_path / "labels" / "val" / "x.txt"
