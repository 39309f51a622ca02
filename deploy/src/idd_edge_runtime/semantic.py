"""Semantic model on the device: input tensor, class-id map from the model output, palette LUT.

The class-id map is uint8 from the start (a label needs one byte), so colourising is one table lookup
(`cv2.LUT`) instead of fancy-indexing a palette with int64 indices. Logits are reduced with the
argmax that suits their layout; an on-graph argmax (output kind "argmax") skips that host work entirely.
"""

from __future__ import annotations

from typing import Dict, Sequence

import cv2
import numpy as np

from idd_edge_runtime.backends import Session
from idd_edge_runtime.manifest import ClassInfo, ModelEntry
from idd_edge_runtime.preprocess import InputPreparer, resize_rgb


def palette_lut(classes: Sequence[ClassInfo]) -> np.ndarray:
    """(256, 1, 3) BGR uint8 table for cv2.LUT; ids without a class (void 255, unused) map to black."""
    lut = np.zeros((256, 1, 3), dtype=np.uint8)
    for class_id, info in enumerate(classes[:256]):
        r, g, b = info.color
        lut[class_id, 0] = (b, g, r)
    return lut


def argmax_channels_first(logits: np.ndarray) -> np.ndarray:
    """uint8 argmax over axis 0 of (C, H, W): a running maximum over contiguous planes.

    numpy's argmax over the outer axis walks the array C times with strided reads; comparing whole planes
    keeps every pass contiguous and about twice as fast. Ties go to the lower index, as np.argmax does.
    """
    best = logits[0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    greater = np.empty(best.shape, dtype=bool)
    for class_id in range(1, logits.shape[0]):
        np.greater(logits[class_id], best, out=greater)
        np.maximum(best, logits[class_id], out=best)
        np.putmask(labels, greater, class_id)
    return labels


def label_map(output: np.ndarray, entry: ModelEntry) -> np.ndarray:
    """(H, W) uint8 class ids from a semantic model's output (batch 1, layout of the input spec)."""
    array = np.asarray(output)
    if entry.output_kind == "argmax":
        squeezed = array.reshape([d for d in array.shape if d != 1] or [1])
        if squeezed.ndim != 2:
            raise ValueError(f"{entry.label}: argmax output of shape {array.shape} is not one (H, W) map")
        return squeezed.astype(np.uint8, copy=False)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"{entry.label}: batch of {array.shape[0]} in the output, expected 1")
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{entry.label}: logits of shape {output.shape}, expected (C, H, W) or (H, W, C)")
    num_classes = len(entry.classes)
    channels = array.shape[0] if entry.input.layout == "NCHW" else array.shape[2]
    if channels != num_classes:
        raise ValueError(f"{entry.label}: {channels} output channels but {num_classes} classes in the manifest")
    if entry.input.layout == "NCHW":
        return argmax_channels_first(array)
    return array.argmax(axis=2).astype(np.uint8)


class SemanticModel:
    """A loaded semantic model: prepare a frame, run it, read its class-id map."""

    def __init__(self, session: Session):
        self.session = session
        self.entry = session.entry
        self.preparer = InputPreparer(self.entry.input)
        self.palette = palette_lut(self.entry.classes)
        self.class_names = [c.name for c in self.entry.classes]

    @property
    def name(self) -> str:
        return self.entry.name

    def prepare(self, frame_bgr: np.ndarray) -> np.ndarray:
        spec = self.entry.input
        return self.preparer(resize_rgb(frame_bgr, spec.width, spec.height))

    def infer(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        return self.session.run(tensor)

    def labels(self, outputs: Dict[str, np.ndarray]) -> np.ndarray:
        return label_map(next(iter(outputs.values())), self.entry)

    def class_ids(self, names: Sequence[str]) -> list:
        return [i for i, name in enumerate(self.class_names) if name in names]


def colorize(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """BGR colour image of a uint8 class-id map through a (256, 1, 3) palette LUT."""
    return cv2.LUT(cv2.merge((labels, labels, labels)), lut)
