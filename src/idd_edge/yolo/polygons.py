"""Binary instance mask <-> the single polygon an Ultralytics segmentation label line holds.

A visible instance can be several parts (a pole in front of a bus) and can have holes (a rider inside a
car's outline). Ultralytics reads one polygon per instance and rasterises it with `cv2.fillPoly`, whose
even-odd rule makes a ring nested inside another a hole. So every ring (outer boundaries and holes) is
joined into one polygon by zero-width bridges: the walk goes out along a bridge, around the other ring
and back along the same bridge, which adds no area. Rings are joined along a minimum spanning tree of
their nearest-vertex distances, which keeps the bridges short.

Coordinates are pixel centres (index + 0.5) in continuous image coordinates, so Ultralytics'
rasterisation (scale by the image size, truncate to int) lands back on the same pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np


class Ring(NamedTuple):
    """One closed boundary: (n, 2) int32 pixel-index vertices; holes are boundaries inside the instance."""

    points: np.ndarray
    is_hole: bool


def mask_to_polygon(mask: np.ndarray, simplify_px: float = 0.5, min_ring_points: int = 3) -> np.ndarray | None:
    """One (n, 2) float polygon (pixel-centre coordinates) covering the True pixels of `mask`, or None.

    `simplify_px` is the Douglas-Peucker tolerance in pixels (0 keeps every contour vertex). Rings with
    fewer than `min_ring_points` vertices after simplification (single pixels, one-pixel lines) are dropped.
    """
    rings = mask_rings(mask, simplify_px, min_ring_points)
    if not rings:
        return None
    return rings_to_polygon(rings)


def rings_to_polygon(rings: list[Ring]) -> np.ndarray:
    """The label polygon (pixel-centre float coordinates) for rings from `mask_rings`."""
    return join_rings([ring.points for ring in rings]).astype(np.float64) + 0.5


def mask_rings(mask: np.ndarray, simplify_px: float = 0.5, min_ring_points: int = 3) -> list[Ring]:
    """Outer and hole boundaries of `mask`, the largest outer boundary first."""
    padded = np.pad(mask.astype(np.uint8), 1)  # contours touching the border stay closed
    contours, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0] if hierarchy is not None else ()):
        if simplify_px > 0:
            contour = cv2.approxPolyDP(contour, simplify_px, True)
        points = contour.reshape(-1, 2) - 1
        if len(points) >= min_ring_points:
            rings.append(Ring(points.astype(np.int32), is_hole=parent >= 0))
    rings.sort(key=lambda ring: (ring.is_hole, -abs(cv2.contourArea(ring.points))))
    return rings


def join_rings(rings: list[np.ndarray]) -> np.ndarray:
    """Join rings into one closed walk with zero-width bridges along a minimum spanning tree."""
    if len(rings) == 1:
        return rings[0]
    # Prim's algorithm on nearest-vertex distances; children[r] = [(vertex on r, child ring, child vertex)]
    children: dict[int, list[tuple[int, int, int]]] = {i: [] for i in range(len(rings))}
    best = {j: _nearest_vertices(rings[0], rings[j]) + (0,) for j in range(1, len(rings))}
    while best:
        j = min(best, key=lambda k: best[k][0])
        _, vertex_parent, vertex_child, parent = best.pop(j)
        children[parent].append((vertex_parent, j, vertex_child))
        for k in best:
            candidate = _nearest_vertices(rings[j], rings[k])
            if candidate[0] < best[k][0]:
                best[k] = candidate + (j,)
    walk = _walk(rings, children, 0, 0)
    return np.asarray(walk[:-1], dtype=np.int32)  # fillPoly closes the polygon itself


def _nearest_vertices(a: np.ndarray, b: np.ndarray) -> tuple[float, int, int]:
    """(squared distance, index in a, index in b) of the closest vertex pair."""
    d2 = ((a[:, None, :].astype(np.int64) - b[None, :, :]) ** 2).sum(axis=2)
    i, j = np.unravel_index(int(np.argmin(d2)), d2.shape)
    return float(d2[i, j]), int(i), int(j)


def _walk(rings: list[np.ndarray], children: dict[int, list[tuple[int, int, int]]], ring: int, entry: int) -> list:
    """Vertices of `ring` from `entry` round to `entry` again, detouring into each child where it attaches."""
    points = rings[ring]
    attached: dict[int, list[tuple[int, int]]] = {}
    for vertex, child, child_vertex in children[ring]:
        attached.setdefault(vertex, []).append((child, child_vertex))
    walk = []
    for step in range(len(points) + 1):
        vertex = (entry + step) % len(points)
        walk.append(points[vertex])
        if step < len(points):
            for child, child_vertex in attached.get(vertex, ()):
                walk.extend(_walk(rings, children, child, child_vertex))
                walk.append(points[vertex])
    return walk


def polygon_to_mask(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a pixel-centre polygon the way Ultralytics does (truncate to int, even-odd fillPoly)."""
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(mask, [np.asarray(polygon, dtype=np.float64).astype(np.int32).reshape(-1, 1, 2)], 1)
    return mask.astype(bool)


def normalized_polygon_to_mask(normalized: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`polygon_to_mask` for label-file coordinates (x / width, y / height)."""
    height, width = shape
    return polygon_to_mask(np.asarray(normalized, dtype=np.float64).reshape(-1, 2) * (width, height), shape)
