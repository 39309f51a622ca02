"""Read one IDD `*_gtFine_polygons.json` into drawable objects, reporting every problem instead of crashing.

The official toolkit trusts its input: an unknown label raises (NameError, a missing import), a missing
key raises KeyError and NaN coordinates reach PIL's C code. Here a file-level problem (malformed JSON,
missing or invalid image size, no `objects` list) makes the whole file unusable (`AnnotationError`; no
mask is written for it), while an object-level problem skips that object only and is returned as an
`Issue`. Deleted objects are skipped before anything else is looked at, as the official reader does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import chain

from idd_edge.labels import Label, is_group, lookup

#: Largest coordinate magnitude accepted. PIL casts coordinates to C ints (undefined beyond +-2^31) and
#: subtracts them in int arithmetic (overflows beyond +-2^30); real IDD polygons stay within a few pixels
#: of their 1920x1080 frame, so anything this far out can only be corruption. Within it, parity is exact.
MAX_ABS_COORDINATE = 1_000_000.0

#: Largest image accepted (pixels). Guards against an absurd imgWidth/imgHeight allocating gigabytes.
MAX_PIXELS = 8192 * 8192

#: Every reason a finding can carry, with what it means (the conversion report lists counts per reason).
REASONS: dict[str, str] = {
    "unreadable_annotation": "the annotation file cannot be read (no mask written)",
    "malformed_json": "the file is not a JSON object with an 'objects' list (no mask written)",
    "missing_key": "a required key is absent (file: no mask written; object: object skipped)",
    "invalid_size": "imgWidth/imgHeight is not a positive integer or is implausibly large (no mask written)",
    "invalid_object": "an object is not a JSON object or its label is not a string (object skipped)",
    "unknown_label": "the label is not in the IDD table, even without a 'group' suffix (object skipped)",
    "empty_polygon": "the polygon has no points (object skipped)",
    "short_polygon": "the polygon has 1 or 2 points: not drawn in label/colour images (2 points: drawn as a "
    "line in instance/panoptic images, as the official toolkit does)",
    "invalid_polygon": "the polygon is not a list of [x, y] number pairs (object skipped)",
    "non_finite_coordinate": "a coordinate is NaN or infinite (object skipped)",
    "coordinate_out_of_range": f"a coordinate exceeds +-{MAX_ABS_COORDINATE:g} px (object skipped)",
    "missing_image": "no leftImg8bit image for the annotation (masks still written; size unchecked)",
    "unreadable_image": "the image exists but cannot be opened (masks still written; size unchecked)",
    "size_mismatch": "the image size differs from imgWidth/imgHeight (no mask written)",
    "missing_annotation": "an image of an annotated split has no polygon JSON",
    "instance_overflow": "more than 1000 instances of one class: instance ids would collide (no instance mask)",
}


@dataclass(frozen=True)
class Issue:
    """A problem found in one annotation file (the caller adds the file name)."""

    reason: str
    detail: str


class AnnotationError(Exception):
    """The file cannot be converted at all: a mask drawn from it would be wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.issue = Issue(reason, detail)


@dataclass(frozen=True)
class PolygonObject:
    """One drawable annotation object: a known label and its polygon as a flat [x0, y0, x1, y1, ...]."""

    index: int  # position in the JSON `objects` list (the official reader's object id)
    label: Label
    group: bool  # crowd annotation such as `cargroup`: plain class value, never an instance id
    points: tuple[float, ...]

    @property
    def num_points(self) -> int:
        return len(self.points) // 2


@dataclass(frozen=True)
class Annotation:
    width: int
    height: int
    objects: tuple[PolygonObject, ...]  # valid, non-deleted objects in JSON list order
    listed: int  # objects in the JSON list
    deleted: int  # deleted objects among them (skipped silently, as the official reader does)

    @property
    def skipped(self) -> int:
        """Objects not drawn anywhere because of a problem (each one is an Issue)."""
        return self.listed - self.deleted - len(self.objects)


