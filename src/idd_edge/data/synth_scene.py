"""Compose a synthetic road scene in perspective and write its IDD polygon annotation (for `idd-edge synth`).

A pinhole camera looks down a flat road whose centre may bend with depth. Layers, in drawing order: sky,
a skyline on the horizon, open ground, the road (lane markings as decals), shoulders, parking, sidewalks
and curbs; building facades and walls/fences/guard rails along the sides; then trees, poles with signs
and traffic lights, billboards, obstacles, a rare bridge and the traffic (cars, autorickshaws, buses,
trucks, motorcycles and bicycles with separate `rider` objects on top, persons, animals, crowd groups),
all sorted far to near so that nearer objects overwrite farther ones (real occlusion). Sizes are in
metres, so farther objects come out smaller.

The annotation clips every shape to the frame plus a margin of 0.5-2.5 px (coordinates slightly outside
the image, as in IDD), rounds coordinates to 0.01 px, adds deleted re-drawings (~10% of objects), and
numbers objects with unordered ids. Object count: Poisson rates (`RATES`) times `density`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.random import Generator

from idd_edge.data.synth_paint import RGB, Decals

#: Traffic stands no farther than where the ground is this share of the frame height below the horizon
#: (~15 m at the default camera): a person there is ~17% of the frame tall. Depth is uniform from the
#: bottom edge to there. Farther and sparser traffic (a sqrt depth law up to 5% below the horizon, as on a
#: real road) left persons and riders a few pixels wide at the default pipeline's low training resolution:
#: no model, teacher included, learned them (0 IoU), so nothing about person-level accuracy, KD or the
#: gate could be shown on the default data.
TRAFFIC_HORIZON_GAP = 0.14
DELETED_RATE = 0.1  # real IDD has ~13% deleted objects
CURB_WIDTH = 0.3  # m
LANE_WHITE, LANE_YELLOW = (228, 228, 218), (232, 190, 44)

# fmt: off
# Confusions an annotator makes before deleting an object and redrawing it (deleted copies use them).
CONFUSABLE: dict[str, str] = {
    "car": "autorickshaw", "autorickshaw": "car", "bus": "truck", "truck": "bus", "person": "rider",
    "rider": "person", "motorcycle": "bicycle", "bicycle": "motorcycle", "wall": "fence", "fence": "wall",
    "building": "wall", "pole": "traffic sign", "road": "drivable fallback",
    "sidewalk": "non-drivable fallback",
}

#: Poisson rate per image at density 1. Riders, licence plates and the poles of billboards come on top,
#: attached to their parent object; the fixed layout (sky, ground, road, sidewalks, curbs) does not scale.
RATES: dict[str, float] = {
    "skyline": 4.0, "building": 6.0, "barrier": 2.0, "tree": 3.0, "pole": 2.5, "billboard": 0.8,
    "obstacle": 0.5, "bridge": 0.05, "group": 0.35, "patch": 0.4,
    "car": 3.5, "autorickshaw": 2.5, "bus": 0.8, "truck": 0.9, "vehicle fallback": 0.4, "motorcycle": 3.0,
    "bicycle": 1.0, "person": 3.0, "animal": 0.8,
}
# fmt: on


# ---------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    focal: float  # px
    cx: float  # vanishing point x
    horizon: float  # horizon y
    cam_height: float  # m above the ground

    def project(self, lateral: Any, depth: Any, up: Any = 0.0) -> np.ndarray:
        """Image points (n, 2) of world points `lateral` m right, `depth` m ahead, `up` m above ground."""
        lateral, depth, up = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (lateral, depth, up)))
        depth = np.maximum(depth, 0.05)  # never behind the camera, even for odd frame shapes
        x = self.cx + self.focal * lateral / depth
        y = self.horizon + self.focal * (self.cam_height - up) / depth
        return np.column_stack([x.ravel(), y.ravel()])

    def depth_at_row(self, y: float) -> float:
        """Depth of the ground point seen at image row `y` (below the horizon)."""
        return self.focal * self.cam_height / (y - self.horizon)


@dataclass(frozen=True)
class Road:
    """Lateral offsets below are measured from the road centre; side -1 is left, +1 right."""

    offset: float  # lateral position of the road centre under the camera (m)
    curve: float  # centre shift per m^2 of depth (a gentle bend)
    half_width: float
    sidewalk: tuple[float, float]  # widths left, right (0 = none)
    curb: tuple[bool, bool]
    verge: tuple[float, float]  # open ground between the sidewalk (or road) and the building line

    def centre(self, depth: Any) -> Any:
        return self.offset + self.curve * np.asarray(depth, dtype=float) ** 2

    def edge(self, side: int) -> float:
        """Outer edge of the curb (or of the road when there is none)."""
        return side * (self.half_width + (CURB_WIDTH if self.curb[side > 0] else 0.0))

    def walk_outer(self, side: int) -> float:
        return self.edge(side) + side * self.sidewalk[side > 0]

    def building_line(self, side: int) -> float:
        return self.walk_outer(side) + side * self.verge[side > 0]


@dataclass
class Shape:
    """One annotation object before clipping, with what the painter draws around it."""

    label: str
    points: np.ndarray  # (n, 2) image coordinates, may extend beyond the frame
    shadows: list[np.ndarray] = field(default_factory=list)  # darkened on the ground before the object
    marks: list[tuple[np.ndarray, RGB]] = field(default_factory=list)  # painted inside it afterwards


def _strip(
    cam: Camera, road: Road, inner: float, outer: float, near: float, far: float, n: int = 12
) -> np.ndarray:
    """Ground band between lateral offsets `inner` and `outer`, from `near` to `far` m ahead."""
    depths = np.geomspace(near, far, n)
    centre = road.centre(depths)
    return np.vstack([cam.project(centre + inner, depths), cam.project(centre + outer, depths)[::-1]])


def _facade(cam: Camera, road: Road, offset: float, near: float, far: float, height: float) -> np.ndarray:
    """Vertical quad along the road at lateral `offset`, from `near` to `far` m, `height` m tall."""
    c_near, c_far = road.centre(near) + offset, road.centre(far) + offset
    ups = [0.0, height, height, 0.0]
    return cam.project([c_near, c_near, c_far, c_far], [near, near, far, far], ups)


def _upright(
    cam: Camera, outline: np.ndarray, lateral: float, depth: float, size: tuple[float, float],
    base: float = 0.0, flip: bool = False,
) -> np.ndarray:
    """An outline (u across in [-0.5, 0.5], v up in [0, 1]) standing at (`lateral`, `depth`), size (w, h) m,
    its bottom `base` m above the ground; `flip` mirrors it."""
    u = -outline[:, 0] if flip else outline[:, 0]
    return cam.project(lateral + u * size[0], depth, base + outline[:, 1] * size[1])


def _blob(
    rng: Generator, centre: np.ndarray, radii: tuple[float, float], n: int = 18, rough: float = 0.18
) -> np.ndarray:
    """A rough ellipse (tree crowns, round signs) around an image point, radii in px."""
    angles = np.linspace(0.0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi / n)
    scale = 1.0 + rough * rng.uniform(-1, 1, n)
    return centre + np.column_stack([radii[0] * scale * np.cos(angles), radii[1] * scale * np.sin(angles)])


# ---------------------------------------------------------------------------------------------- things


def _outline(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=float)


BOX = _outline((-0.5, 0), (-0.5, 1), (0.5, 1), (0.5, 0))
# fmt: off
# Unit-box outlines: u across (-0.5..0.5), v up (0..1); side views face right. Wheels are bumps at v = 0.
OUTLINES: dict[str, np.ndarray] = {
    "car_rear": _outline((-.5, .08), (-.5, .52), (-.46, .6), (-.38, .93), (-.3, 1), (.3, 1), (.38, .93),
                         (.46, .6), (.5, .52), (.5, .08), (.44, .08), (.44, 0), (.3, 0), (.3, .08), (-.3, .08),
                         (-.3, 0), (-.44, 0), (-.44, .08)),
    "car_side": _outline((-.5, .15), (-.5, .5), (-.46, .56), (-.25, .6), (-.12, .96), (.18, 1), (.3, .62),
                         (.47, .55), (.5, .42), (.5, .15), (.4, .15), (.37, 0), (.24, 0), (.21, .15),
                         (-.21, .15), (-.24, 0), (-.37, 0), (-.4, .15)),
    "auto_rear": _outline((-.5, .1), (-.5, .72), (-.46, .9), (-.32, 1), (.32, 1), (.46, .9), (.5, .72),
                          (.5, .1), (.42, .1), (.42, 0), (.3, 0), (.3, .1), (-.3, .1), (-.3, 0), (-.42, 0),
                          (-.42, .1)),
    "auto_side": _outline((-.5, .12), (-.5, .88), (-.42, 1), (.22, 1), (.3, .92), (.48, .5), (.5, .12),
                          (.44, .12), (.4, 0), (.3, 0), (.26, .12), (-.26, .12), (-.3, 0), (-.4, 0), (-.44, .12)),
    "bus_rear": _outline((-.5, .06), (-.5, .95), (-.45, 1), (.45, 1), (.5, .95), (.5, .06), (.4, .06), (.4, 0),
                         (.26, 0), (.26, .06), (-.26, .06), (-.26, 0), (-.4, 0), (-.4, .06)),
    "bus_side": _outline((-.5, .08), (-.5, .97), (-.48, 1), (.48, 1), (.5, .95), (.5, .08), (.38, .08),
                         (.36, 0), (.28, 0), (.26, .08), (-.26, .08), (-.28, 0), (-.36, 0), (-.38, .08)),
    "truck_rear": _outline((-.5, .1), (-.5, 1), (.5, 1), (.5, .1), (.42, .1), (.42, 0), (.28, 0), (.28, .1),
                           (-.28, .1), (-.28, 0), (-.42, 0), (-.42, .1)),
    "truck_side": _outline((-.5, .1), (-.5, 1), (.22, 1), (.22, .78), (.3, .85), (.42, .85), (.5, .55),
                           (.5, .1), (.42, .1), (.4, 0), (.3, 0), (.28, .1), (-.22, .1), (-.24, 0), (-.36, 0),
                           (-.38, .1)),
    "cart_side": _outline((-.5, .3), (-.5, .8), (.1, .8), (.1, 1), (.35, 1), (.4, .7), (.5, .6), (.5, .3),
                          (.45, 0), (.25, 0), (.2, .3), (-.2, .3), (-.25, 0), (-.45, 0)),
    "moto_rear": _outline((-.14, 0), (-.14, .3), (-.3, .45), (-.5, .62), (-.46, .7), (-.24, .66), (-.2, 1),
                          (.2, 1), (.24, .66), (.46, .7), (.5, .62), (.3, .45), (.14, .3), (.14, 0)),
    "moto_side": _outline((-.5, .2), (-.42, 0), (-.22, 0), (-.12, .25), (.12, .25), (.22, 0), (.42, 0),
                          (.5, .2), (.44, .55), (.36, .95), (.3, .95), (.3, .62), (-.05, .6), (-.3, .62),
                          (-.45, .45)),
    "bicycle_rear": _outline((-.08, 0), (-.08, .55), (-.5, .9), (-.46, 1), (.46, 1), (.5, .9), (.08, .55),
                             (.08, 0)),
    "bicycle_side": _outline((-.5, .25), (-.42, 0), (-.22, 0), (-.12, .22), (.12, .22), (.22, 0), (.42, 0),
                             (.5, .25), (.38, .55), (.32, 1), (.22, 1), (.26, .6), (-.18, .62), (-.16, .85),
                             (-.3, .85), (-.28, .55)),
    "person": _outline((-.24, 0), (-.08, 0), (0, .4), (.08, 0), (.24, 0), (.2, .45), (.42, .45), (.42, .8),
                       (.25, .84), (.1, .86), (.14, .93), (.08, 1), (-.08, 1), (-.14, .93), (-.1, .86),
                       (-.25, .84), (-.42, .8), (-.42, .45), (-.2, .45)),
    "rider": _outline((-.3, 0), (.3, 0), (.42, .3), (.45, .62), (.22, .72), (.12, .76), (.16, .88), (.1, 1),
                      (-.1, 1), (-.16, .88), (-.12, .76), (-.22, .72), (-.45, .62), (-.42, .3)),
    "animal": _outline((-.5, .52), (-.46, .92), (.28, .95), (.36, 1), (.5, .88), (.48, .72), (.36, .72),
                       (.34, .5), (.3, 0), (.22, 0), (.22, .45), (-.28, .45), (-.3, 0), (-.38, 0), (-.42, .48)),
}
# fmt: on


@dataclass(frozen=True)
class ThingKind:
    rear: str  # outline seen from behind (or the front)
    side: str  # outline seen from the side
    width: tuple[float, float]  # m, sampled uniformly
    length: tuple[float, float]
    height: tuple[float, float]
    side_prob: float  # share seen from the side (parked, crossing)
    zone: str  # "road" (lanes) or "walk" (sidewalk / verge, sometimes crossing the road)


THINGS: dict[str, ThingKind] = {
    "car": ThingKind("car_rear", "car_side", (1.6, 1.9), (3.6, 4.6), (1.4, 1.65), 0.25, "road"),
    "autorickshaw": ThingKind("auto_rear", "auto_side", (1.3, 1.45), (2.6, 2.9), (1.7, 1.85), 0.25, "road"),
    "bus": ThingKind("bus_rear", "bus_side", (2.4, 2.6), (9.0, 12.0), (3.0, 3.4), 0.2, "road"),
    "truck": ThingKind("truck_rear", "truck_side", (2.3, 2.6), (6.0, 9.0), (3.0, 3.8), 0.2, "road"),
    "vehicle fallback": ThingKind("truck_rear", "cart_side", (1.4, 2.0), (2.5, 4.0), (1.4, 2.2), 0.5, "road"),
    "motorcycle": ThingKind("moto_rear", "moto_side", (0.65, 0.8), (1.8, 2.1), (1.05, 1.2), 0.3, "road"),
    "bicycle": ThingKind("bicycle_rear", "bicycle_side", (0.5, 0.6), (1.6, 1.8), (0.95, 1.1), 0.5, "road"),
    "person": ThingKind("person", "person", (0.45, 0.6), (0.45, 0.6), (1.5, 1.85), 0.0, "walk"),
    "animal": ThingKind("animal", "animal", (0.7, 2.3), (0.7, 2.3), (0.5, 1.6), 1.0, "walk"),
}
GROUPS: dict[str, tuple[float, float, float]] = {  # crowd label -> member width, height (m), share
    "persongroup": (0.55, 1.7, 0.45), "cargroup": (1.8, 1.5, 0.3), "motorcyclegroup": (0.8, 1.6, 0.15),
    "bicyclegroup": (0.6, 1.6, 0.1),
}


# ---------------------------------------------------------------------------------------------- layers


def _count(rng: Generator, what: str, density: float) -> int:
    return int(rng.poisson(RATES[what] * density))


def _side(rng: Generator) -> int:
    return int(rng.choice((-1, 1)))


def _depth(rng: Generator, near: float, far: float, size: int | None = None) -> Any:
    """Uniform depth(s) in [near, far] m; the range stretches when an odd frame shape pushes `near` past
    `far` (the nominal ranges are tuned for 16:9 frames)."""
    return rng.uniform(near, max(far, near * 1.5), size)


def _sample_camera_and_road(rng: Generator, width: int, height: int) -> tuple[Camera, Road]:
    cam = Camera(
        width, height, focal=width * rng.uniform(0.75, 0.95), cx=width * rng.uniform(0.42, 0.58),
        horizon=height * rng.uniform(0.36, 0.48), cam_height=rng.uniform(1.2, 1.6),
    )
    half = rng.uniform(3.5, 8.0)
    sidewalk = tuple(float(rng.uniform(1.5, 3.5)) if rng.random() < 0.65 else 0.0 for _ in range(2))
    road = Road(
        offset=rng.uniform(-0.35, 0.35) * half,
        curve=rng.uniform(-1.2e-3, 1.2e-3) * (rng.random() < 0.6),
        half_width=half,
        sidewalk=sidewalk,
        curb=tuple(bool(rng.random() < (0.85 if walk else 0.2)) for walk in sidewalk),
        verge=(rng.uniform(0.5, 6.0), rng.uniform(0.5, 6.0)),
    )
    return cam, road


@dataclass(frozen=True)
class _Depths:
    below_frame: float  # ground just beyond the bottom edge
    bottom_edge: float  # ground at the bottom edge
    road_end: float  # where the road meets the horizon (within a pixel or so)
    farthest_thing: float  # farthest traffic (TRAFFIC_HORIZON_GAP below the horizon)

    @classmethod
    def of(cls, cam: Camera) -> _Depths:
        rows = (cam.height * 1.15, cam.height, cam.horizon + 0.004 * cam.height, cam.horizon + TRAFFIC_HORIZON_GAP * cam.height)
        return cls(*(cam.depth_at_row(row) for row in rows))


def _ground_layer(rng: Generator, cam: Camera, road: Road, density: float) -> list[Shape]:
    """Sky, skyline, open ground, road (with lane markings), shoulders, parking, sidewalks and curbs."""
    w, h, hz = cam.width, cam.height, cam.horizon
    depths = _Depths.of(cam)
    near, far = depths.below_frame, depths.road_end
    shapes = [Shape("sky", np.array([[-5, -5], [w + 5, -5], [w + 5, hz + 1], [-5, hz + 1]], dtype=float))]
    for _ in range(_count(rng, "skyline", density)):  # distant blocks and tree lines on the horizon
        x0, bw, top = rng.uniform(-0.1, 1.0) * w, rng.uniform(0.04, 0.2) * w, hz - rng.uniform(0.02, 0.16) * h
        if rng.random() < 0.7:
            block = np.array([[x0, hz + 2], [x0, top], [x0 + bw, top], [x0 + bw, hz + 2]])
            shapes.append(Shape("building", block))
        else:
            crowns = np.column_stack([np.linspace(x0, x0 + bw, 8), top + rng.uniform(0, 0.04, 8) * h])
            shapes.append(Shape("vegetation", np.vstack([[[x0, hz + 2]], crowns, [[x0 + bw, hz + 2]]])))
    ground = np.array([[-5, hz], [w + 5, hz], [w + 5, h + 5], [-5, h + 5]], dtype=float)
    shapes.append(Shape("non-drivable fallback", ground))
    hw = road.half_width
    road_strip = _strip(cam, road, -hw, hw, near, far, 16)
    shapes.append(Shape("road", road_strip, marks=_lane_marks(rng, cam, road, near)))
    for side in (-1, 1):
        has_walk = road.sidewalk[side > 0] > 0
        if not has_walk and rng.random() < 0.5:  # gravel shoulder
            outer = side * (hw + rng.uniform(0.5, 2.0))
            shapes.append(Shape("drivable fallback", _strip(cam, road, side * hw, outer, near, far)))
        if has_walk and rng.random() < RATES["patch"] * density:
            z1 = _depth(rng, near, 30.0)
            bay = _strip(cam, road, side * (hw - 2.4), side * hw, z1, z1 + rng.uniform(5, 25), 6)
            shapes.append(Shape("parking", bay))
        if has_walk:
            shapes.append(Shape("sidewalk", _strip(cam, road, road.edge(side), road.walk_outer(side), near, far)))
        if road.curb[side > 0]:
            shapes.append(Shape("curb", _strip(cam, road, side * hw, road.edge(side), near, far)))
    return shapes


def _lane_marks(rng: Generator, cam: Camera, road: Road, near: float) -> list[tuple[np.ndarray, RGB]]:
    """Dashed lane lines, edge lines and sometimes a zebra crossing, as ground quads painted on the road."""
    if rng.random() < 0.35:  # many Indian roads have no markings
        return []
    marks: list[tuple[np.ndarray, RGB]] = []
    lanes = max(1, round(2 * road.half_width / 3.3))
    period, dash, stripe = rng.uniform(8, 12), rng.uniform(2.5, 4), 0.14
    starts = np.arange(near - rng.uniform(0, period), 90.0, period)
    for k in range(1, lanes):
        offset = -road.half_width + k * 2 * road.half_width / lanes
        colour = LANE_YELLOW if (k == lanes // 2 and rng.random() < 0.3) else LANE_WHITE
        for z1 in starts[starts > 0.5]:
            marks.append((_strip(cam, road, offset - stripe / 2, offset + stripe / 2, z1, z1 + dash, 2), colour))
    if rng.random() < 0.4:
        for side in (-1, 1):
            edge = side * (road.half_width - 0.3)
            marks.append((_strip(cam, road, edge - stripe / 2, edge + stripe / 2, near, 90.0, 8), LANE_WHITE))
    if rng.random() < 0.15:
        z1 = _depth(rng, near * 1.5, 25.0)
        for offset in np.arange(-road.half_width + 0.3, road.half_width - 0.5, 1.0):
            marks.append((_strip(cam, road, offset, offset + 0.5, z1, z1 + 3.0, 2), LANE_WHITE))
    return marks


def _backdrop_layer(rng: Generator, cam: Camera, road: Road, density: float) -> list[Shape]:
    """Building facades along both sides, then walls, fences and guard rails in front (each far first)."""
    near = _Depths.of(cam).below_frame
    facades: list[tuple[float, Shape]] = []
    for side in (-1, 1):
        count = _count(rng, "building", density / 2)
        if count == 0:
            continue
        cuts = np.sort(_depth(rng, near * 0.6, rng.uniform(60, 150), count + 1))
        for z1, z2 in zip(cuts[:-1], cuts[1:]):
            if rng.random() < 0.2:  # a gap: the skyline shows through
                continue
            quad = _facade(cam, road, road.building_line(side), z1, z2, rng.uniform(4, 18))
            facades.append((z1, Shape("building", quad)))
    barriers: list[tuple[float, Shape]] = []
    for _ in range(_count(rng, "barrier", density)):
        side = _side(rng)
        label = str(rng.choice(("wall", "fence", "guard rail"), p=(0.4, 0.35, 0.25)))
        if label == "guard rail":
            offset, height = road.edge(side) + side * 0.2, rng.uniform(0.6, 0.9)
        else:
            offset = road.building_line(side) - side * rng.uniform(0.2, 1.0)
            height = rng.uniform(1.2, 2.5) if label == "wall" else rng.uniform(1.0, 1.8)
        # within 40 m: farther, a barrier is a sliver a pixel or two tall at the default training size
        z1 = _depth(rng, near * 0.7, 40.0)
        barriers.append((z1, Shape(label, _facade(cam, road, offset, z1, z1 + rng.uniform(5, 40), height))))
    ordered = sorted(facades, key=lambda item: -item[0]) + sorted(barriers, key=lambda item: -item[0])
    return [shape for _, shape in ordered]


@dataclass
class _Unit:
    """Objects drawn together at one depth (a pole and its sign, a motorcycle and its riders)."""

    depth: float
    shapes: list[Shape]


def _roadside_offset(rng: Generator, road: Road, side: int) -> float:
    """Where roadside furniture stands: the outer part of the sidewalk, or just beyond the road edge."""
    walk = road.sidewalk[side > 0]
    inset = rng.uniform(0.1, 0.4) * walk if walk else -rng.uniform(0.2, 1.0)
    return road.walk_outer(side) - side * inset


def _trees(rng: Generator, cam: Camera, road: Road, count: int, near: float) -> list[_Unit]:
    units = []
    for _ in range(count):
        side, z = _side(rng), _depth(rng, near * 0.8, 90.0)
        lateral = road.centre(z) + _roadside_offset(rng, road, side) + side * rng.uniform(0, road.verge[side > 0])
        trunk_h, radius = rng.uniform(1.5, 3.0), rng.uniform(1.2, 3.5)
        crown_centre = cam.project(lateral, z, trunk_h + radius * 0.8)[0]
        scale = cam.focal / z
        trunk = Shape("vegetation", _upright(cam, BOX, lateral, z, (0.3, trunk_h + 0.2)))
        crown = Shape("vegetation", _blob(rng, crown_centre, (radius * scale, radius * 0.85 * scale)))
        if rng.random() < 0.4:  # its shadow falls across the road
            reach = lateral - side * rng.uniform(2, 6)
            depths = np.maximum([z - 1.5, z - 2.5, z + 2.5, z + 1.5], 0.5)  # stay in front of the camera
            trunk.shadows.append(cam.project([lateral, reach, reach, lateral], depths))
        units.append(_Unit(z, [trunk, crown]))
    return units


def _sign(rng: Generator, cam: Camera, lateral: float, z: float, up: float) -> Shape:
    centre = cam.project(lateral, z, up)[0]
    r = rng.uniform(0.3, 0.5) * cam.focal / z
    kind = rng.choice(("circle", "triangle", "square"))
    if kind == "circle":
        return Shape("traffic sign", _blob(rng, centre, (r, r), 12, 0.0))
    if kind == "triangle":
        return Shape("traffic sign", centre + r * np.array([[0, -1.0], [0.9, 0.6], [-0.9, 0.6]]))
    return Shape("traffic sign", centre + r * np.array([[-1, -0.7], [1, -0.7], [1, 0.7], [-1, 0.7]]))


def _poles(rng: Generator, cam: Camera, road: Road, count: int, near: float) -> list[_Unit]:
    """Plain poles, poles carrying a sign, L-shaped poles holding a traffic light over the road, polegroups."""
    units = []
    for _ in range(count):
        # within 40 m and >= 0.2 m thick: a thinner or farther pole is under a pixel wide at the default
        # training size (pole IoU stayed near 0 with 80 m and 0.12-0.25 m)
        side, z = _side(rng), _depth(rng, near * 0.8, 40.0)
        lateral = road.centre(z) + _roadside_offset(rng, road, side)
        if rng.random() < 0.1:
            size = (rng.uniform(0.6, 1.2), rng.uniform(4, 8))
            units.append(_Unit(z, [Shape("polegroup", _upright(cam, BOX, lateral, z, size))]))
            continue
        height, pole_w = rng.uniform(4.5, 8.0), rng.uniform(0.2, 0.35)
        kind = rng.choice(("plain", "sign", "light"), p=(0.4, 0.45, 0.15))
        arm = -side * rng.uniform(1.0, 3.0) if kind == "light" else 0.0
        outline = BOX
        if arm:  # drawn reaching right, mirrored when the road is on the left
            reach = abs(arm) / pole_w + 0.5
            outline = _outline((-0.5, 0), (-0.5, 1), (reach, 1), (reach, 0.97), (0.5, 0.97), (0.5, 0))
        shapes = [Shape("pole", _upright(cam, outline, lateral, z, (pole_w, height), flip=arm < 0))]
        if kind == "sign":
            shapes.append(_sign(rng, cam, lateral, z, height - rng.uniform(0.0, 2.5)))
        elif kind == "light":
            box = _upright(cam, BOX, lateral + arm, z, (0.35, 0.9), base=height - 0.9)
            shapes.append(Shape("traffic light", box))
        units.append(_Unit(z, shapes))
    return units


def _billboards(rng: Generator, cam: Camera, road: Road, count: int, near: float) -> list[_Unit]:
    units = []
    for _ in range(count):
        side, z = _side(rng), _depth(rng, near * 1.5, 60.0)
        lateral = road.centre(z) + road.building_line(side) - side * rng.uniform(0, 1.5)
        width, height, base = rng.uniform(3, 8), rng.uniform(2, 4), rng.uniform(2.5, 5)
        legs = [lateral] if rng.random() < 0.5 else [lateral - width / 3, lateral + width / 3]
        shapes = [Shape("pole", _upright(cam, BOX, leg, z, (0.3, base + 0.3))) for leg in legs]
        shapes.append(Shape("billboard", _upright(cam, BOX, lateral, z, (width, height), base)))
        units.append(_Unit(z, shapes))
    return units


def _roadside_units(rng: Generator, cam: Camera, road: Road, density: float) -> list[_Unit]:
    near = _Depths.of(cam).below_frame
    units = _trees(rng, cam, road, _count(rng, "tree", density), near)
    units += _poles(rng, cam, road, _count(rng, "pole", density), near)
    units += _billboards(rng, cam, road, _count(rng, "billboard", density), near)
    for _ in range(_count(rng, "obstacle", density)):  # barricades, bollards, drums at the road edge
        side, z = _side(rng), _depth(rng, near, 50.0)
        lateral = road.centre(z) + side * (road.half_width - rng.uniform(0.3, 2.0))
        size = (rng.uniform(0.4, 2.0), rng.uniform(0.6, 1.2))
        trapezoid = _outline((-0.5, 0), (-0.45, 1), (0.45, 1), (0.5, 0))
        units.append(_Unit(z, [Shape("obs-str-bar-fallback", _upright(cam, trapezoid, lateral, z, size))]))
    if rng.random() < RATES["bridge"] * density:  # an overpass deck across the whole view
        z, up = rng.uniform(25, 60), rng.uniform(5.5, 7.0)
        c = road.centre(z)
        deck = cam.project([c - 80, c - 80, c + 80, c + 80], z, [up, up + rng.uniform(1.2, 2.0), up + 1.6, up])
        units.append(_Unit(z, [Shape("bridge", deck)]))
    return units


def _traffic_units(rng: Generator, cam: Camera, road: Road, density: float) -> list[_Unit]:
    """Vehicles, two-wheelers with riders, persons, animals and crowd groups on the road and sidewalks."""
    depths = _Depths.of(cam)
    units: list[_Unit] = []
    for label, kind in THINGS.items():
        for _ in range(_count(rng, label, density)):
            nearest = depths.bottom_edge * (1.5 if label in ("bus", "truck") else 0.9)
            farthest = max(depths.farthest_thing, nearest + 1.0)
            z = nearest + (farthest - nearest) * rng.random()
            units.append(_Unit(z, _thing(rng, cam, road, label, kind, z)))
    for _ in range(_count(rng, "group", density)):
        units.append(_group(rng, cam, road, depths.farthest_thing))
    return units


def _lateral_in_zone(rng: Generator, road: Road, zone: str, width: float) -> float:
    """Offset from the road centre: within the lanes, or on a sidewalk / verge (a quarter cross the road)."""
    if zone == "walk" and rng.random() < 0.75:
        side = _side(rng)
        walk = road.sidewalk[side > 0] or rng.uniform(0.8, 2.0)
        return road.edge(side) + side * rng.uniform(0.2, walk)
    span = max(road.half_width - width / 2, 0.0)
    return rng.uniform(-span, span)


def _thing(rng: Generator, cam: Camera, road: Road, label: str, kind: ThingKind, z: float) -> list[Shape]:
    """One thing at depth `z`, plus its riders (two-wheelers) or licence plate (some rear views)."""
    width, length, height = (rng.uniform(*r) for r in (kind.width, kind.length, kind.height))
    if label == "animal":  # cows or dogs
        (l_lo, l_hi), (h_lo, h_hi) = ((1.8, 2.3), (1.3, 1.6)) if rng.random() < 0.6 else ((0.7, 1.0), (0.5, 0.65))
        length, height = rng.uniform(l_lo, l_hi), rng.uniform(h_lo, h_hi)
    side_view = rng.random() < kind.side_prob
    across, along = (length, width) if side_view else (width, length)
    lateral = road.centre(z) + _lateral_in_zone(rng, road, kind.zone, across)
    flip = bool(rng.random() < 0.5)
    outline = OUTLINES[kind.side if side_view else kind.rear]
    if label == "person" and rng.random() < 0.5:  # standing, legs together
        outline = outline.copy()
        outline[1:4, 0] = (-0.02, 0.0, 0.02)
    body = Shape(label, _upright(cam, outline, lateral, z, (across, height), flip=flip))
    if label != "person":  # a shadow on the ground under and behind it
        left, right = lateral - across * 0.55, lateral + across * 0.6
        body.shadows.append(cam.project([left, right, right, left], [z - 0.2, z - 0.2, z + along, z + along]))
    shapes = [body]
    if label in ("motorcycle", "bicycle") and rng.random() < 0.9:
        riders = int(rng.choice((1, 2, 3), p=(0.65, 0.3, 0.05))) if label == "motorcycle" else 1
        seat = height * (0.45 if label == "motorcycle" else 0.55)
        for k in range(riders):  # driver first; pillions sit behind, nearer to a camera that follows
            if side_view:
                shift, depth = (0.12 - 0.22 * k) * length * (-1 if flip else 1), z
            else:
                shift, depth = rng.uniform(-0.05, 0.05), z - 0.35 * k
            size = (rng.uniform(0.5, 0.6), rng.uniform(0.95, 1.15))
            shapes.append(Shape("rider", _upright(cam, OUTLINES["rider"], lateral + shift, depth, size, seat)))
    elif label in ("car", "truck", "bus", "autorickshaw") and not side_view and rng.random() < 0.35:
        plate = _outline((-0.12, 0.18), (-0.12, 0.27), (0.12, 0.27), (0.12, 0.18))
        shapes.append(Shape("license plate", _upright(cam, plate, lateral, z - 0.01, (width, height))))
    return shapes


def _group(rng: Generator, cam: Camera, road: Road, farthest: float) -> _Unit:
    """A crowd annotated as one region (`persongroup`, `cargroup`, ...): a row of members' silhouettes."""
    label = str(rng.choice(list(GROUPS), p=[share for _, _, share in GROUPS.values()]))
    member_w, member_h, _ = GROUPS[label]
    z = rng.uniform(0.5, 0.9) * farthest
    members = int(rng.integers(3, 9))
    zone = "walk" if label == "persongroup" else "road"
    lateral = road.centre(z) + _lateral_in_zone(rng, road, zone, members * member_w)
    u = np.linspace(-0.5, 0.5, 2 * members + 1)
    tops = np.where(np.arange(u.size) % 2 == 1, 1.0, rng.uniform(0.7, 0.85, u.size))  # heads / roofs
    outline = np.vstack([[[-0.5, 0.0]], np.column_stack([u, tops]), [[0.5, 0.0]]])
    return _Unit(z, [Shape(label, _upright(cam, outline, lateral, z, (members * member_w, member_h)))])


