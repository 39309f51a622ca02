"""YOLOv8-seg post-processing in NumPy for both output layouts the project meets.

* ONNX layout (Ultralytics export): `output0` (1, 4 + nc + 32, N) with decoded xywh boxes in input
  pixels, sigmoided class scores and 32 mask coefficients per anchor; `output1` prototypes (1, 32, H/4, W/4).
* Hailo layout (HEF compiled with the Model Zoo recipe): ten NHWC tensors matched by shape: per stride
  8/16/32 DFL box logits (H, W, 64), class scores already sigmoided on the chip (H, W, nc) and mask
  coefficients (H, W, 32), plus prototypes (H/4, W/4, 32). Integer tensors are dequantised with
  (q - zero_point) * scale.

Both layouts meet in one path: confidence filter first (so DFL decoding and everything after touch only
the few survivors), class-aware greedy NMS, boxes mapped back through the letterbox, and masks computed
per detection inside its box only: the mask logits come from the prototype pixels under the box, and
only that crop is resampled to source resolution. The result equals Ultralytics' `retina_masks=True`
prediction (masks at native resolution, `sigmoid(c @ P) > 0.5` cropped to the box, detections with an
empty mask dropped) without ever building a full-frame mask. NumPy only (plus the letterbox geometry);
never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from idd_edge_runtime.letterbox import Letterbox

#: Channels of the mask-coefficient / prototype tensors in every YOLOv8-seg model.
MASK_DIM = 32
#: DFL bins per box side (Ultralytics `reg_max`), so 4 * 16 = 64 box channels per anchor.
REG_MAX = 16
STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds of the host post-processing (seed runtime: conf 0.5, NMS IoU 0.5).

    `multi_label`: every class above the threshold makes a candidate of its anchor, as in Ultralytics'
    validator (mAP evaluation); off, each anchor offers its best class only, as its predictor and the
    device do.
    """

    num_classes: int
    conf_threshold: float = 0.5
    iou_threshold: float = 0.5
    mask_threshold: float = 0.5
    max_det: int = 300
    multi_label: bool = False

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        for name in ("conf_threshold", "iou_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")

    @property
    def mask_logit_threshold(self) -> float:
        """sigmoid(x) > t  <=>  x > logit(t): the masks never need the sigmoid itself."""
        return math.log(self.mask_threshold / (1.0 - self.mask_threshold))


@dataclass
class InstanceDetections:
    """Detections in source-frame pixels; each mask covers only its own box region.

    `mask_regions[i] = (x0, y0, x1, y1)` are the integer pixel bounds (end exclusive) of `masks[i]`, the
    source pixels whose centre-index lies inside box i (Ultralytics' crop rule: x0 <= c < x1).
    """

    boxes: np.ndarray  # (n, 4) float32 xyxy
    scores: np.ndarray  # (n,) float32
    class_ids: np.ndarray  # (n,) int64
    mask_regions: np.ndarray  # (n, 4) int64 x0, y0, x1, y1
    masks: list[np.ndarray] = field(default_factory=list)  # bool (y1 - y0, x1 - x0) each
    source_shape: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.scores)

    def full_masks(self) -> np.ndarray:
        """(n, H, W) bool masks in the source frame (for evaluation and tests; the device draws crops)."""
        out = np.zeros((len(self), *self.source_shape), dtype=bool)
        for i, ((x0, y0, x1, y1), mask) in enumerate(zip(self.mask_regions, self.masks)):
            out[i, y0:y1, x0:x1] = mask
        return out


