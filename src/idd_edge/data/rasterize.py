"""Polygons -> label / colour / instance masks, pixel-identical to the official IDD toolkit, in one PIL pass.

The official toolkit draws every output separately: `ImageDraw.polygon(points, fill=value)` onto an "L"
image (labels), an "RGBA" image (colours) and an "I" image (instances), objects in JSON list order, later
ones overwriting earlier ones. Which pixels a polygon covers does not depend on the image mode or the fill
value: PIL converts the coordinates to C ints (truncating toward zero) and runs the same scan-line filler
(`polygon_generic`) for all three modes; only the value written per pixel differs. So we draw ONCE, filling each object with its
position in the list (1-based; 0 = no object), and derive every output with a per-object look-up table.
The parity tests check this against the per-mode PIL rendering on random polygons.

Two official quirks are kept on purpose:
- label and colour images skip polygons with fewer than 3 points, instance images draw 2-point polygons
  (PIL renders them as a thin line); when such objects exist the label canvas is drawn separately;
- an 8-bit label image clips a value above 255 to 255, as PIL does for `fill=355` on mode "L"
  (the csId of `vehicle fallback`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageDraw

from idd_edge.data.annotation import Annotation, PolygonObject
from idd_edge.labels import Label, background_value, check_encoding

#: Instance ids are class * INSTANCE_FACTOR + k (Cityscapes/IDD convention), so k must stay below it.
INSTANCE_FACTOR = 1000
UINT16_MAX = 65535


def class_value(label: Label, encoding: str) -> int:
    """The value an 8-bit label image holds for `label`: PIL clips ink to 0..255 on mode "L", so the
    csId of `vehicle fallback` (355) becomes 255 there (the same clip as the official output)."""
    return min(max(label.value(encoding), 0), 255)


def void_values(encoding: str) -> frozenset[int]:
    """Values that mean 'no class' in `encoding`: 255 and the background (unlabeled) value."""
    return frozenset({255, background_value(encoding)})


@dataclass(frozen=True)
class InstanceIds:
    values: tuple[int, ...]  # per object: its value in the instance image
    overflow: tuple[int, ...]  # class values with more instances than the encoding can hold


def instance_ids(objects: Sequence[PolygonObject], encoding: str) -> InstanceIds:
    """Instance image value per object: class * 1000 + k for individual instances of classes with
    instances, k counting from 0 per ENCODED class value (so person and animal, which share a level3Id,
    share a counter there but not at `id`); groups, stuff and void class values get the plain value.

    Keying by the encoded value (the seed project's fix) keeps ids unique at coarse levels, where the
    official level3Id key lets e.g. car and truck (both level1Id 3) both produce 3000. A void class value
    (e.g. csTrainId 255 of `animal`) never becomes an instance id: 255 * 1000 would read as class 255.
    """
    check_encoding(encoding)
    void = void_values(encoding)
    counters: dict[int, int] = {}
    values: list[int] = []
    overflow: set[int] = set()
    for obj in objects:
        value = class_value(obj.label, encoding)
        if obj.label.hasInstances and not obj.group and value not in void:
            k = counters.get(value, 0)
            counters[value] = k + 1
            if k >= INSTANCE_FACTOR or value * INSTANCE_FACTOR + k > UINT16_MAX:
                overflow.add(value)
            value = value * INSTANCE_FACTOR + k
        values.append(value)
    return InstanceIds(tuple(values), tuple(sorted(overflow)))


def draw_object_index(objects: Sequence[PolygonObject], width: int, height: int) -> np.ndarray:
    """(H, W) canvas holding, per pixel, 1 + the position in `objects` of the last object covering it
    (0 = none). uint8 up to 255 objects (cheap look-ups), else int32."""
    mode = "L" if len(objects) <= 255 else "I"
    image = Image.new(mode, (width, height), 0)
    draw = ImageDraw.Draw(image)
    for position, obj in enumerate(objects, start=1):
        draw.polygon(obj.points, fill=position)
    return np.asarray(image)


def apply_lut(canvas: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """lut[canvas] for a 1-D table (any dtype) or an (N, 3) colour table -> (H, W, 3)."""
    if canvas.dtype == np.uint8:
        if lut.ndim == 2:
            return cv2.merge([apply_lut(canvas, np.ascontiguousarray(lut[:, c])) for c in range(lut.shape[1])])
        padded = np.zeros(256, dtype=lut.dtype)
        padded[: len(lut)] = lut
        return cv2.LUT(canvas, padded)  # several times faster than numpy fancy indexing
    return np.take(lut, canvas, axis=0)


@dataclass
class Rasterized:
    """The masks of one annotation (None where not requested) plus the instance canvas for panoptic."""

    label: np.ndarray | None = None  # (H, W) uint8 class values
    color: np.ndarray | None = None  # (H, W, 3) uint8 RGB
    instance: np.ndarray | None = None  # (H, W) uint16
    instance_overflow: tuple[int, ...] = ()
    instance_canvas: np.ndarray | None = None  # object index canvas of `instance_objects`
    instance_objects: tuple[PolygonObject, ...] = field(default_factory=tuple)


def rasterize(
    annotation: Annotation,
    encoding: str,
    label: bool = True,
    color: bool = False,
    instance: bool = False,
    instance_canvas: bool = False,
) -> Rasterized:
    """Draw the requested masks of `annotation` (objects already validated and deleted ones dropped)."""
    check_encoding(encoding)
    size = (annotation.width, annotation.height)
    result = Rasterized()
    area_objects = tuple(obj for obj in annotation.objects if obj.num_points >= 3)
    if instance or instance_canvas:
        line_objects = annotation.objects  # 2-point polygons are drawn (as lines) in instance images
        canvas = draw_object_index(line_objects, *size)
        result.instance_canvas, result.instance_objects = canvas, line_objects
        if instance:
            ids = instance_ids(line_objects, encoding)
            lut = np.array((background_value(encoding), *ids.values), dtype=np.uint16)
            result.instance = apply_lut(canvas, lut)
            result.instance_overflow = ids.overflow
    if label or color:
        if result.instance_canvas is not None and len(area_objects) == len(annotation.objects):
            canvas = result.instance_canvas  # no 2-point objects: the same drawing serves both
        else:
            canvas = draw_object_index(area_objects, *size)
        if label:
            values = [background_value(encoding)] + [class_value(obj.label, encoding) for obj in area_objects]
            result.label = apply_lut(canvas, np.array(values, dtype=np.uint8))
        if color:
            colors = [(0, 0, 0)] + [obj.label.color for obj in area_objects]
            result.color = apply_lut(canvas, np.array(colors, dtype=np.uint8))
    return result
