"""`idd-edge-runtime --benchmark VIDEO FRAMES`: ms per frame and FPS for each semantic model, with and without YOLO.

Frames are decoded once up front, so video decoding is not measured. Each configuration runs the frames
sequentially to split the time into host work (pre-processing, argmax, YOLO decoding, drawing) and model
inference, then once more through the threaded pipeline: `pipelined_fps` is what the app shows, since
there host work overlaps inference.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from idd_edge_runtime import __version__
from idd_edge_runtime.engine import Engine, Settings, SettingsBox
from idd_edge_runtime.pipeline import Pipeline
from idd_edge_runtime.preprocess import check_frame
from idd_edge_runtime.sources import END, FRAME, Read, SourceError


@dataclass
class BenchmarkRow:
    semantic: str
    instance: str
    backends: str
    frames: int
    ms_per_frame: float
    fps: float
    host_ms: float
    inference_ms: float
    preprocess_ms: float
    postprocess_ms: float
    render_ms: float
    p95_ms: float
    pipelined_fps: float


def read_frames(path: str, count: int) -> List[np.ndarray]:
    """`count` frames of the video, starting over at the end when the video is shorter."""
    if count < 1:
        raise ValueError(f"frame count must be >= 1, got {count}")
    frames: List[np.ndarray] = []
    while len(frames) < count:
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            raise SourceError(f"{path}: cannot be opened as a video")
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(check_frame(frame))
        capture.release()
        if not frames:
            raise SourceError(f"{path}: no decodable frame")
    return frames


class _MemorySource:
    is_live = False

    def __init__(self, frames: Sequence[np.ndarray]):
        self._frames, self._next = frames, 0
        self.name, self.fps = "memory", 30.0

    def read(self) -> Read:
        if self._next >= len(self._frames):
            return Read(END)
        self._next += 1
        return Read(FRAME, self._frames[self._next - 1])

    def close(self) -> None:
        pass


def _pipelined_fps(engine: Engine, frames: Sequence[np.ndarray], settings: Settings) -> float:
    start = time.perf_counter()
    pipeline = Pipeline(engine, _MemorySource(frames), SettingsBox(settings), on_frame=lambda *_: None, banner=False).start()
    pipeline.wait()
    elapsed = time.perf_counter() - start
    return pipeline.frames_shown / elapsed if elapsed > 0 else 0.0


def _configurations(engine: Engine) -> List[Settings]:
    configs = []
    for name in engine.semantic_names:
        configs.append(Settings(semantic=name, yolo=False))
        if engine.has_instance:
            configs.append(Settings(semantic=name, yolo=True))
    if not configs and engine.has_instance:
        configs.append(Settings(semantic=None, yolo=True))
    return configs


def run_benchmark(engine: Engine, frames: Sequence[np.ndarray], warmup: int = 2, progress=print) -> List[BenchmarkRow]:
    rows = []
    instance = engine.loaded.instance
    for settings in _configurations(engine):
        for frame in frames[: max(warmup, 0)]:
            engine.process(frame, settings)
        timings = []
        for frame in frames:
            _, result = engine.process(frame, settings)
            if result.errors:
                raise RuntimeError("; ".join(result.errors))
            timings.append(result.timings)
        totals = [t.total_ms for t in timings]
        mean = statistics.fmean(totals)
        semantic = engine.loaded.semantic.get(settings.semantic) if settings.semantic else None
        backends = [m.session.backend for m in (semantic, instance if settings.yolo else None) if m is not None]
        row = BenchmarkRow(
            semantic=settings.semantic or "-",
            instance=instance.name if settings.yolo and instance is not None else "-",
            backends="+".join(backends),
            frames=len(frames),
            ms_per_frame=mean,
            fps=1000.0 / mean if mean > 0 else 0.0,
            host_ms=statistics.fmean(t.host_ms for t in timings),
            inference_ms=statistics.fmean(t.inference_ms for t in timings),
            preprocess_ms=statistics.fmean(t.preprocess_ms for t in timings),
            postprocess_ms=statistics.fmean(t.postprocess_ms for t in timings),
            render_ms=statistics.fmean(t.render_ms for t in timings),
            p95_ms=float(np.percentile(totals, 95)),
            pipelined_fps=_pipelined_fps(engine, frames, settings),
        )
        progress(f"  {row.semantic:<28} yolo={'on ' if settings.yolo else 'off'}  {row.ms_per_frame:7.1f} ms  {row.fps:6.1f} FPS")
        rows.append(row)
    return rows


def format_table(rows: Sequence[BenchmarkRow]) -> str:
    header = (
        f"{'semantic model':<28} {'YOLO':<6} {'backend':<22} {'ms/frame':>8} {'FPS':>6} {'host ms':>8} "
        f"{'infer ms':>8} {'pre':>6} {'post':>6} {'draw':>6} {'p95 ms':>7} {'pipe FPS':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.semantic:<28} {('on' if r.instance != '-' else 'off'):<6} {r.backends:<22} {r.ms_per_frame:8.1f} "
            f"{r.fps:6.1f} {r.host_ms:8.1f} {r.inference_ms:8.1f} {r.preprocess_ms:6.1f} {r.postprocess_ms:6.1f} "
            f"{r.render_ms:6.1f} {r.p95_ms:7.1f} {r.pipelined_fps:8.1f}"
        )
    return "\n".join(lines)


def benchmark_report(rows: Sequence[BenchmarkRow], engine: Engine, video: str, frame_shape: Sequence[int]) -> Dict[str, object]:
    loaded = engine.loaded
    device = loaded.device_info
    return {
        "bundle_version": loaded.manifest.version,
        "video": video,
        "frame_shape": list(frame_shape),
        "hailo_device": None if device is None else {"arch": device.arch, "firmware": device.firmware_version},
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(), "opencv": cv2.__version__},
        "runtime_version": __version__,
        "rows": [asdict(r) for r in rows],
    }


def write_json(path: "str | os.PathLike[str]", data: object, indent: Optional[int] = 2) -> None:
    """Atomic JSON write (temp file in the same folder, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=indent)
            handle.write("\n")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