def _ego_vehicle(rng: Generator, cam: Camera) -> list[Shape]:
    """Sometimes the bonnet of the recording car shows at the bottom (a void label)."""
    if rng.random() >= 0.08:
        return []
    w, h = cam.width, cam.height
    xs = np.linspace(-5, w + 5, 12)
    ys = h * (0.93 + 0.05 * ((xs - w / 2) / (w / 2)) ** 2)
    return [Shape("ego vehicle", np.vstack([np.column_stack([xs, ys]), [[w + 5, h + 5], [-5, h + 5]]]))]


def compose_scene(rng: Generator, width: int, height: int, density: float = 1.0) -> list[Shape]:
    """All shapes of one scene in drawing order (unclipped image coordinates)."""
    cam, road = _sample_camera_and_road(rng, width, height)
    units = _roadside_units(rng, cam, road, density) + _traffic_units(rng, cam, road, density)
    units.sort(key=lambda unit: -unit.depth)  # far first: nearer objects overwrite them (occlusion)
    shapes = _ground_layer(rng, cam, road, density) + _backdrop_layer(rng, cam, road, density)
    shapes += [shape for unit in units for shape in unit.shapes]
    return shapes + _ego_vehicle(rng, cam)


# ---------------------------------------------------------------------------------------------- annotation


def clip_polygon(points: np.ndarray, lo: tuple[float, float], hi: tuple[float, float]) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon to the box [lo, hi]; shape (0, 2) when nothing is left."""
    pts = [(float(x), float(y)) for x, y in points]
    for axis, bound, keep_above in ((0, lo[0], True), (0, hi[0], False), (1, lo[1], True), (1, hi[1], False)):
        if not pts:
            break
        clipped: list[tuple[float, float]] = []
        prev = pts[-1]
        prev_in = prev[axis] >= bound if keep_above else prev[axis] <= bound
        for cur in pts:
            cur_in = cur[axis] >= bound if keep_above else cur[axis] <= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = [prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])]
                cross[axis] = bound
                clipped.append((cross[0], cross[1]))
            if cur_in:
                clipped.append(cur)
            prev, prev_in = cur, cur_in
        pts = clipped
    return np.array(pts, dtype=float).reshape(-1, 2)


def _tidy(points: np.ndarray, width: int, height: int, margin: float) -> list[list[float]] | None:
    """The polygon as IDD stores it (clipped, [[x, y], ...] floats at 0.01 px), or None if not visible.

    Plain Python on purpose: polygons have a few dozen points, where numpy's per-call overhead dominates.
    """
    lo, hi = (-margin, -margin), (width - 1 + margin, height - 1 + margin)
    xs, ys = points[:, 0].tolist(), points[:, 1].tolist()
    if xs and min(xs) >= lo[0] and min(ys) >= lo[1] and max(xs) <= hi[0] and max(ys) <= hi[1]:
        pts = list(zip(xs, ys))
    else:
        pts = [tuple(p) for p in clip_polygon(points, lo, hi).tolist()]
    tidy: list[list[float]] = []
    for x, y in pts:
        point = [round(x, 2) + 0.0, round(y, 2) + 0.0]  # + 0.0 turns -0.0 into 0.0
        if not tidy or point != tidy[-1]:
            tidy.append(point)
    while len(tidy) > 1 and tidy[0] == tidy[-1]:
        tidy.pop()
    if len(tidy) < 3:
        return None
    twice_area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(tidy, tidy[1:] + tidy[:1]))
    return tidy if abs(twice_area) >= 2.0 else None  # less than a pixel: not visible


def _deleted_copy(
    rng: Generator, label: str, polygon: list[list[float]], width: int, height: int, margin: float
) -> tuple[str, list[list[float]]] | None:
    """What an annotator drew and then deleted: the same outline, jittered, sometimes with a wrong label."""
    array = np.asarray(polygon)
    jitter = rng.normal(0, 0.5 + 0.02 * np.ptp(array, axis=0).max(), array.shape) + rng.normal(0, 2, 2)
    copy = _tidy(array + jitter, width, height, margin)
    wrong = rng.random() < 0.3
    return None if copy is None else (CONFUSABLE.get(label, label) if wrong else label, copy)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def annotate(
    rng: Generator, shapes: Sequence[Shape], width: int, height: int
) -> tuple[dict[str, Any], dict[int, Decals]]:
    """The IDD polygon JSON of `shapes` (plus ~10% deleted copies) and the painting decals by object id."""
    margin = rng.uniform(0.5, 2.5)

    def visible(polygons: Sequence[np.ndarray]) -> tuple[list[list[float]], ...]:
        return tuple(p for p in (_tidy(q, width, height, margin) for q in polygons) if p is not None)

    entries: list[tuple[str, list[list[float]], int, Decals]] = []
    for shape in shapes:
        polygon = _tidy(shape.points, width, height, margin)
        if polygon is None:
            continue
        if rng.random() < DELETED_RATE:  # an annotator drew it, deleted it and drew it again
            if copy := _deleted_copy(rng, shape.label, polygon, width, height, margin):
                entries.append((*copy, 1, Decals()))
        marks = tuple((p, c) for p, c in ((_tidy(m, width, height, margin), c) for m, c in shape.marks) if p)
        entries.append((shape.label, polygon, 0, Decals(shadows=visible(shape.shadows), marks=marks)))
    ids = rng.permutation(len(entries))  # IDD ids are unordered; the list order is the drawing order
    user = f"annotator{int(rng.integers(1, 25)):02d}"
    day, month = int(rng.integers(1, 29)), _MONTHS[int(rng.integers(0, 12))]
    seconds = int(rng.integers(8 * 3600, 17 * 3600))
    objects, decals_by_id = [], {}
    for (label, polygon, deleted, decals), object_id in zip(entries, ids):
        seconds += int(rng.integers(5, 90))
        clock = f"{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        objects.append({
            "label": label, "polygon": polygon, "deleted": deleted, "draw": True, "id": int(object_id),
            "user": user, "verified": int(rng.random() < 0.8), "date": f"{day:02d}-{month}-2018 {clock}",
        })
        if decals.shadows or decals.marks:
            decals_by_id[int(object_id)] = decals
    return {"imgHeight": height, "imgWidth": width, "objects": objects}, decals_by_id
