"""Frame sources: a video file, a UVC camera (/dev/videoN), or the Pi camera through GStreamer/libcamera.

`read()` never raises for a bad frame: it returns a `Read` whose status tells the pipeline what happened
(a frame, the end of a file, a corrupt frame to skip, a camera that went away and is being reopened).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import cv2
import numpy as np

from idd_edge_runtime.preprocess import check_frame

log = logging.getLogger(__name__)

FRAME = "frame"
END = "end"
SKIP = "skip"  # a corrupt frame or a camera hiccup: nothing this time, try again
PICAM = "picam"

#: A file with this many unreadable frames in a row is treated as ended (truncated or broken file).
MAX_CONSECUTIVE_BAD_FRAMES = 25
#: A camera that fails this long is reopened (unplugged and plugged back in).
REOPEN_INTERVAL_S = 1.0


class SourceError(RuntimeError):
    """A source that cannot be opened at all; the message names it and says what to check."""


@dataclass
class Read:
    status: str
    frame: Optional[np.ndarray] = None
    message: Optional[str] = None


class VideoFileSource:
    """Frames of a video file. Corrupt frames are skipped; a file that stops decoding mid-way ends."""

    is_live = False

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise SourceError(f"{path}: no such video file")
        self.name = path
        self._capture = cv2.VideoCapture(path)
        if not self._capture.isOpened():
            raise SourceError(f"{path}: cannot be opened as a video (not a video, or a codec OpenCV lacks)")
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0
        self.frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._bad_in_row = 0

    def read(self) -> Read:
        ok, frame = self._capture.read()
        if ok:
            try:
                frame = check_frame(frame)
            except ValueError as exc:
                return self._bad(f"corrupt frame skipped: {exc}")
            self._bad_in_row = 0
            return Read(FRAME, frame)
        position = int(self._capture.get(cv2.CAP_PROP_POS_FRAMES) or 0)
        if self.frame_count and position < self.frame_count - 1:
            # Decoding failed before the end: skip the broken frame rather than stopping the video.
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, position + 1)
            return self._bad(f"frame {position} could not be decoded; skipped")
        return Read(END, message=f"{self.name}: end of video")

    def _bad(self, message: str) -> Read:
        self._bad_in_row += 1
        if self._bad_in_row >= MAX_CONSECUTIVE_BAD_FRAMES:
            return Read(END, message=f"{self.name}: {self._bad_in_row} unreadable frames in a row; stopping")
        return Read(SKIP, message=f"{self.name}: {message}")

    def close(self) -> None:
        self._capture.release()


class ReplaySource:
    """A video file played like a camera: at its own frame rate, and with `loop` from the start at its end.

    What `--serve` uses for a file (a demo or test feed): a live page wants real time, not as fast as
    the models go; being live, the pipeline drops stale frames instead of falling behind.
    """

    is_live = True

    def __init__(self, path: str, loop: bool = False):
        self._path, self._loop = path, loop
        self._file = VideoFileSource(path)
        self.name, self.fps = path, self._file.fps
        self._due = time.monotonic()

    def read(self) -> Read:
        wait = self._due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._due = max(self._due + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)
        read = self._file.read()
        if read.status == END and self._loop:
            self._file.close()
            self._file = VideoFileSource(self._path)
            return Read(SKIP, message=f"{self.name}: playing again from the start")
        return read

    def close(self) -> None:
        self._file.close()


class CameraSource:
    """A live camera. When it stops delivering (unplugged), it is reopened every REOPEN_INTERVAL_S."""

    is_live = True

    def __init__(self, name: str, opener: Callable[[], "cv2.VideoCapture"], fps: float = 30.0):
        self.name = name
        self._opener = opener
        self.fps = fps
        self._capture = opener()
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"{name}: camera cannot be opened (check it is plugged in and not used by another program)")
        self._lost_since: Optional[float] = None
        self._last_attempt = 0.0

    def read(self) -> Read:
        if self._lost_since is not None:
            return self._reconnect()
        ok, frame = self._capture.read()
        if ok:
            try:
                return Read(FRAME, check_frame(frame))
            except ValueError as exc:
                return Read(SKIP, message=f"{self.name}: corrupt frame skipped: {exc}")
        self._capture.release()
        self._lost_since = self._last_attempt = time.monotonic()
        return Read(SKIP, message=f"{self.name}: camera stopped delivering frames (unplugged?); reconnecting")

    def _reconnect(self) -> Read:
        now = time.monotonic()
        if now - self._last_attempt < REOPEN_INTERVAL_S:
            time.sleep(min(0.05, REOPEN_INTERVAL_S))
            return Read(SKIP)
        self._last_attempt = now
        capture = self._opener()
        if capture.isOpened():
            self._capture = capture
            lost_for = now - (self._lost_since or now)
            self._lost_since = None
            return Read(SKIP, message=f"{self.name}: camera back after {lost_for:.1f} s")
        capture.release()
        return Read(SKIP)

    def close(self) -> None:
        self._capture.release()


def uvc_opener(device: str, width: Optional[int] = None, height: Optional[int] = None) -> Callable[[], "cv2.VideoCapture"]:
    def open_capture() -> "cv2.VideoCapture":
        capture = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if width and height:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        # One buffered frame: a live view wants the newest frame, not a backlog.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return capture

    return open_capture


def gstreamer_available() -> bool:
    return bool(re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()))


def libcamera_available() -> bool:
    """True when GStreamer's libcamerasrc element is installed (Raspberry Pi OS: gstreamer1.0-libcamera)."""
    if shutil.which("gst-inspect-1.0") is None:
        return False
    try:
        return subprocess.run(["gst-inspect-1.0", "libcamerasrc"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def picam_pipeline(width: int = 1280, height: int = 720, fps: int = 30) -> str:
    return (
        f"libcamerasrc ! video/x-raw,width={width},height={height},framerate={fps}/1 ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def open_source(
    spec: str, width: Optional[int] = None, height: Optional[int] = None, realtime: bool = False, loop: bool = False
) -> "VideoFileSource | ReplaySource | CameraSource":
    """`spec` is a video path, /dev/videoN, a camera index N, or "picam" (libcamera through GStreamer).

    `realtime` plays a video file at its frame rate (`loop`: over and over), as a camera would deliver it.
    """
    if spec == PICAM:
        if not gstreamer_available():
            raise SourceError("picam: this OpenCV has no GStreamer support; on the Pi use `sudo apt install python3-opencv` (not the pip wheel) or a UVC camera")
        if not libcamera_available():
            raise SourceError("picam: GStreamer's libcamerasrc is missing: `sudo apt install gstreamer1.0-libcamera`")
        pipeline = picam_pipeline(width or 1280, height or 720)
        return CameraSource(PICAM, lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER))
    if spec.isdigit():
        spec = f"/dev/video{spec}"
    if spec.startswith("/dev/video"):
        if not os.path.exists(spec):
            raise SourceError(f"{spec}: no such camera device (plugged in? see --list-sources)")
        return CameraSource(spec, uvc_opener(spec, width, height))
    return ReplaySource(spec, loop) if realtime else VideoFileSource(spec)


def _v4l2_name(device: str) -> str:
    try:
        with open(f"/sys/class/video4linux/{os.path.basename(device)}/name", encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


#: V4L2 nodes of the Pi's codecs and ISP: not cameras, so not offered as sources.
_NOT_CAMERAS = ("codec", "isp", "hevc", "pispbe", "rpivid", "unicam-embedded")


def discover_sources() -> List[Tuple[str, str]]:
    """(spec, description) of the cameras this machine appears to have."""
    found = []
    if gstreamer_available() and libcamera_available():
        found.append((PICAM, "Raspberry Pi camera (libcamera via GStreamer)"))
    for device in sorted(glob.glob("/dev/video*"), key=lambda d: int(re.sub(r"\D", "", d) or 0)):
        name = _v4l2_name(device)
        if any(word in name.lower() for word in _NOT_CAMERAS):
            continue
        found.append((device, f"{device} {name}".strip()))
    return found
