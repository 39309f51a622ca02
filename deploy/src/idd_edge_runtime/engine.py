"""Per-frame work: `Engine.infer` (pre-processing, inference, post-processing) and `Engine.render` (drawing).

The two halves run in different pipeline threads; each records its time so the benchmark can split host
time (pre-processing, argmax, YOLO decoding, drawing) from accelerator/ONNX inference time. A model that
fails on one frame is reported in `FrameResult.errors`; the frame is still drawn with what succeeded.
In privacy mode a frame whose person masks could not be computed is blurred whole: failing safe.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np

from idd_edge_runtime import render
from idd_edge_runtime.backends import BackendError
from idd_edge_runtime.loader import LoadedBundle
from idd_edge_runtime.semantic import SemanticModel
from idd_edge_runtime.smoothing import LabelPersistence
from idd_edge_runtime.tracking import ByteTracker, TrackerConfig
from idd_edge_runtime.yolo_postprocess import InstanceDetections


@dataclass(frozen=True)
class Settings:
    """What the user can switch while the app runs."""

    semantic: Optional[str] = None  # semantic model name; None = no semantic overlay
    yolo: bool = True  # instance overlay on/off
    alpha: float = 0.5  # overlay opacity, 0..1
    privacy: bool = False  # blur person/rider instances
    tracking: bool = True  # YOLO instances keep an id (and its colour) across frames
    smoothing: int = 0  # semantic label persistence in frames; 0 or 1 = off (shows each frame's map as is)


class SettingsBox:
    """Thread-safe holder of the current Settings (the GUI writes, pipeline threads read)."""

    def __init__(self, settings: Settings):
        self._lock = threading.Lock()
        self._settings = settings

    def get(self) -> Settings:
        with self._lock:
            return self._settings

    def update(self, **changes: object) -> Settings:
        with self._lock:
            if "alpha" in changes:
                changes["alpha"] = min(max(float(changes["alpha"]), 0.0), 1.0)  # type: ignore[arg-type]
            self._settings = replace(self._settings, **changes)  # type: ignore[arg-type]
            return self._settings


@dataclass
class Timings:
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    render_ms: float = 0.0

    @property
    def host_ms(self) -> float:
        """Everything the host CPU does for the frame (not waiting for the model)."""
        return self.preprocess_ms + self.postprocess_ms + self.render_ms

    @property
    def total_ms(self) -> float:
        return self.host_ms + self.inference_ms


@dataclass
class FrameResult:
    index: int
    frame: np.ndarray
    settings: Settings
    semantic_model: Optional[SemanticModel] = None
    labels: Optional[np.ndarray] = None
    detections: Optional[InstanceDetections] = None
    timings: Timings = field(default_factory=Timings)
    errors: List[str] = field(default_factory=list)
    privacy_incomplete: bool = False
    track_ids: Optional[np.ndarray] = None  # (n,) int64 per detection, -1 = not a confirmed track yet
    smoothed_labels: Optional[np.ndarray] = None  # `labels` after temporal smoothing (None: smoothing off)

    @property
    def shown_labels(self) -> Optional[np.ndarray]:
        """The class map the overlay shows; privacy blurs by this frame's own `labels`, never a delayed map."""
        return self.smoothed_labels if self.smoothed_labels is not None else self.labels


