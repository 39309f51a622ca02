"""Mask mAP of a YOLOv8-seg model from its raw outputs: ONNX Runtime, or the Hailo emulator's split layout.

Ultralytics' validator only scores models it can load itself (.pt, .onnx); the Hailo DFC's integer
emulation (`SDK_QUANTIZED`) only hands back the ten head tensors of the HEF. This scorer takes any
`predict(batch) -> outputs`, where `batch` is (1, H, W, 3) float32 raw 0-255 RGB letterboxed with the
device's letterbox (what the chip is fed; its model script divides by 255), and decodes the outputs
with the device's own post-processing (`idd_edge_runtime.yolo_postprocess`, ONNX or Hailo layout).

The metric definitions are Ultralytics' validator's, by calling its own code where there is any: its
validation defaults (conf 0.001, multi-label NMS at IoU 0.7, max_det 300 raised to the most labels in
one image), its greedy `match_predictions` at IoU 0.50:0.05:0.95, `box_iou`, the `mask_iou` formula,
`SegmentMetrics` (`ap_per_class`: 101-point interpolated AP over the classes with labels), and its label
masks (polygons resampled to 1000 points, truncated, filled; overlaps to the smaller instance). The
result has the shape of `gate.yolo_scores`.

Where the two differ, by design (this scorer measures what the device outputs):
* mask raster: the validator compares masks at prototype resolution (input / 4, letterboxed) by
  default; here predicted masks are the device's, at source resolution, and labels are filled there;
* boxes: the device clips boxes to the frame, the validator does not;
* a detection whose mask is empty is dropped (Ultralytics' predictor and the device do that too);
* letterbox rounding: the validator resizes the long side with ceil, the device rounds (one pixel).
tests/test_evaluate_yolo.py measures the gap: equal to the validator with input-size masks on frames
of the input size, a few points off with resampling, and well above the validator's defaults on small
objects. So the gate holds the Hailo emulation to ONNX fp32 scored by this same scorer, never to
numbers from the validator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from tqdm import tqdm

from idd_edge.errors import InputError
from idd_edge.images import is_image

#: Ultralytics' validation defaults (`default.yaml`: conf is None -> 0.001 in val, iou 0.7, max_det 300).
VAL_CONF = 0.001
VAL_IOU = 0.7
VAL_MAX_DET = 300
#: Image files listed (Ultralytics reads these and more; the bridge links .png / .jpg frames).
#: Ultralytics' dataset resamples every label polygon to this many points before rasterising it.
RESAMPLED_POINTS = 1000
LAYOUTS = ("onnx", "hailo")
SCORER = "host (idd_edge.export.evaluate_yolo)"

#: (1, H, W, 3) float32 raw 0-255 letterboxed RGB -> the model's raw outputs: (output0, protos) for the
#: ONNX layout; the ten NHWC tensors (a name -> array mapping, or a list as the DFC's `infer` returns)
#: for the Hailo layout.
Predictor = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class InstanceLabels:
    """One image's labelled instances in source pixels; each mask covers only its `regions` row."""

    class_ids: np.ndarray  # (g,) int64
    boxes: np.ndarray  # (g, 4) float32 xyxy: the polygon's extent, as Ultralytics derives label boxes
    regions: np.ndarray  # (g, 4) int64 x0, y0, x1, y1 (end exclusive), clipped to the frame
    masks: tuple[np.ndarray, ...]  # bool (y1 - y0, x1 - x0) each


