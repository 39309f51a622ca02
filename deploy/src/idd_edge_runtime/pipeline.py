"""Capture -> inference -> drawing, each in its own thread, joined by small bounded queues.

With a Hailo device the accelerator works while the host prepares the next frame and draws the last
one; numpy and OpenCV release the GIL in their kernels, so the threads overlap on the Pi's cores.
For a live camera a full queue drops its oldest frame (showing a stale frame late is worse than
skipping it); a video file is processed frame by frame, nothing dropped.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Deque, Dict, Optional

import cv2
import numpy as np

from idd_edge_runtime import render
from idd_edge_runtime.engine import Engine, FrameResult, SettingsBox, StreamMemory
from idd_edge_runtime.sources import END, FRAME

log = logging.getLogger(__name__)

_END = object()
#: The same message (e.g. "camera reconnecting") is repeated at most this often.
MESSAGE_INTERVAL_S = 5.0
#: The FPS readout is the rate of the last this many drawn frames.
FPS_WINDOW = 30
#: FPS is reported once the window spans this long: at start the queued frames render in a burst
#: (three frames within a millisecond read as thousands of FPS).
FPS_MIN_SPAN_S = 0.5


class FrameQueue:
    """Bounded FIFO; with `drop_stale` a put on a full queue discards the oldest item instead of waiting."""

    def __init__(self, maxsize: int, drop_stale: bool):
        self._items: Deque[object] = collections.deque()
        self._maxsize = maxsize
        self._drop_stale = drop_stale
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item: object, stop: threading.Event, force: bool = False) -> bool:
        """Queue `item`; False if the pipeline stopped while waiting. `force` never drops (end marker)."""
        with self._cond:
            while len(self._items) >= self._maxsize:
                if self._drop_stale and not force and self._items[0] is not _END:
                    self._items.popleft()
                    self.dropped += 1
                    break
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, stop: threading.Event) -> object:
        """Next item, or _END once the pipeline stops."""
        with self._cond:
            while not self._items:
                if stop.is_set():
                    return _END
                self._cond.wait(0.1)
            item = self._items.popleft()
            self._cond.notify_all()
            return item


class Pipeline:
    """Runs `engine` on `source` until the source ends, `max_frames` are done, or `stop()`."""

    def __init__(
        self,
        engine: Engine,
        source: object,
        settings: SettingsBox,
        on_frame: Callable[[np.ndarray, FrameResult], None],
        on_message: Callable[[str], None] = log.info,
        max_frames: Optional[int] = None,
        queue_size: int = 2,
        banner: bool = True,
    ):
        self.engine, self.source, self.settings = engine, source, settings
        self._on_frame, self._on_message = on_frame, on_message
        self.max_frames = max_frames
        self.banner = banner
        drop = bool(getattr(source, "is_live", False))
        self._captured = FrameQueue(queue_size, drop)
        self._inferred = FrameQueue(queue_size, drop)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._last_message: Dict[str, float] = {}
        self._message_lock = threading.Lock()
        self.frames_read = 0
        self.frames_shown = 0
        self.frames_skipped = 0
        self.failure: Optional[str] = None
        self.fps = 0.0
        self.memory = StreamMemory()  # tracks and smoothed class map of this stream
        self._threads = [
            threading.Thread(target=self._guard, args=(self._capture_loop, "capture"), name="capture", daemon=True),
            threading.Thread(target=self._guard, args=(self._infer_loop, "inference"), name="inference", daemon=True),
            threading.Thread(target=self._guard, args=(self._render_loop, "drawing"), name="drawing", daemon=True),
        ]

    # -------------------------------------------------------------------------------- control
    def start(self) -> "Pipeline":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once every frame has been drawn (or the pipeline was stopped)."""
        finished = self._done.wait(timeout)
        if finished:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=5)
        return finished

    @property
    def finished(self) -> bool:
        """Every frame drawn, or stopped."""
        return self._done.is_set()

    @property
    def dropped(self) -> int:
        return self._captured.dropped + self._inferred.dropped

    def message(self, text: str) -> None:
        """Report `text`, at most once per MESSAGE_INTERVAL_S for the same text."""
        now = time.monotonic()
        with self._message_lock:
            if now - self._last_message.get(text, -1e9) < MESSAGE_INTERVAL_S:
                return
            self._last_message[text] = now
        self._on_message(text)

    # -------------------------------------------------------------------------------- threads
    def _guard(self, loop: Callable[[], None], what: str) -> None:
        try:
            loop()
        except Exception as exc:  # a bug must stop the app with a message, not hang it
            self.failure = f"{what} thread failed: {type(exc).__name__}: {exc}"
            log.exception("%s thread failed", what)
            self._on_message(self.failure)
            self._stop.set()
            self._done.set()

    def _capture_loop(self) -> None:
        index = 0
        while not self._stop.is_set():
            if self.max_frames is not None and index >= self.max_frames:
                break
            read = self.source.read()  # type: ignore[attr-defined]
            if read.message:
                self.message(read.message)
            if read.status == END:
                break
            if read.status != FRAME:
                self.frames_skipped += 1
                continue
            if not self._captured.put((index, read.frame), self._stop):
                return
            index += 1
            self.frames_read = index
        self._captured.put(_END, self._stop, force=True)

    def _infer_loop(self) -> None:
        while True:
            item = self._captured.get(self._stop)
            if item is _END:
                self._inferred.put(_END, self._stop, force=True)
                return
            index, frame = item  # type: ignore[misc]
            result = self.engine.infer(frame, self.settings.get(), index, self.memory)
            for error in result.errors:
                self.message(error)
            if not self._inferred.put(result, self._stop):
                return

    def _render_loop(self) -> None:
        recent: Deque[float] = collections.deque(maxlen=FPS_WINDOW)
        while True:
            item = self._inferred.get(self._stop)
            if item is _END:
                self._done.set()
                return
            result: FrameResult = item  # type: ignore[assignment]
            annotated = self.engine.render(result)
            recent.append(time.perf_counter())
            if len(recent) > 1 and recent[-1] - recent[0] >= FPS_MIN_SPAN_S:
                self.fps = (len(recent) - 1) / (recent[-1] - recent[0])
            if self.banner:
                render.draw_status(annotated, self.status_text(result))
            self.frames_shown += 1
            self._on_frame(annotated, result)

    def status_text(self, result: FrameResult) -> str:
        settings = result.settings
        parts = [settings.semantic or "no semantic"]
        if settings.yolo and self.engine.has_instance:
            parts.append("+YOLO")
        if settings.privacy:
            parts.append("privacy")
        if settings.smoothing > 1 and settings.semantic:
            parts.append(f"smooth {settings.smoothing}")
        return f"{' '.join(parts)}  {self.fps:5.1f} FPS"


class VideoSink:
    """Writes annotated frames to a video file; the file appears only when complete (temp + rename)."""

    def __init__(self, path: "str | os.PathLike[str]", fps: float):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.fps = fps
        self._writer: Optional[cv2.VideoWriter] = None
        self.frames = 0

    def write(self, frame: np.ndarray, _result: Optional[FrameResult] = None) -> None:
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            height, width = frame.shape[:2]
            self._writer = cv2.VideoWriter(str(self._partial), fourcc, self.fps, (width, height))
            if not self._writer.isOpened():
                raise OSError(f"{self.path}: OpenCV cannot write this video format (use .mp4 or .avi)")
        self._writer.write(frame)
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        """Finish the file; `keep=False` (interrupted before any frame) removes the partial file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if keep and self.frames:
            os.replace(self._partial, self.path)
        elif self._partial.exists():
            self._partial.unlink()
