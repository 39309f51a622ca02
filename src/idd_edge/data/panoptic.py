"""COCO panoptic ground truth from the object canvas: one PNG per image, one JSON per split.

Follows the official IDD converter (AutoNUE `cityscape_panoptic_gt.py`) where it is well defined:
categories are the values of the selected encoding, named by the first non-ignoreInEval table row, void
excluded (`labels.category_is_thing`); things are categories whose row has instances; each individual
instance of a thing category is a segment, the groups of a thing category (e.g. `cargroup`) form one crowd
segment (iscrowd 1) and each stuff category one segment; pixels of values outside the categories are
VOID (id 0). Per segment: id, category_id, area, bbox [x, y, w, h], iscrowd.

Deliberate deviations from the official converter:
- segment ids are 1..n, numbered in the order the segments' first objects appear in the JSON, instead of
  the random colours of panopticapi's IdGenerator: deterministic, never 0 (0 is VOID in COCO panoptic,
  and the official ids of a stuff category with value 0, level3Id road, can collide with it) and unique
  per image. The PNG holds id = R + 256 G + 256^2 B (COCO), so it is data, not a preview.
- segments come from the annotation objects, not from resampling the 16-bit instance PNG (the official
  script resizes it to 1280x720 with a bicubic filter, which invents instance ids). Things keep their
  own segment even where the 8-bit instance image cannot number them (csId 355 of `vehicle fallback`).
- 2-point polygons take part as thin lines, as in the instance image the official converter reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from idd_edge.data.annotation import PolygonObject
from idd_edge.data.rasterize import apply_lut
from idd_edge.labels import LABELS, category_is_thing, category_names, check_encoding

MAX_SEGMENTS = 256**3 - 1  # ids must fit in the three PNG channels


def categories(encoding: str) -> list[dict[str, Any]]:
    """COCO `categories` of `encoding`: id, name, supercategory (level2IdName), isthing, color."""
    is_thing, names = category_is_thing(encoding), category_names(encoding)
    first_row = {}
    for label in LABELS:
        if label.ignoreInEval:
            continue
        first_row.setdefault(label.value(encoding), label)
    return [
        {
            "id": value,
            "name": names[value],
            "supercategory": first_row[value].level2IdName,
            "isthing": int(is_thing[value]),
            "color": list(first_row[value].color),
        }
        for value in sorted(is_thing)
    ]


@dataclass(frozen=True)
class PanopticImage:
    rgb: np.ndarray  # (H, W, 3) uint8, id = R + 256 G + 256^2 B, 0 = VOID
    segments_info: list[dict[str, Any]]


def _segment_key(obj: PolygonObject, position: int, encoding: str, is_thing: dict[int, bool]):
    """Objects with equal keys form one segment; None = VOID."""
    value = obj.label.value(encoding)
    if value not in is_thing:
        return None
    if not is_thing[value]:
        return ("stuff", value)
    if obj.label.hasInstances and not obj.group:
        return ("thing", position)
    return ("crowd", value)


def panoptic_image(canvas: np.ndarray, objects: Sequence[PolygonObject], encoding: str) -> PanopticImage:
    """Panoptic PNG and segments_info from an object index canvas (`rasterize.draw_object_index`)."""
    check_encoding(encoding)
    is_thing = category_is_thing(encoding)
    height, width = canvas.shape
    bins = len(objects) + 1
    # Per object (column 0 = background): in which rows / columns does it own pixels? Two bincounts over
    # the canvas give areas and bounding boxes of all objects at once.
    rows = np.bincount((canvas + np.arange(height, dtype=np.int64)[:, None] * bins).ravel(), minlength=height * bins)
    rows = rows.reshape(height, bins)
    cols = np.bincount((canvas + np.arange(width, dtype=np.int64)[None, :] * bins).ravel(), minlength=width * bins)
    cols = cols.reshape(width, bins) > 0
    areas = rows.sum(axis=0)
    rows = rows > 0

    members: dict[Any, list[int]] = {}  # segment key -> object positions, in first-appearance order
    for position, obj in enumerate(objects, start=1):
        key = _segment_key(obj, position, encoding, is_thing)
        if key is not None and areas[position] > 0:
            members.setdefault(key, []).append(position)
    if len(members) > MAX_SEGMENTS:
        raise ValueError(f"{len(members)} segments do not fit in a 24-bit panoptic PNG")

    segment_of_object = np.zeros(bins, dtype=np.int64)
    segments_info = []
    for segment_id, (key, positions) in enumerate(members.items(), start=1):
        segment_of_object[positions] = segment_id
        ys = np.flatnonzero(rows[:, positions].any(axis=1))
        xs = np.flatnonzero(cols[:, positions].any(axis=1))
        segments_info.append(
            {
                "id": segment_id,
                "category_id": int(key[1] if key[0] != "thing" else objects[key[1] - 1].label.value(encoding)),
                "area": int(areas[positions].sum()),
                "bbox": [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)],
                "iscrowd": int(key[0] == "crowd"),
            }
        )
    colors = np.stack([segment_of_object & 255, (segment_of_object >> 8) & 255, segment_of_object >> 16], axis=1)
    return PanopticImage(apply_lut(canvas, colors.astype(np.uint8)), segments_info)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of a panoptic PNG (COCO: R + 256 G + 256^2 B)."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def coco_document(
    images: list[dict[str, Any]], annotations: list[dict[str, Any]], encoding: str
) -> dict[str, Any]:
    """The per-split COCO panoptic JSON."""
    return {
        "info": {"description": f"IDD panoptic ground truth, categories = {encoding} values", "encoding": encoding},
        "images": images,
        "annotations": annotations,
        "categories": categories(encoding),
    }
