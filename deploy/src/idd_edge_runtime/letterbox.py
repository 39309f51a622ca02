"""Letterbox: fit a frame into the square network input without distorting it, and map results back.

The arithmetic is Ultralytics' (`LetterBox` + `scale_boxes`): scale by r = min(H/h, W/w), round each
resized side, centre the content with `round(pad - 0.1)` on the top/left. Training-side evaluation and
the device use this one implementation, so a box or mask means the same pixels on both.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Ultralytics pads with grey 114: the value the models were trained to see in the borders.
PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterboxed frame: source (h, w), network input (h, w), resized content, padding."""

    source_shape: tuple[int, int]
    input_shape: tuple[int, int]
    resized_shape: tuple[int, int]
    pad_top: int
    pad_left: int

    @classmethod
    def fit(cls, source_shape: tuple[int, int], input_shape: tuple[int, int] | int) -> Letterbox:
        """Letterbox geometry for a frame of `source_shape` (h, w) fed to a network of `input_shape`."""
        if isinstance(input_shape, int):
            input_shape = (input_shape, input_shape)
        (src_h, src_w), (in_h, in_w) = source_shape[:2], input_shape
        if min(src_h, src_w, in_h, in_w) <= 0:
            raise ValueError(f"empty frame or input: source {source_shape}, input {input_shape}")
        ratio = min(in_h / src_h, in_w / src_w)
        new_h, new_w = max(round(src_h * ratio), 1), max(round(src_w * ratio), 1)
        pad_top = round((in_h - new_h) / 2 - 0.1)
        pad_left = round((in_w - new_w) / 2 - 0.1)
        return cls((int(src_h), int(src_w)), (int(in_h), int(in_w)), (new_h, new_w), pad_top, pad_left)

    @property
    def gain_x(self) -> float:
        """Input pixels per source pixel along x (per axis: each side is rounded separately)."""
        return self.resized_shape[1] / self.source_shape[1]

    @property
    def gain_y(self) -> float:
        return self.resized_shape[0] / self.source_shape[0]

    def apply(self, image: np.ndarray, pad_value: int = PAD_VALUE) -> np.ndarray:
        """Resize `image` (h, w[, c]) into the input canvas, bilinear, padding with `pad_value`."""
        if image.shape[:2] != self.source_shape:
            raise ValueError(f"image shape {image.shape[:2]} does not match letterbox source {self.source_shape}")
        new_h, new_w = self.resized_shape
        resized = image if (new_h, new_w) == self.source_shape else cv2.resize(
            image, (new_w, new_h), interpolation=cv2.INTER_LINEAR
        )
        in_h, in_w = self.input_shape
        canvas = np.full((in_h, in_w, *image.shape[2:]), pad_value, dtype=image.dtype)
        canvas[self.pad_top : self.pad_top + new_h, self.pad_left : self.pad_left + new_w] = resized
        return canvas

    def boxes_to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map (n, 4) xyxy boxes from input pixels to source pixels, clipped to the source frame."""
        out = np.asarray(boxes, dtype=np.float32).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_left) / self.gain_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_top) / self.gain_y
        src_h, src_w = self.source_shape
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, src_w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, src_h)
        return out

    def source_to_input_x(self, x: np.ndarray) -> np.ndarray:
        """Continuous source x coordinates (pixel centres are at c + 0.5) to continuous input x."""
        return self.pad_left + x * self.gain_x

    def source_to_input_y(self, y: np.ndarray) -> np.ndarray:
        return self.pad_top + y * self.gain_y


def letterbox(
    image: np.ndarray, input_shape: tuple[int, int] | int, pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, Letterbox]:
    """Letterbox `image` into `input_shape`; returns the canvas and the geometry to undo it."""
    geometry = Letterbox.fit(image.shape[:2], input_shape)
    return geometry.apply(image, pad_value), geometry