@dataclass(frozen=True)
class YoloValSplit:
    """The validation images of an Ultralytics segmentation dataset (`data.yaml`) and their label files."""

    data_yaml: Path
    names: dict[int, str]
    images: tuple[Path, ...]
    max_labels: int  # the most instances in one image (Ultralytics raises max_det to it)

    def load(self, index: int) -> tuple[np.ndarray, InstanceLabels]:
        """(RGB uint8 frame, its labels) of image `index`."""
        import cv2

        image_path = self.images[index]
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(image_path, "cannot read the image (corrupt or not an image)")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return rgb, read_labels(label_path(image_path), rgb.shape[:2], len(self.names))


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `/images/` in the path becomes `/labels/`, the suffix `.txt`."""
    parts = list(image.parts)
    if "images" not in parts[:-1]:
        raise InputError(image, "an Ultralytics dataset image must lie under an `images/` directory")
    index = len(parts) - 2 - parts[-2::-1].index("images")
    parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def load_val_split(data_yaml: Path, split: str = "val") -> YoloValSplit:
    """The `split` images listed by `data_yaml` (directories, relative to its `path` or its own folder)."""
    import yaml

    try:
        data = yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(data_yaml, "not found; run `idd-edge yolo-bridge` first") from None
    except yaml.YAMLError as exc:
        raise InputError(data_yaml, f"not valid YAML: {exc}") from None
    if not isinstance(data, dict) or split not in data or "names" not in data:
        raise InputError(data_yaml, f"needs `{split}` and `names` keys (an Ultralytics dataset file)")
    names = data["names"]
    names = dict(enumerate(names)) if isinstance(names, list) else {int(k): str(v) for k, v in names.items()}
    if sorted(names) != list(range(len(names))):
        raise InputError(data_yaml, f"class ids must be 0..{len(names) - 1}, got {sorted(names)}")
    root = Path(data_yaml).parent / data.get("path", "")
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    images: list[Path] = []
    for entry in entries:
        folder = root / str(entry)
        if not folder.is_dir():
            raise InputError(data_yaml, f"{split} entry {entry!r}: {folder} is not a directory")
        images += sorted(p for p in folder.rglob("*") if is_image(p))
    if not images:
        raise InputError(data_yaml, f"no {split} images under {', '.join(str(root / str(e)) for e in entries)}")
    max_labels = max((_count_lines(label_path(image)) for image in images), default=0)
    return YoloValSplit(Path(data_yaml), names, tuple(images), max_labels)


def _count_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def read_labels(path: Path, shape: tuple[int, int], num_classes: int) -> InstanceLabels:
    """Polygon label lines (`class x1 y1 x2 y2 ...`, normalised) rasterised at the frame's `shape`.

    As Ultralytics' dataset does: a missing label file is a background image; boxes are the polygons'
    extents; each polygon is resampled to 1000 points (more if it has more, the same count for the whole
    image, in float32) before it is scaled, truncated to int and filled (`yolo.polygons`' even-odd rule);
    pixels in several instances go to the smallest. Each mask is filled over its own extent only, which
    equals filling the whole frame and cropping.
    """
    from idd_edge.yolo.offline import import_ultralytics
    from idd_edge.yolo.polygons import polygon_to_mask

    import_ultralytics()
    from ultralytics.utils.ops import resample_segments

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    class_ids, polygons = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = np.array([float(v) for v in fields], dtype=np.float64)
        except ValueError:
            raise InputError(path, f"line {number}: not numbers: {line.strip()[:60]!r}") from None
        class_id = int(values[0])
        if class_id != values[0] or not 0 <= class_id < num_classes:
            raise InputError(path, f"line {number}: class {fields[0]} is not one of 0..{num_classes - 1}")
        coords = values[1:]
        if len(coords) < 6 or len(coords) % 2:
            raise InputError(path, f"line {number}: expected a polygon (an even number >= 6 of coordinates), "
                                   f"got {len(coords)} (a box-only label cannot be scored for masks)")
        if coords.min() < 0.0 or coords.max() > 1.0:
            raise InputError(path, f"line {number}: coordinates must be normalised to [0, 1]")
        class_ids.append(class_id)
        polygons.append(coords.astype(np.float32).reshape(-1, 2))
    height, width = shape
    size = np.array([width, height], dtype=np.float32)
    points = max([RESAMPLED_POINTS - 1, *(len(p) for p in polygons)]) + 1
    boxes, regions, masks = [], [], []
    for polygon, resampled in zip(polygons, resample_segments([p.copy() for p in polygons], n=points)):
        extent = polygon * size
        boxes.append([*extent.min(axis=0), *extent.max(axis=0)])
        vertices = (resampled * size).astype(np.int32)  # Ultralytics' truncation, before any shift
        x0, y0 = (int(v) for v in vertices.min(axis=0).clip(0))
        x1, y1 = min(int(vertices[:, 0].max()) + 1, width), min(int(vertices[:, 1].max()) + 1, height)
        regions.append([x0, y0, max(x0, x1), max(y0, y1)])
        masks.append(polygon_to_mask(vertices - (x0, y0), (max(y1 - y0, 0), max(x1 - x0, 0))))
    regions = np.array(regions, dtype=np.int64).reshape(-1, 4)
    _give_overlaps_to_smaller(regions, masks)
    return InstanceLabels(
        class_ids=np.array(class_ids, dtype=np.int64),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        regions=regions,
        masks=tuple(masks),
    )


def _give_overlaps_to_smaller(regions: np.ndarray, masks: list[np.ndarray]) -> None:
    """Ultralytics' `overlap_mask` labels (its validation default): a pixel in several instances belongs
    to the smallest, as `polygons2masks_overlap` draws them largest first. In place."""
    order = np.argsort(-np.array([m.sum() for m in masks]))
    for rank, i in enumerate(order):
        for j in order[rank + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = regions[i], regions[j]
            x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
            if x1 > x0 and y1 > y0:
                masks[i][y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0] &= ~masks[j][y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]


def mask_ious(
    regions_a: np.ndarray, masks_a: Sequence[np.ndarray], regions_b: np.ndarray, masks_b: Sequence[np.ndarray],
    same_class: np.ndarray | None = None, eps: float = 1e-7,
) -> np.ndarray:
    """(len(a), len(b)) IoU of cropped masks with Ultralytics' `mask_iou` formula (inter / (union + eps)).

    Masks are compared where their regions overlap only (full-frame masks would cost n x H x W memory);
    pairs that `same_class` marks False are left at 0, as `match_predictions` zeroes them anyway.
    """
    ious = np.zeros((len(masks_a), len(masks_b)), dtype=np.float32)
    areas_a = np.array([m.sum() for m in masks_a], dtype=np.float64)
    areas_b = np.array([m.sum() for m in masks_b], dtype=np.float64)
    for i, (ra, ma) in enumerate(zip(regions_a, masks_a)):
        for j, (rb, mb) in enumerate(zip(regions_b, masks_b)):
            if same_class is not None and not same_class[i, j]:
                continue
            x0, y0 = max(ra[0], rb[0]), max(ra[1], rb[1])
            x1, y1 = min(ra[2], rb[2]), min(ra[3], rb[3])
            if x1 <= x0 or y1 <= y0:
                continue
            inter = np.count_nonzero(ma[y0 - ra[1]:y1 - ra[1], x0 - ra[0]:x1 - ra[0]]
                                     & mb[y0 - rb[1]:y1 - rb[1], x0 - rb[0]:x1 - rb[0]])
            ious[i, j] = inter / (areas_a[i] + areas_b[j] - inter + eps)
    return ious


def onnx_predictor(session: Any) -> Predictor:
    """An Ultralytics YOLOv8-seg ONNX session as a `Predictor` (ONNX layout: output0, prototypes)."""
    input_name = session.get_inputs()[0].name
    by_rank = {len(output.shape): output.name for output in session.get_outputs()}
    if len(session.get_outputs()) != 2 or set(by_rank) != {3, 4}:
        raise ValueError("expected a YOLOv8-seg ONNX model with outputs (1, 4+nc+32, N) and (1, 32, h, w)")

    def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tensor = np.ascontiguousarray(batch.transpose(0, 3, 1, 2) / np.float32(255.0), dtype=np.float32)
        output0, protos = session.run([by_rank[3], by_rank[4]], {input_name: tensor})
        return output0, protos

    return predict


def evaluate_yolo(
    predict: Predictor,
    split: YoloValSplit,
    input_hw: tuple[int, int],
    layout: str,
    max_images: int | None = None,
    desc: str = "scoring masks",
) -> dict[str, Any]:
    """Box mAP50-95, mask mAP50-95 / mAP50 and per-class mask AP of `predict` on `split` (gate shape).

    `layout` names `predict`'s outputs: "onnx" (output0, prototypes) or "hailo" (the ten NHWC tensors).
    """
    from idd_edge.yolo.offline import import_ultralytics

    import_ultralytics()
    import torch
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import SegmentMetrics, box_iou

    from idd_edge_runtime import yolo_postprocess as yp
    from idd_edge_runtime.letterbox import letterbox

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    config = yp.PostprocessConfig(num_classes=len(split.names), conf_threshold=VAL_CONF, iou_threshold=VAL_IOU,
                                  max_det=max(VAL_MAX_DET, split.max_labels), multi_label=True)
    # The validator's own matching code; it reads nothing from the validator but the IoU thresholds.
    matcher = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    metrics = SegmentMetrics(names=dict(split.names))
    count = len(split.images) if not max_images else min(len(split.images), int(max_images))
    for index in tqdm(range(count), desc=desc, leave=False):
        image, labels = split.load(index)
        canvas, geometry = letterbox(image, input_hw)
        outputs = predict(canvas[None].astype(np.float32))
        detections = decode(outputs, layout, geometry, config)
        pred_cls, true_cls = torch.from_numpy(detections.class_ids), torch.from_numpy(labels.class_ids)
        if len(detections) and len(labels.class_ids):
            boxes = box_iou(torch.from_numpy(labels.boxes), torch.from_numpy(detections.boxes))
            same_class = labels.class_ids[:, None] == detections.class_ids[None, :]
            masks = torch.from_numpy(mask_ious(labels.regions, labels.masks, detections.mask_regions,
                                               detections.masks, same_class))
            tp = BaseValidator.match_predictions(matcher, pred_cls, true_cls, boxes).numpy()
            tp_m = BaseValidator.match_predictions(matcher, pred_cls, true_cls, masks).numpy()
        else:
            tp = tp_m = np.zeros((len(detections), len(matcher.iouv)), dtype=bool)
        metrics.update_stats({
            "tp": tp, "tp_m": tp_m, "conf": detections.scores.astype(np.float64),
            "pred_cls": detections.class_ids.astype(np.float64), "target_cls": labels.class_ids.astype(np.float64),
            "target_img": np.unique(labels.class_ids).astype(np.float64), "im_name": split.images[index].name,
        })
    metrics.process()
    present = [int(c) for c in metrics.seg.ap_class_index]
    names = split.names
    return {
        "metric": "mask_map50_95",
        "value": float(metrics.seg.map),
        "per_class": {names[c]: (float(metrics.seg.maps[c]) if c in present else None) for c in sorted(names)},
        "present": [names[c] for c in present],
        "images": count,
        "box_map50_95": float(metrics.box.map),
        "mask_map50": float(metrics.seg.map50),
        "scorer": SCORER,
    }


def decode(outputs: Any, layout: str, geometry: Any, config: Any) -> Any:
    """The device decoder for one frame's raw outputs in `layout` (see `Predictor`)."""
    from idd_edge_runtime import yolo_postprocess as yp

    if layout == "onnx":
        output0, protos = outputs
        return yp.decode_onnx(output0, protos, geometry, config)
    if isinstance(outputs, np.ndarray):
        raise ValueError(f"the Hailo layout has ten outputs, got one array of shape {outputs.shape}")
    named = outputs if isinstance(outputs, Mapping) else {f"output{i}": array for i, array in enumerate(outputs)}
    return yp.decode_hailo(named, geometry, config)
