"""Paint a synthetic scene's RGB image from its IDD polygon annotation (used by `idd-edge synth`).

Every non-deleted polygon is filled with PIL `ImageDraw.polygon` on the full frame, in list order, so its
pixels are exactly the ones the official toolkit rasterises for that object. Each label gets its own
texture: a base colour from a per-class palette, jittered per instance, shaded with windows, bars,
foliage, tiles, stripes..., then lane markings and shadows (`Decals`), per-image brightness and tint, a
mild blur and sensor noise. Colour alone is deliberately not a perfect classifier: several classes share
hues (white sky / whitewashed buildings / white cars; grey road / silver cars / concrete; brown dirt /
animals), so a model has to use texture, shape and context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import cv2
import numpy as np
from numpy.random import Generator
from PIL import Image, ImageDraw

from idd_edge.labels import LABELS, UNLABELED, lookup

RGB = tuple[int, int, int]
Polygon = Sequence[Sequence[float]]

#: Texture scales (cells, stripes) are tuned at the default frame height and scale with the image height.
REFERENCE_HEIGHT = 270
SHADOW = 0.55  # brightness factor of shadows under vehicles, animals and trees

# fmt: off
PALETTE: dict[str, tuple[RGB, ...]] = {
    "sky": ((135, 180, 225), (195, 208, 220), (225, 226, 228)),
    "building": ((200, 188, 165), (160, 85, 62), (222, 218, 208), (125, 125, 128), (190, 150, 105)),
    "bridge": ((150, 146, 140), (120, 118, 115)),
    "vegetation": ((62, 100, 42), (88, 120, 52), (46, 76, 36)),
    "road": ((92, 92, 96), (112, 106, 100), (74, 74, 78)),
    "parking": ((124, 118, 110),),
    # laterite / packed red earth, as on many Indian unpaved roads: apart from the sandy non-drivable
    # ground (the two shared one dirt palette and no model told them apart: ~12 IoU)
    "drivable fallback": ((150, 92, 62), (132, 84, 60)),
    "non-drivable fallback": ((150, 126, 96), (122, 102, 76), (165, 150, 120)),
    "sidewalk": ((184, 180, 172), (176, 112, 104), (200, 192, 178)),  # lighter than the asphalt next to it
    "curb": ((222, 200, 62), (205, 205, 200), (150, 150, 148)),
    "wall": ((182, 170, 150), (140, 136, 130), (200, 180, 158)),
    # painted railings (green, blue, rust): grey ones read as the road or a pole behind them (~15 IoU)
    "fence": ((52, 130, 92), (56, 88, 160), (150, 84, 52)),
    "guard rail": ((190, 190, 196), (170, 170, 160)),
    "billboard": ((200, 62, 60), (62, 92, 200), (230, 200, 44), (240, 240, 238)),
    "traffic sign": ((220, 42, 40), (42, 82, 190), (240, 240, 236), (230, 200, 10)),
    "traffic light": ((32, 32, 32), (62, 62, 52)),
    "pole": ((142, 142, 142), (102, 102, 100), (72, 72, 62)),
    "polegroup": ((142, 142, 142), (102, 102, 100)),
    "obs-str-bar-fallback": ((230, 122, 32), (200, 200, 196)),
    "car": ((235, 235, 235), (180, 180, 185), (42, 42, 46), (170, 32, 32), (42, 62, 140), (122, 130, 140)),
    "autorickshaw": ((62, 140, 62), (230, 200, 42), (40, 40, 40)),
    "bus": ((200, 52, 42), (62, 112, 180), (230, 230, 230), (220, 150, 42)),
    "truck": ((220, 130, 42), (200, 62, 42), (62, 120, 62), (52, 82, 160)),
    "vehicle fallback": ((112, 92, 62), (92, 112, 72)),
    "motorcycle": ((32, 32, 36), (150, 22, 22), (52, 62, 120), (170, 170, 175)),
    "bicycle": ((52, 52, 52), (120, 32, 32)),
    "rider": ((200, 62, 62), (62, 82, 150), (230, 230, 220), (92, 72, 52)),
    "person": ((182, 62, 62), (72, 92, 160), (230, 230, 220), (200, 170, 92), (82, 62, 42), (150, 52, 120)),
    "animal": ((130, 100, 70), (220, 215, 205), (62, 52, 46), (170, 150, 120)),
    "license plate": ((240, 240, 230), (240, 210, 42)),
    "ego vehicle": ((32, 32, 36),),
}
# fmt: on
AD_COLOURS: tuple[RGB, ...] = ((240, 240, 240), (20, 20, 20), (220, 40, 40), (40, 90, 200), (250, 200, 30))
SKIN: tuple[RGB, ...] = ((190, 142, 112), (150, 105, 80), (110, 75, 55))
GLASS, TYRE, LAMP = (45, 55, 66), (28, 28, 30), (200, 32, 32)


@dataclass(frozen=True)
class Decals:
    """Painting extras attached to an annotation object (by its `id`); not part of the IDD JSON."""

    shadows: tuple[Polygon, ...] = ()  # darkened on ground pixels just before the object is drawn
    marks: tuple[tuple[Polygon, RGB], ...] = ()  # (polygon, colour) painted inside the object after it


# ---------------------------------------------------------------------------------------------- noise

# Fine grain and sensor noise: Gaussian quantiles looked up from random bytes, several times faster than
# `standard_normal` and just as good for pixel noise.
_GAUSS_LUT = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], dtype=np.float32)


def _fine(rng: Generator, h: int, w: int, channels: int = 0) -> np.ndarray:
    """Per-pixel N(0, ~1) noise, (h, w) or (h, w, channels)."""
    return _GAUSS_LUT[rng.integers(0, 256, (h, w, channels) if channels else (h, w), dtype=np.uint8)]


def _smooth(rng: Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field (~unit variance) with features about `cell` px wide."""
    cell = max(cell, 1.0)
    grid = rng.standard_normal((int(h / cell) + 2, int(w / cell) + 2)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)


def _coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row position 0 (top) .. 1 (bottom) as (h, 1) and column index as (1, w), within the object's box."""
    return np.linspace(0, 1, h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def _shade(base: np.ndarray, shade: np.ndarray) -> np.ndarray:
    return shade[..., None] * base


def _full(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.broadcast_to(mask, (h, w))


# ---------------------------------------------------------------------------------------------- textures
# Each takes the instance's base colour (3,) float32, the box size, its generator and the texture unit
# (px per reference px) and returns the (h, w, 3) float32 colours of the box.


def _tex_sky(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    v, _ = _coords(h, w)
    colour = _shade(base, 0.9 + 0.18 * v + 0.03 * _smooth(rng, h, w, 30 * unit))  # brighter near the horizon
    cloud = np.clip(_smooth(rng, h, w, 25 * unit) - 0.8, 0, 1)[..., None] * 0.6
    return colour * (1 - cloud) + 235 * cloud


def _tex_asphalt(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    shade = 1 + 0.05 * _smooth(rng, h, w, 25 * unit) + 0.05 * _fine(rng, h, w)
    shade[_smooth(rng, h, w, 15 * unit) > 1.4] *= 0.85  # repaired patches
    return _shade(base, shade)


def _tex_dirt(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    coarse, grain = _smooth(rng, h, w, 10 * unit), _smooth(rng, h, w, 2 * unit)
    return _shade(base, 1 + 0.12 * coarse + 0.05 * grain + 0.04 * _fine(rng, h, w))


def _tex_tiles(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    period = max(3, round(rng.uniform(4, 8) * unit))
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    joints = ((rows % period) == 0) | ((cols % period) == 0)
    return _shade(base, np.where(joints, 0.8, 1.0) + 0.04 * _fine(rng, h, w))


def _tex_concrete(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    return _shade(base, 1 + 0.08 * _smooth(rng, h, w, 12 * unit) + 0.03 * _fine(rng, h, w))


def _tex_curb(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    if rng.random() < 0.4:
        return _tex_concrete(base, h, w, rng, unit)
    _, cols = _coords(h, w)
    period = max(2, round(rng.uniform(4, 10) * unit))
    painted = ((cols + rng.integers(0, period)) // period) % 5 < 3  # 3 of 5 blocks painted, 2 black
    colour = np.where(painted[..., None], base, np.float32(0.2) * base)
    return np.broadcast_to(colour, (h, w, 3)) * (1 + 0.04 * _fine(rng, h, w))[..., None]


def _tex_facade(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    shade = 1 + 0.06 * _smooth(rng, h, w, 8 * unit) + 0.03 * _fine(rng, h, w)
    if rng.random() < 0.8:
        v, cols = _coords(h, w)
        fx = (cols / max(w, 1) * rng.integers(3, 10)) % 1.0
        fy = (v * rng.integers(2, 8)) % 1.0
        shade[(fx > 0.25) & (fx < 0.75) & (fy > 0.3) & (fy < 0.75)] *= 0.5  # windows
    return _shade(base, shade)


def _tex_foliage(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    leaves, clumps = _smooth(rng, h, w, 3 * unit), _smooth(rng, h, w, 10 * unit)
    return _shade(base, np.clip(1 + 0.2 * leaves + 0.1 * clumps + 0.05 * _fine(rng, h, w), 0.4, 1.6))


def _tex_bars(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    v, cols = _coords(h, w)
    period = max(2, round(rng.uniform(3, 7) * unit))
    bars = (cols % period) < max(1, 0.45 * period)
    return _shade(base, np.where(bars | (v < 0.08), 1.05, 0.72) + 0.03 * _fine(rng, h, w))


def _tex_rail(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    v, cols = _coords(h, w)
    bands = ((v > 0.15) & (v < 0.45)) | ((v > 0.6) & (v < 0.85))
    posts = (cols % max(3, round(12 * unit))) < 1
    return _shade(base, np.where(bands & ~posts, 1.1, 0.75) + 0.03 * _fine(rng, h, w))


def _tex_poster(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    colour = np.broadcast_to(base, (h, w, 3)).copy()
    for _ in range(int(rng.integers(1, 4))):  # printed blocks of an advert
        bh, bw = max(1, int(h * rng.uniform(0.1, 0.4))), max(1, int(w * rng.uniform(0.1, 0.45)))
        y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        colour[y0 : y0 + bh, x0 : x0 + bw] = AD_COLOURS[int(rng.integers(len(AD_COLOURS)))]
    return colour * (1 + 0.03 * _fine(rng, h, w))[..., None]


def _tex_flat(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    v, _ = _coords(h, w)
    return _shade(base, 1.04 - 0.08 * v + 0.04 * _fine(rng, h, w))


def _tex_hazard(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    white = ((rows + cols) // max(2, round(3 * unit))) % 5 >= 3  # diagonal stripes
    return np.where(white[..., None], np.float32(240.0), base) * (1 + 0.03 * _fine(rng, h, w))[..., None]


def _tex_vehicle(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    v, cols = _coords(h, w)
    u = cols / max(w - 1, 1)
    colour = _shade(base, 1.08 - 0.16 * v + 0.03 * _fine(rng, h, w))
    colour[(v > 0.1) & (v < 0.36) & (u > 0.14) & (u < 0.86)] = GLASS
    colour[_full(v > 0.9, h, w)] = TYRE  # tyres, bumper shadow
    colour[(v > 0.5) & (v < 0.58) & ((u < 0.12) | (u > 0.88))] = LAMP
    return colour


def _tex_bus(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    v, cols = _coords(h, w)
    colour = _shade(base, 1.06 - 0.12 * v + 0.03 * _fine(rng, h, w))
    pillars = (cols % max(3, round(rng.uniform(6, 12) * unit))) < max(1, round(unit))
    colour[(v > 0.12) & (v < 0.42) & ~pillars] = GLASS
    colour[_full(v > 0.92, h, w)] = TYRE
    return colour


def _tex_two_wheeler(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    v, _ = _coords(h, w)
    colour = _shade(base, 1 + 0.05 * _fine(rng, h, w))
    colour[_full(v > 0.75, h, w)] = TYRE  # wheels, engine
    return colour


def _tex_clothes(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    v, _ = _coords(h, w)
    colour = _shade(base, 1 + 0.06 * _smooth(rng, h, w, 2 * unit))
    colour[_full(v > 0.58, h, w)] = 0.5 * base + np.array((25, 25, 35), dtype=np.float32)  # trousers
    colour[_full(v < 0.12, h, w)] = SKIN[int(rng.integers(len(SKIN)))]
    return colour


def _tex_fur(base: np.ndarray, h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    colour = _shade(base, 1 + 0.1 * _smooth(rng, h, w, 4 * unit) + 0.04 * _fine(rng, h, w))
    if rng.random() < 0.3:  # patched coat
        colour[_smooth(rng, h, w, 6 * unit) > 1.0] = (52, 46, 40)
    return colour


def _tex_crowd(palette: Sequence[RGB], h: int, w: int, rng: Generator, unit: float) -> np.ndarray:
    """A crowd region (`persongroup`, ...): members side by side in palette colours, darker below."""
    member = max(2, round(rng.uniform(6, 12) * unit))
    columns = rng.integers(0, len(palette), w // member + 1)
    colour = np.asarray(palette, dtype=np.float32)[columns[np.arange(w) // member]][None].repeat(h, axis=0)
    v, _ = _coords(h, w)
    return colour * np.where(v > 0.55, 0.6, 1.0)[..., None]


Texture = Callable[[np.ndarray, int, int, Generator, float], np.ndarray]
TEXTURES: dict[str, Texture] = {
    "sky": _tex_sky, "building": _tex_facade, "bridge": _tex_concrete, "wall": _tex_concrete,
    "vegetation": _tex_foliage, "road": _tex_asphalt, "parking": _tex_asphalt, "drivable fallback": _tex_dirt,
    "non-drivable fallback": _tex_dirt, "sidewalk": _tex_tiles, "curb": _tex_curb, "fence": _tex_bars,
    "guard rail": _tex_rail, "billboard": _tex_poster, "traffic sign": _tex_flat, "traffic light": _tex_flat,
    "pole": _tex_flat, "polegroup": _tex_bars, "obs-str-bar-fallback": _tex_hazard, "car": _tex_vehicle,
    "autorickshaw": _tex_vehicle, "truck": _tex_vehicle, "vehicle fallback": _tex_vehicle, "bus": _tex_bus,
    "motorcycle": _tex_two_wheeler, "bicycle": _tex_two_wheeler, "person": _tex_clothes,
    "rider": _tex_clothes, "animal": _tex_fur, "license plate": _tex_flat, "ego vehicle": _tex_flat,
}


def object_colour(label: str, rng: Generator) -> np.ndarray:
    """Base colour of one instance: a palette entry of its class, jittered in hue and brightness."""
    palette = PALETTE[label]
    base = np.asarray(palette[int(rng.integers(len(palette)))], dtype=np.float32)
    return np.clip(base * rng.uniform(0.92, 1.08) + rng.normal(0, 6, 3), 0, 255).astype(np.float32)


# ---------------------------------------------------------------------------------------------- painting


class Rasteriser:
    """Masks of polygons exactly as PIL fills them on the full frame (as the official toolkit draws).

    One scratch image is reused: draw the polygon, crop its bounding box, clear the box. Drawing on the full
    frame (not on a box-sized image) matters: PIL's rounding of negative coordinates is not
    translation-invariant, so only same-frame drawing reproduces the official pixels.
    """

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.scratch = Image.new("L", (width, height), 0)
        self.draw = ImageDraw.Draw(self.scratch)

    def mask(self, *polygons: Polygon) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """(box slices, uint8 0/1 mask of the box) of the filled polygon(s), or None when nothing is covered.
        Several polygons give the union of their masks (one crop: lane dashes of a road)."""
        xs = [p[0] for polygon in polygons for p in polygon]
        ys = [p[1] for polygon in polygons for p in polygon]
        if not xs:
            return None
        x0, y0 = max(0, math.floor(min(xs)) - 1), max(0, math.floor(min(ys)) - 1)
        x1, y1 = min(self.width, math.ceil(max(xs)) + 2), min(self.height, math.ceil(max(ys)) + 2)
        if x1 <= x0 or y1 <= y0:
            return None
        for polygon in polygons:
            self.draw.polygon([(float(x), float(y)) for x, y in polygon], fill=1)
        mask = np.asarray(self.scratch.crop((x0, y0, x1, y1)))
        self.draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=0)
        if not mask.any():
            return None
        return (slice(y0, y1), slice(x0, x1)), mask


IS_GROUND = np.zeros(256, dtype=bool)  # by label id: drivable / non-drivable ground (where shadows fall)
IS_GROUND[[label.id for label in LABELS if label.level1Id in (0, 1)]] = True


def paint_scene(
    annotation: Mapping[str, Any], rng: Generator, decals: Mapping[int, Decals] | None = None
) -> np.ndarray:
    """RGB image (H, W, 3) uint8 of an IDD annotation; see `paint_scene_with_labels`."""
    return paint_scene_with_labels(annotation, rng, decals)[0]


def paint_scene_with_labels(
    annotation: Mapping[str, Any], rng: Generator, decals: Mapping[int, Decals] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paint the non-deleted objects in list order; also return the label-id map (official `id` encoding).

    Each object's texture comes from its own generator, seeded by (one per-image draw, the object id), so
    an object looks the same whatever else the annotation holds: deleted objects change nothing.
    """
    width, height = int(annotation["imgWidth"]), int(annotation["imgHeight"])
    decals = decals or {}
    unit = height / REFERENCE_HEIGHT
    brightness, tint = rng.uniform(0.88, 1.12), rng.uniform(0.96, 1.04, 3).astype(np.float32)
    texture_seed = int(rng.integers(2**62))
    canvas = np.zeros((height, width, 3), dtype=np.float32)  # unlabeled pixels stay black, like IDD's void
    label_ids = np.full((height, width), UNLABELED.id, dtype=np.uint8)
    raster = Rasteriser(width, height)
    for obj in annotation["objects"]:
        if obj.get("deleted", 0):
            continue
        extras = decals.get(int(obj["id"]), Decals())
        if extras.shadows and (found := raster.mask(*extras.shadows)):
            box, mask = found
            on_ground = mask.view(bool) & IS_GROUND[label_ids[box]]
            _copy_masked(canvas[box] * np.float32(SHADOW), on_ground, canvas[box])
        if not (found := raster.mask(obj["polygon"])):
            continue
        box, mask = found
        label = lookup(obj["label"])
        if label is None:
            raise ValueError(f"label {obj['label']!r} is not in the IDD table")
        obj_rng = np.random.default_rng([texture_seed, int(obj["id"])])
        h, w = mask.shape
        if obj["label"] != label.name:  # a crowd group
            colour = _tex_crowd(PALETTE[label.name], h, w, obj_rng, unit)
        else:
            colour = TEXTURES[label.name](object_colour(label.name, obj_rng), h, w, obj_rng, unit)
        _copy_masked(colour, mask, canvas[box])
        np.copyto(label_ids[box], np.uint8(label.id), where=mask.view(bool))
        wear = np.float32(obj_rng.uniform(0.85, 1.0))  # faded paint
        for mark_colour in sorted({colour for _, colour in extras.marks}):
            polygons = [polygon for polygon, colour in extras.marks if colour == mark_colour]
            if found := raster.mask(*polygons):
                mark_box, mark = found
                inside = mark.view(bool) & (label_ids[mark_box] == label.id)
                paint = np.empty(mark.shape + (3,), dtype=np.float32)
                paint[:] = np.asarray(mark_colour, dtype=np.float32) * wear
                _copy_masked(paint, inside, canvas[mark_box])
    canvas *= brightness * tint
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.6 * max(unit, 1.0) ** 0.5)  # lens softness
    canvas += 2.5 * _fine(rng, height, width, 3) + 0.5  # sensor noise; + 0.5 rounds in the cast below
    np.clip(canvas, 0, 255, out=canvas)
    return canvas.astype(np.uint8), label_ids


def _copy_masked(source: np.ndarray, mask: np.ndarray, target: np.ndarray) -> None:
    """target[mask] = source, in place. OpenCV's masked copy is tens of times faster than numpy's; it writes
    into the (strided) view only when shape and dtype match, otherwise it would silently allocate."""
    source = np.ascontiguousarray(source, dtype=np.float32)
    if cv2.copyTo(source, mask.view(np.uint8), target) is not target:
        raise RuntimeError(f"masked copy of {source.shape} {source.dtype} into {target.shape} {target.dtype}")
