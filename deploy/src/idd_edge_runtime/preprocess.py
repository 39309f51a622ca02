"""Frame -> network input tensor, as the manifest's input spec says (layout, dtype, host normalisation).

The frame arrives as OpenCV gives it (BGR uint8); models take RGB. Semantic models see the frame resized
to their input by `resize_semantic` (no letterbox); instance models see it letterboxed. `resize_semantic`
is the one semantic resize of the project: training validation, evaluation, calibration, quantization,
compilation and the accuracy gate call it too (`idd_edge.export.preprocessing`, `idd_edge.seg.data`), so
the gate certifies, and INT8/HEF are calibrated on, exactly the pixels the device feeds its models.
"""

from __future__ import annotations

import cv2
import numpy as np

from idd_edge_runtime.manifest import InputSpec


class InputPreparer:
    """Turns an RGB uint8 image already at the network size into the input tensor (batch 1)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec
        if spec.normalization is not None:
            std = np.asarray(spec.normalization.std, dtype=np.float32)
            # (x - mean) / std == x * (1 / std) + (-mean / std): one multiply-add per element.
            self._scale = (1.0 / std).astype(np.float32)
            self._offset = (-np.asarray(spec.normalization.mean, dtype=np.float32) / std).astype(np.float32)
        else:
            self._scale = self._offset = None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        spec = self.spec
        if rgb.shape != (spec.height, spec.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"expected ({spec.height}, {spec.width}, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        if spec.dtype == "uint8":
            hwc = rgb
        elif self._scale is None:
            hwc = rgb.astype(np.float32)
        else:
            hwc = rgb.astype(np.float32)
            hwc *= self._scale
            hwc += self._offset
        if spec.layout == "NCHW":
            return np.ascontiguousarray(hwc.transpose(2, 0, 1))[None]
        return np.ascontiguousarray(hwc)[None]


def resize_semantic(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A uint8 (H, W, C) image stretch-resized to (height, width), any channel order: area averaging along
    an axis that shrinks, bilinear along one that grows.

    Why these filters: a shrinking resize must average every source pixel it covers, or fine texture
    aliases (plain bilinear reads 2x2 pixels: on 1280x720 noise -> 512x512 it is 25 grey levels from
    torchvision's antialiased resize, which the host used before; area averaging is 9, and 0.5 on a
    painted synthetic scene; `benchmarks/semantic_resize.py` measures it). When an axis grows, area
    interpolation turns into a blocky nearest-like filter, so that axis is bilinear (as torchvision's).
    The price: area averaging at a non-integer ratio costs about ten bilinear resizes (1280x720 -> 512x512:
    ~5 ms instead of ~0.5 ms on one x86 core), worth it for inputs that match what the gate certified.
    """
    source_h, source_w = image.shape[:2]
    if (source_h, source_w) == (height, width):
        return image
    if width <= source_w and height <= source_h:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if width >= source_w and height >= source_h:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    # One axis shrinks, the other grows: each axis with its own filter, the shrinking one first (fewer pixels).
    if width < source_w:
        narrow = cv2.resize(image, (width, source_h), interpolation=cv2.INTER_AREA)
        return cv2.resize(narrow, (width, height), interpolation=cv2.INTER_LINEAR)
    low = cv2.resize(image, (source_w, height), interpolation=cv2.INTER_AREA)
    return cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR)


def resize_rgb(frame_bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """A BGR frame resized to a semantic model's (height, width) by `resize_semantic`, as RGB."""
    return cv2.cvtColor(resize_semantic(frame_bgr, width, height), cv2.COLOR_BGR2RGB)


def check_frame(frame: object) -> np.ndarray:
    """The frame as an (H, W, 3) uint8 array, or ValueError saying why it is unusable (a corrupt frame)."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame is {type(frame).__name__}, not an image")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame has dtype {frame.dtype}, expected uint8")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim != 3 or frame.shape[2] not in (3, 4) or frame.shape[0] < 2 or frame.shape[1] < 2:
        raise ValueError(f"frame has shape {frame.shape}, expected (H, W, 3)")
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame
