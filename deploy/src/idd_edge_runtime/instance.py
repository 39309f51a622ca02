"""Instance (YOLOv8-seg) model on the device: letterboxed input, then the shared host post-processing.

Decoding is `yolo_postprocess` (the same code evaluation uses): the ONNX layout for ONNX models, the
split Hailo layout for HEFs (HailoRT already dequantised to float32).
"""

from __future__ import annotations

from typing import Dict, Tuple

import cv2
import numpy as np

from idd_edge_runtime import yolo_postprocess as yp
from idd_edge_runtime.backends import BackendError, Session
from idd_edge_runtime.letterbox import Letterbox, letterbox
from idd_edge_runtime.preprocess import InputPreparer


class InstanceModel:
    """A loaded YOLOv8-seg model: prepare a frame, run it, decode detections in frame pixels."""

    def __init__(self, session: Session):
        self.session = session
        self.entry = entry = session.entry
        post = entry.postprocess
        if post is None:
            raise BackendError(f"{entry.label}: instance model without postprocess settings")
        if post.reg_max != yp.REG_MAX or post.mask_dim != yp.MASK_DIM:
            raise BackendError(
                f"{entry.label}: reg_max {post.reg_max} / mask_dim {post.mask_dim} differ from the YOLOv8-seg "
                f"head this runtime decodes ({yp.REG_MAX} / {yp.MASK_DIM})"
            )
        self.config = yp.PostprocessConfig(num_classes=len(entry.classes), conf_threshold=post.conf, iou_threshold=post.iou)
        self.preparer = InputPreparer(entry.input)
        self.class_names = [c.name for c in entry.classes]
        self.colors_bgr = [(c.color[2], c.color[1], c.color[0]) for c in entry.classes]

    @property
    def name(self) -> str:
        return self.entry.name

    def prepare(self, frame_bgr: np.ndarray) -> Tuple[np.ndarray, Letterbox]:
        spec = self.entry.input
        canvas, geometry = letterbox(frame_bgr, (spec.height, spec.width))
        return self.preparer(cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)), geometry

    def infer(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        return self.session.run(tensor)

    def detect(self, outputs: Dict[str, np.ndarray], geometry: Letterbox) -> yp.InstanceDetections:
        if self.entry.is_hef:
            return yp.decode_hailo(outputs, geometry, self.config)
        return yp.decode_onnx(*_onnx_pair(outputs, self.entry.label), geometry, self.config)


def _onnx_pair(outputs: Dict[str, np.ndarray], label: str) -> Tuple[np.ndarray, np.ndarray]:
    """(predictions, prototypes) of an Ultralytics export, told apart by rank (3-D vs 4-D), not by name."""
    by_rank = {np.ndim(array): array for array in outputs.values()}
    if len(outputs) != 2 or set(by_rank) != {3, 4}:
        shapes = [np.shape(a) for a in outputs.values()]
        raise ValueError(f"{label}: expected a YOLOv8-seg ONNX pair (1, 4+nc+32, N) + (1, 32, h, w), got {shapes}")
    return by_rank[3], by_rank[4]
