"""The official IDD toolkit's rasterisation, re-implemented plainly: the parity oracle and speed baseline.

`json2labelImg.createLabelImage` / `json2instanceImg.createInstanceImage` (AutoNUE/public-code) draw one
PIL image per output, one `ImageDraw.polygon(points, fill=value)` per object in JSON list order. This
module does exactly that, without the official bugs (NameError on unknown labels, Pillow>=9 refusal) and
with the project's documented rules (label images skip < 3 points, instance images < 2; instance counter
keyed by the encoded class value; a void class value never becomes an instance id). Input must be a
valid polygon document: the oracle does no validation (the converter's job).

Used by tests (pixel parity of `rasterize`) and by `benchmarks/convert.py` (the per-core speed baseline).
Not used by the conversion itself.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw

from idd_edge.labels import NAME_TO_LABEL, background_value


def _drawable(document: dict[str, Any], min_points: int):
    """(label row, is_group, points) of the objects an official pass draws, in list order."""
    for obj in document["objects"]:
        if obj.get("deleted", 0):
            continue
        name = obj["label"]
        group = name not in NAME_TO_LABEL and name.endswith("group")
        label = NAME_TO_LABEL[name[: -len("group")] if group else name]
        if len(obj["polygon"]) < min_points:
            continue
        yield label, group, [tuple(point) for point in obj["polygon"]]


def label_image(document: dict[str, Any], encoding: str) -> Image.Image:
    """Mode "L" label image (PIL clips values above 255, e.g. csId 355 -> 255)."""
    image = Image.new("L", (document["imgWidth"], document["imgHeight"]), background_value(encoding))
    draw = ImageDraw.Draw(image)
    for label, _, points in _drawable(document, 3):
        draw.polygon(points, fill=getattr(label, encoding))
    return image


def color_image(document: dict[str, Any]) -> Image.Image:
    """Mode "RGBA" colour image on black, alpha 255 everywhere."""
    image = Image.new("RGBA", (document["imgWidth"], document["imgHeight"]), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for label, _, points in _drawable(document, 3):
        draw.polygon(points, fill=label.color)
    return image


def instance_image(document: dict[str, Any], encoding: str) -> Image.Image:
    """Mode "I" instance image: class * 1000 + k per instance, k from 0 per 8-bit class value."""
    image = Image.new("I", (document["imgWidth"], document["imgHeight"]), background_value(encoding))
    draw = ImageDraw.Draw(image)
    void = {255, background_value(encoding)}
    counters: dict[int, int] = {}
    for label, group, points in _drawable(document, 2):
        value = min(getattr(label, encoding), 255)  # the value the 8-bit label image holds
        if label.hasInstances and not group and value not in void:
            counters[value] = counters.get(value, -1) + 1
            value = value * 1000 + counters[value]
        draw.polygon(points, fill=value)
    return image