class StreamMemory:
    """What one video stream remembers between frames: instance tracks and the smoothed class map.

    One per stream (the pipeline owns it), so a one-off image (`POST /api/infer`) never disturbs it. Its
    time counts as post-processing, so the benchmark's host time includes it.
    """

    def __init__(self, tracker_config: TrackerConfig = TrackerConfig()):
        self.tracker = ByteTracker(tracker_config)
        self._smoother: Optional[LabelPersistence] = None
        self._smoothed_model: Optional[str] = None

    def apply(self, result: FrameResult) -> None:
        start = time.perf_counter()
        settings, detections = result.settings, result.detections
        if settings.tracking and detections is not None:
            result.track_ids = self.tracker.update(detections.boxes, detections.scores, detections.class_ids)
        elif self.tracker.frame:
            self.tracker.reset()  # after a pause, stale tracks would match the wrong objects
        if settings.smoothing > 1 and result.labels is not None:
            if self._smoother is None or self._smoother.persistence != settings.smoothing or self._smoothed_model != settings.semantic:
                self._smoother, self._smoothed_model = LabelPersistence(settings.smoothing), settings.semantic
            result.smoothed_labels = self._smoother(result.labels)
        else:
            self._smoother = None
        result.timings.postprocess_ms += _ms(start)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class Engine:
    """Runs the loaded models on frames and draws the result."""

    def __init__(self, loaded: LoadedBundle, private_words: Sequence[str] = render.PRIVATE_WORDS):
        self.loaded = loaded
        self._lock = threading.Lock()
        self.private_words = tuple(private_words)
        instance = loaded.instance
        self.instance_private_ids: Tuple[int, ...] = (
            tuple(i for i, name in enumerate(instance.class_names) if render.is_private(name, self.private_words))
            if instance is not None
            else ()
        )

    @property
    def semantic_names(self) -> List[str]:
        return list(self.loaded.semantic)

    @property
    def has_instance(self) -> bool:
        return self.loaded.instance is not None

    def default_settings(self) -> Settings:
        names = self.semantic_names
        return Settings(semantic=names[0] if names else None, yolo=self.has_instance)

    def infer(self, frame: np.ndarray, settings: Settings, index: int = 0, memory: Optional[StreamMemory] = None) -> FrameResult:
        """Run the models on `frame`; with `memory`, instances are tracked and the class map smoothed."""
        # One model run at a time: the pipeline and HTTP requests share the sessions, and while ONNX Runtime
        # allows concurrent runs, nothing documents that HailoRT's InferModel does.
        with self._lock:
            result = self._infer(frame, settings, index)
        if memory is not None:
            memory.apply(result)
        return result

    def _infer(self, frame: np.ndarray, settings: Settings, index: int) -> FrameResult:
        result = FrameResult(index=index, frame=frame, settings=settings)
        timings = result.timings
        semantic = self.loaded.semantic.get(settings.semantic) if settings.semantic else None
        if settings.semantic and semantic is None:
            result.errors.append(f"semantic model {settings.semantic!r} is not loaded")
        instance = self.loaded.instance if (settings.yolo or settings.privacy) else None
        result.semantic_model = semantic

        if semantic is not None:
            try:
                start = time.perf_counter()
                tensor = semantic.prepare(frame)
                timings.preprocess_ms += _ms(start)
                start = time.perf_counter()
                outputs = semantic.infer(tensor)
                timings.inference_ms += _ms(start)
                start = time.perf_counter()
                result.labels = semantic.labels(outputs)
                timings.postprocess_ms += _ms(start)
            except (BackendError, ValueError) as exc:
                result.errors.append(f"{semantic.name}: {exc}")
        if instance is not None:
            try:
                start = time.perf_counter()
                tensor, geometry = instance.prepare(frame)
                timings.preprocess_ms += _ms(start)
                start = time.perf_counter()
                outputs = instance.infer(tensor)
                timings.inference_ms += _ms(start)
                start = time.perf_counter()
                result.detections = instance.detect(outputs, geometry)
                timings.postprocess_ms += _ms(start)
            except (BackendError, ValueError) as exc:
                result.errors.append(f"{instance.name}: {exc}")
        if settings.privacy:
            result.privacy_incomplete = not self._privacy_covered(result)
        return result

    def _privacy_covered(self, result: FrameResult) -> bool:
        if result.detections is not None:
            return True
        model = result.semantic_model
        return result.labels is not None and model is not None and bool(self._semantic_private_ids(model))

    def _semantic_private_ids(self, model: SemanticModel) -> List[int]:
        return [i for i, name in enumerate(model.class_names) if render.is_private(name, self.private_words)]

    def render(self, result: FrameResult) -> np.ndarray:
        """The annotated frame (a new array; the input frame is left as it was)."""
        start = time.perf_counter()
        settings = result.settings
        out = result.frame.copy()
        if settings.privacy:
            if result.privacy_incomplete:
                out[:] = render.box_blur(out, max(15, min(out.shape[:2]) // 8) | 1)
            elif result.detections is not None:
                render.blur_instances(out, result.detections, self.instance_private_ids)
            elif result.labels is not None and result.semantic_model is not None:
                render.blur_label_pixels(out, result.labels, self._semantic_private_ids(result.semantic_model))
        shown = result.shown_labels
        if shown is not None and result.semantic_model is not None and settings.alpha > 0:
            render.blend_semantic(out, shown, result.semantic_model.palette, settings.alpha)
        instance = self.loaded.instance
        if result.detections is not None and settings.yolo and instance is not None:
            render.draw_instances(
                out, result.detections, instance.colors_bgr, instance.class_names, max(settings.alpha, 0.3), track_ids=result.track_ids
            )
        result.timings.render_ms += _ms(start)
        return out

    def process(self, frame: np.ndarray, settings: Settings, index: int = 0) -> Tuple[np.ndarray, FrameResult]:
        result = self.infer(frame, settings, index)
        return self.render(result), result
