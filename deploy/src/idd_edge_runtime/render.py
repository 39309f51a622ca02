"""Drawing on the frame: semantic overlay, instance masks, privacy blur, status text.

The host side, not the accelerator, limited the seed's Pi app (16.7 FPS for a model the compiler
estimated at 605 FPS), so every step here is sized to its data: the class map is colourised with one
LUT, blended with `cv2.addWeighted` (integer SIMD), and each instance touches only its own box.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from idd_edge_runtime.semantic import colorize
from idd_edge_runtime.tracking import track_color
from idd_edge_runtime.yolo_postprocess import InstanceDetections

Color = Tuple[int, int, int]

#: Default privacy classes: any class whose name has one of these words (IDD "person", "rider",
#: the seed's YOLO class "person_animal").
PRIVATE_WORDS = ("person", "rider")


def is_private(name: str, words: Sequence[str] = PRIVATE_WORDS) -> bool:
    tokens = name.lower().replace("-", "_").replace("/", "_").replace(" ", "_").split("_")
    return any(word in tokens for word in words)


def blend_semantic(out: np.ndarray, labels: np.ndarray, lut: np.ndarray, alpha: float) -> None:
    """Blend the colourised class map onto `out` in place (labels resized nearest to the frame)."""
    height, width = out.shape[:2]
    if labels.shape != (height, width):
        labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    cv2.addWeighted(out, 1.0 - alpha, colorize(labels, lut), alpha, 0.0, dst=out)


def draw_instances(
    out: np.ndarray,
    detections: InstanceDetections,
    colors: Sequence[Color],
    names: Sequence[str],
    alpha: float,
    labels: bool = True,
    track_ids: Optional[np.ndarray] = None,
) -> None:
    """Tint each instance's mask pixels with its colour (inside its box only), then draw boxes and labels.

    The colour is the track's when the instance has a track id (the same object keeps its colour from frame
    to frame), else its class colour. Masks, then boxes, then labels: nothing drawn later covers an earlier
    instance's label.
    """
    instance_colors = _instance_colors(detections, colors, track_ids)
    for i in range(len(detections)):
        x0, y0, x1, y1 = (int(v) for v in detections.mask_regions[i])
        mask = detections.masks[i]
        if mask.size and x1 > x0 and y1 > y0:
            roi = out[y0:y1, x0:x1]
            color = instance_colors[i]
            # roi * (1 - alpha) + colour * alpha on the mask pixels: the scaling is one SIMD pass over the box,
            # the masked add writes only mask pixels (a bool mask is a 0/1 uint8 mask without a copy).
            scaled = cv2.addWeighted(roi, 1.0 - alpha, roi, 0.0, 0.0)
            cv2.add(scaled, (color[0] * alpha, color[1] * alpha, color[2] * alpha, 0.0), dst=roi, mask=mask.view(np.uint8))
    corners = [tuple(int(round(float(v))) for v in box) for box in detections.boxes]
    for (bx0, by0, bx1, by1), color in zip(corners, instance_colors):
        cv2.rectangle(out, (bx0, by0), (bx1, by1), color, 2)
    if labels:
        for i, ((bx0, by0, _, _), class_id, score) in enumerate(zip(corners, detections.class_ids, detections.scores)):
            name = names[class_id] if class_id < len(names) else str(class_id)
            track = f" #{int(track_ids[i])}" if track_ids is not None and track_ids[i] >= 0 else ""
            _label(out, f"{name}{track} {float(score):.2f}", (bx0, by0), instance_colors[i])


def _instance_colors(detections: InstanceDetections, colors: Sequence[Color], track_ids: Optional[np.ndarray]) -> List[Color]:
    out = []
    for i, class_id in enumerate(detections.class_ids):
        if track_ids is not None and track_ids[i] >= 0:
            out.append(track_color(int(track_ids[i])))
        else:
            out.append(colors[int(class_id) % len(colors)])
    return out


def _text_scale(out: np.ndarray) -> float:
    """Font scale that reads the same at 320 px and 1920 px wide frames."""
    return min(max(out.shape[1] / 1400.0, 0.35), 1.2)


def _label(out: np.ndarray, text: str, corner: Tuple[int, int], background: Color) -> None:
    """Text on a filled box of the class colour, above `corner` (inside the frame when at the top edge)."""
    scale = _text_scale(out)
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = corner
    top = y - height - baseline - 2 if y - height - baseline - 2 >= 0 else y
    cv2.rectangle(out, (x, top), (x + width + 2, top + height + baseline + 2), background, cv2.FILLED)
    text_color = (0, 0, 0) if sum(background) > 380 else (255, 255, 255)
    cv2.putText(out, text, (x + 1, top + height + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, text_color, 1, cv2.LINE_AA)


def box_blur(image: np.ndarray, size: int) -> np.ndarray:
    # Two box-filter passes approximate a wide Gaussian at a cost independent of the kernel size.
    kernel = (size, size)
    return cv2.blur(cv2.blur(image, kernel), kernel)


def blur_instances(out: np.ndarray, detections: InstanceDetections, private_ids: Iterable[int]) -> int:
    """Blur each instance of a private class under its (slightly dilated) mask; returns how many were blurred.

    The blur is computed from a margin around the box only, strong enough (a quarter of the box size)
    that faces and clothing are not recognisable; the mask is dilated so the person's outline is covered.
    """
    private = set(private_ids)
    height, width = out.shape[:2]
    blurred = 0
    for i in range(len(detections)):
        if int(detections.class_ids[i]) not in private:
            continue
        x0, y0, x1, y1 = (int(v) for v in detections.mask_regions[i])
        mask = detections.masks[i]
        if x1 <= x0 or y1 <= y0 or not mask.any():
            continue
        margin = max(4, (max(x1 - x0, y1 - y0)) // 12)
        rx0, ry0 = max(x0 - margin, 0), max(y0 - margin, 0)
        rx1, ry1 = min(x1 + margin, width), min(y1 + margin, height)
        region_mask = np.zeros((ry1 - ry0, rx1 - rx0), dtype=np.uint8)
        region_mask[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] = mask
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
        region_mask = cv2.dilate(region_mask, kernel)
        region = out[ry0:ry1, rx0:rx1]
        size = max(9, max(x1 - x0, y1 - y0) // 4) | 1
        np.copyto(region, box_blur(region, size), where=region_mask[:, :, None].astype(bool))
        blurred += 1
    return blurred


def blur_label_pixels(out: np.ndarray, labels: np.ndarray, private_ids: Sequence[int]) -> bool:
    """Privacy without an instance model: blur the pixels the semantic model calls a private class."""
    if not private_ids:
        return False
    height, width = out.shape[:2]
    if labels.shape != (height, width):
        labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    mask = np.isin(labels, np.asarray(private_ids, dtype=np.uint8))
    if not mask.any():
        return False
    mask = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))).astype(bool)
    np.copyto(out, box_blur(out, max(9, min(height, width) // 16) | 1), where=mask[:, :, None])
    return True


def draw_status(out: np.ndarray, text: str) -> None:
    """A readable one-line banner (model, overlays, FPS) in the top-left corner."""
    _label(out, text, (0, 0), (32, 32, 32))