@dataclass(frozen=True)
class _Protos:
    """Prototype tensor as it arrived: (32, h, w) from ONNX or (h, w, 32) from Hailo, never transposed."""

    array: np.ndarray
    channels_last: bool

    @property
    def spatial_shape(self) -> tuple[int, int]:
        return self.array.shape[:2] if self.channels_last else self.array.shape[1:]

    def logits(self, coefficients: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """coefficients @ prototypes over one crop: (h, w) mask logits."""
        if self.channels_last:
            return self.array[rows, cols] @ coefficients
        crop = self.array[:, rows, cols]
        return (coefficients @ crop.reshape(crop.shape[0], -1)).reshape(crop.shape[1:])


@dataclass
class _Candidates:
    boxes: np.ndarray  # (k, 4) xyxy, input pixels
    scores: np.ndarray  # (k,)
    class_ids: np.ndarray  # (k,)
    coefficients: np.ndarray  # (k, 32)


def decode_onnx(
    output0: np.ndarray, protos: np.ndarray, geometry: Letterbox, config: PostprocessConfig
) -> InstanceDetections:
    """Detections from the ONNX layout: `output0` (1, 4 + nc + 32, N) and `protos` (1, 32, h, w)."""
    pred = _drop_batch(np.asarray(output0), 2, "output0")
    protos_chw = _drop_batch(np.asarray(protos), 3, "protos")
    nc = config.num_classes
    if pred.shape[0] != 4 + nc + MASK_DIM:
        raise ValueError(
            f"output0 has {pred.shape[0]} channels, expected 4 + {nc} classes + {MASK_DIM} = {4 + nc + MASK_DIM}"
        )
    if protos_chw.shape[0] != MASK_DIM:
        raise ValueError(f"prototypes have {protos_chw.shape[0]} channels, expected {MASK_DIM}")
    keep, class_ids, scores = _confident(pred[4 : 4 + nc].T, config)
    xywh = pred[:4, keep].T.astype(np.float32)
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    candidates = _Candidates(
        boxes=boxes,
        scores=scores.astype(np.float32),
        class_ids=class_ids,
        coefficients=pred[4 + nc :, keep].T.astype(np.float32),
    )
    return _finish(candidates, _Protos(protos_chw, channels_last=False), geometry, config)


def decode_hailo(
    outputs: Mapping[str, np.ndarray],
    geometry: Letterbox,
    config: PostprocessConfig,
    quantization: Mapping[str, tuple[float, float]] | None = None,
) -> InstanceDetections:
    """Detections from Hailo's split NHWC outputs, matched by shape (names are only used for dequantisation).

    `quantization` maps an output name to (scale, zero_point); integer outputs without an entry are an error.
    """
    tensors = {name: _dequantize(name, array, quantization) for name, array in outputs.items()}
    layout = _match_hailo_outputs(tensors, geometry.input_shape, config.num_classes)
    parts = []
    for stride in STRIDES:
        box_logits, class_scores, coefficients = layout[stride]
        height, width = class_scores.shape[:2]
        keep, class_ids, scores = _confident(class_scores.reshape(height * width, -1), config)
        rows, cols = np.divmod(keep, width)
        distances = _dfl_expectation(box_logits.reshape(height * width, 4, REG_MAX)[keep])
        anchor_x, anchor_y = cols + 0.5, rows + 0.5
        left_top = np.stack([anchor_x, anchor_y], axis=1) - distances[:, :2]
        right_bottom = np.stack([anchor_x, anchor_y], axis=1) + distances[:, 2:]
        boxes = np.concatenate([left_top, right_bottom], axis=1) * stride
        parts.append(
            _Candidates(
                boxes=boxes.astype(np.float32),
                scores=scores.astype(np.float32),
                class_ids=class_ids,
                coefficients=coefficients.reshape(height * width, MASK_DIM)[keep].astype(np.float32),
            )
        )
    candidates = _Candidates(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("boxes", "scores", "class_ids", "coefficients"))
    )
    return _finish(candidates, _Protos(layout["protos"], channels_last=True), geometry, config)


def _confident(scores: np.ndarray, config: PostprocessConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor indices, class ids, scores) of the candidates among (anchors, classes) `scores`: each
    anchor's best class above the threshold, or with `multi_label` every class above it (anchor-major
    order, as Ultralytics' `torch.where`)."""
    if config.multi_label:
        anchors, class_ids = np.nonzero(scores > config.conf_threshold)
        return anchors, class_ids, scores[anchors, class_ids]
    best = scores.max(axis=1)
    anchors = np.flatnonzero(best > config.conf_threshold)
    return anchors, scores[anchors].argmax(axis=1), best[anchors]


def nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware greedy NMS (torchvision semantics: drop boxes with IoU > threshold); indices by score."""
    order = np.argsort(-scores, kind="stable")
    boxes, class_ids = boxes[order].astype(np.float32), class_ids[order]
    count = len(order)
    keep = []
    if count <= _PAIRWISE_NMS_MAX:  # one IoU matrix, then a cheap greedy pass over its rows
        suppress = (_pairwise_iou(boxes, boxes) > iou_threshold) & (class_ids[:, None] == class_ids[None, :])
        suppressed = np.zeros(count, dtype=bool)
        for i in range(count):
            if not suppressed[i]:
                keep.append(i)
                suppressed |= suppress[i]
        return order[np.asarray(keep, dtype=np.int64)]
    suppressed = np.zeros(count, dtype=bool)
    for i in range(count):  # thousands of candidates (very low thresholds): row by row, bounded memory
        if suppressed[i]:
            continue
        keep.append(i)
        rest = np.arange(i + 1, count)
        rest = rest[~suppressed[rest] & (class_ids[rest] == class_ids[i])]
        if rest.size:
            suppressed[rest[_pairwise_iou(boxes[i : i + 1], boxes[rest])[0] > iou_threshold]] = True
    return order[np.asarray(keep, dtype=np.int64)]


#: Up to this many NMS candidates the full IoU matrix (count^2 floats) is computed at once.
_PAIRWISE_NMS_MAX = 1024


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes."""
    width = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(0)
    height = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(0)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, np.finfo(np.float32).tiny)


def _finish(
    candidates: _Candidates, protos: _Protos, geometry: Letterbox, config: PostprocessConfig
) -> InstanceDetections:
    keep = nms(candidates.boxes, candidates.scores, candidates.class_ids, config.iou_threshold)[: config.max_det]
    boxes = geometry.boxes_to_source(candidates.boxes[keep])
    regions = _mask_regions(boxes, geometry.source_shape)
    coefficients = candidates.coefficients[keep]
    masks = [
        _box_mask(coefficients[i], protos, regions[i], geometry, config.mask_logit_threshold)
        for i in range(len(keep))
    ]
    # A detection without a single mask pixel is dropped, as Ultralytics' segment predictor does.
    has_mask = np.array([mask.any() for mask in masks], dtype=bool)
    return InstanceDetections(
        boxes=boxes[has_mask],
        scores=candidates.scores[keep][has_mask],
        class_ids=candidates.class_ids[keep][has_mask].astype(np.int64),
        mask_regions=regions[has_mask],
        masks=[mask for mask, kept in zip(masks, has_mask) if kept],
        source_shape=geometry.source_shape,
    )


def _mask_regions(boxes: np.ndarray, source_shape: tuple[int, int]) -> np.ndarray:
    """Pixel index ranges [ceil(x1), ceil(x2)) x [ceil(y1), ceil(y2)): the pixels c with x1 <= c < x2."""
    regions = np.ceil(boxes).astype(np.int64)
    height, width = source_shape
    regions[:, [0, 2]] = regions[:, [0, 2]].clip(0, width)
    regions[:, [1, 3]] = regions[:, [1, 3]].clip(0, height)
    return regions


def _box_mask(
    coefficients: np.ndarray,
    protos: _Protos,
    region: np.ndarray,
    geometry: Letterbox,
    logit_threshold: float,
) -> np.ndarray:
    """Binary mask of one detection over its box region, sampled bilinearly from the prototype logits.

    Source pixel centre c + 0.5 maps to input x = pad + (c + 0.5) * gain and to prototype coordinate
    x / (input / proto) - 0.5 (align_corners=False, edges clamped as torch does), so the mask equals
    upsampling the whole prototype map, but only the box's pixels are ever computed: the logits of the
    prototype pixels under the box, then one (rows x crop) @ crop @ (crop x cols) product whose two
    interpolation matrices hold the bilinear weights (two per row).
    """
    x0, y0, x1, y1 = (int(v) for v in region)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
    proto_h, proto_w = protos.spatial_shape
    in_h, in_w = geometry.input_shape
    u = geometry.source_to_input_x(np.arange(x0, x1) + 0.5) * (proto_w / in_w) - 0.5
    v = geometry.source_to_input_y(np.arange(y0, y1) + 0.5) * (proto_h / in_h) - 0.5
    col_weights, c_lo, c_hi = _interpolation_matrix(u, proto_w)
    row_weights, r_lo, r_hi = _interpolation_matrix(v, proto_h)
    logits = protos.logits(coefficients, slice(r_lo, r_hi), slice(c_lo, c_hi)).astype(np.float32, copy=False)
    return (row_weights @ logits) @ col_weights.T > logit_threshold


def _interpolation_matrix(coords: np.ndarray, size: int) -> tuple[np.ndarray, int, int]:
    """(n, hi - lo) linear-interpolation weights at `coords` over source indices lo..hi-1 (torch's edge clamping)."""
    coords = np.maximum(coords, 0.0)
    lower = np.minimum(np.floor(coords).astype(np.int64), size - 1)
    upper = np.minimum(lower + 1, size - 1)
    weight = (coords - lower).astype(np.float32)
    lo, hi = int(lower[0]), int(upper[-1]) + 1  # coords ascend
    matrix = np.zeros((len(coords), hi - lo), dtype=np.float32)
    index = np.arange(len(coords))
    matrix[index, lower - lo] = 1.0 - weight
    matrix[index, upper - lo] += weight  # same column as `lower` at the clamped edge
    return matrix, lo, hi


def _dfl_expectation(logits: np.ndarray) -> np.ndarray:
    """(k, 4, 16) DFL logits -> (k, 4) distances in grid units: softmax over bins, then expected bin."""
    shifted = logits - logits.max(axis=2, keepdims=True)
    weights = np.exp(shifted)
    weights /= weights.sum(axis=2, keepdims=True)
    return weights @ np.arange(REG_MAX, dtype=weights.dtype)


def _drop_batch(array: np.ndarray, ndim: int, name: str) -> np.ndarray:
    if array.ndim == ndim + 1:
        if array.shape[0] != 1:
            raise ValueError(f"{name}: batch size {array.shape[0]}, the post-processing takes one frame")
        array = array[0]
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions (plus an optional batch of 1), got shape {array.shape}")
    return array


def _dequantize(name: str, array: np.ndarray, quantization: Mapping[str, tuple[float, float]] | None) -> np.ndarray:
    array = np.asarray(array)
    if quantization is not None and name in quantization:
        scale, zero_point = quantization[name]
        return ((array.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"output {name!r} is {array.dtype} but no (scale, zero_point) was given to dequantise it")
    return array.astype(np.float32, copy=False)


def _match_hailo_outputs(
    tensors: Mapping[str, np.ndarray], input_shape: tuple[int, int], num_classes: int
) -> dict:
    """Assign the ten Hailo outputs to (stride -> (boxes, classes, coefficients)) and 'protos' by shape."""
    if num_classes in (4 * REG_MAX, MASK_DIM):
        raise ValueError(
            f"{num_classes} classes make class-score outputs indistinguishable by shape from "
            f"{'box' if num_classes == 4 * REG_MAX else 'mask-coefficient'} outputs"
        )
    in_h, in_w = input_shape
    by_shape: dict[tuple[int, int, int], np.ndarray] = {}
    for name, array in tensors.items():
        hwc = _drop_batch(array, 3, name)
        if hwc.shape in by_shape:
            raise ValueError(f"two Hailo outputs share shape {hwc.shape}; cannot tell them apart")
        by_shape[hwc.shape] = hwc

    def take(shape: tuple[int, int, int], what: str) -> np.ndarray:
        if shape not in by_shape:
            found = ", ".join(str(s) for s in sorted(by_shape)) or "none"
            raise ValueError(f"no Hailo output of shape {shape} ({what}) for a {in_h}x{in_w} input; outputs: {found}")
        return by_shape.pop(shape)

    layout: dict = {"protos": take((in_h // 4, in_w // 4, MASK_DIM), "prototypes")}
    for stride in STRIDES:
        height, width = in_h // stride, in_w // stride
        layout[stride] = (
            take((height, width, 4 * REG_MAX), f"stride-{stride} DFL boxes"),
            take((height, width, num_classes), f"stride-{stride} class scores"),
            take((height, width, MASK_DIM), f"stride-{stride} mask coefficients"),
        )
    if by_shape:
        raise ValueError(f"unexpected extra Hailo outputs of shapes {sorted(by_shape)}")
    return layout


def hailo_output_shapes(input_shape: tuple[int, int], num_classes: int) -> list[tuple[int, int, int]]:
    """The ten NHWC output shapes (without batch) of a YOLOv8-seg HEF for `input_shape` (h, w)."""
    in_h, in_w = input_shape
    shapes = [(in_h // 4, in_w // 4, MASK_DIM)]
    for stride in STRIDES:
        height, width = in_h // stride, in_w // stride
        shapes += [(height, width, 4 * REG_MAX), (height, width, num_classes), (height, width, MASK_DIM)]
    return shapes


__all__: Sequence[str] = (
    "MASK_DIM",
    "REG_MAX",
    "STRIDES",
    "InstanceDetections",
    "PostprocessConfig",
    "decode_hailo",
    "decode_onnx",
    "hailo_output_shapes",
    "nms",
)