def parse_annotation(raw: bytes | str) -> tuple[Annotation, list[Issue]]:
    """Parse a polygon JSON document. Raises AnnotationError when no correct mask can come from it."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AnnotationError("malformed_json", f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise AnnotationError("malformed_json", f"top level is a {type(document).__name__}, expected an object")
    missing = [key for key in ("imgWidth", "imgHeight", "objects") if key not in document]
    if missing:
        raise AnnotationError("missing_key", f"missing top-level key(s) {', '.join(map(repr, missing))}")
    width, height = document["imgWidth"], document["imgHeight"]
    for name, value in (("imgWidth", width), ("imgHeight", height)):
        if type(value) is not int or value <= 0:
            raise AnnotationError("invalid_size", f"{name} is {value!r}, expected a positive integer")
    if width * height > MAX_PIXELS:
        raise AnnotationError("invalid_size", f"{width}x{height} exceeds the {MAX_PIXELS} pixel limit")
    if not isinstance(document["objects"], list):
        raise AnnotationError("malformed_json", "'objects' is not a list")

    objects: list[PolygonObject] = []
    issues: list[Issue] = []
    deleted = 0
    for index, entry in enumerate(document["objects"]):
        if isinstance(entry, dict) and entry.get("deleted", 0):
            deleted += 1  # the official reader skips deleted objects before looking at anything else
            continue
        parsed = _parse_object(index, entry)
        if isinstance(parsed, Issue):
            issues.append(parsed)
            continue
        if parsed.num_points < 3:
            issues.append(Issue("short_polygon", f"object {index} ({entry['label']!r}): {parsed.num_points} point(s)"))
            if parsed.num_points < 2:
                continue  # drawn nowhere: PIL cannot draw a 1-point polygon
        objects.append(parsed)
    return Annotation(width, height, tuple(objects), len(document["objects"]), deleted), issues


def _parse_object(index: int, entry: object) -> PolygonObject | Issue:
    if not isinstance(entry, dict):
        return Issue("invalid_object", f"object {index} is a {type(entry).__name__}, expected an object")
    for key in ("label", "polygon"):
        if key not in entry:
            return Issue("missing_key", f"object {index} has no {key!r}")
    name = entry["label"]
    if not isinstance(name, str):
        return Issue("invalid_object", f"object {index}: label {name!r} is not a string")
    label = lookup(name)
    if label is None:
        return Issue("unknown_label", f"object {index}: label {name!r} is not in the IDD label table")
    where = f"object {index} ({name!r})"
    polygon = entry["polygon"]
    if not isinstance(polygon, list):
        return Issue("invalid_polygon", f"{where}: polygon is a {type(polygon).__name__}, expected a list")
    if not polygon:
        return Issue("empty_polygon", f"{where}: polygon has no points")
    # Built-in passes over the lists (several times faster than numpy or per-value Python on ~30 points).
    if set(map(type, polygon)) != {list} or set(map(len, polygon)) != {2}:
        return Issue("invalid_polygon", f"{where}: polygon is not a list of [x, y] pairs")
    flat = list(chain.from_iterable(polygon))
    if not set(map(type, flat)) <= {int, float}:  # JSON numbers only: PIL would take booleans as 0/1
        return Issue("invalid_polygon", f"{where}: polygon has coordinates that are not numbers")
    try:
        total = sum(flat)  # NaN or infinity anywhere makes the sum non-finite
    except OverflowError:  # an integer beyond float range
        return _out_of_range(where)
    if not math.isfinite(total) and not all(map(math.isfinite, flat)):
        return Issue("non_finite_coordinate", f"{where}: polygon has NaN or infinite coordinates")
    if min(flat) < -MAX_ABS_COORDINATE or max(flat) > MAX_ABS_COORDINATE:
        return _out_of_range(where)
    return PolygonObject(index, label, is_group(name), tuple(flat))


def _out_of_range(where: str) -> Issue:
    return Issue("coordinate_out_of_range", f"{where}: a coordinate exceeds +-{MAX_ABS_COORDINATE:g} px")
