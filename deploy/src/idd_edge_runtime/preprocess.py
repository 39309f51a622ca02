"""Frame -> network input tensor, as the manifest's input spec says (layout, dtype, host normalisation).

The frame arrives as OpenCV gives it (BGR uint8); models take RGB. Semantic models see the frame resized
to their input (no letterbox, like training's validation resize); instance models see it letterboxed.
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


def resize_rgb(frame_bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Stretch-resize a BGR frame to (height, width) and convert to RGB."""
    if frame_bgr.shape[:2] != (height, width):
        frame_bgr = cv2.resize(frame_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)


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
