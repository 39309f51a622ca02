"""Device runtime end to end: threaded pipeline, sources and their failures, headless CLI, benchmark mode."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest

from idd_edge_runtime import cli, sources
from idd_edge_runtime.engine import Engine, Settings, SettingsBox
from idd_edge_runtime.loader import load_runtime
from idd_edge_runtime.pipeline import FrameQueue, Pipeline
from tests._runtime_bundle import build_onnx_bundle, make_frame, write_video


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return build_onnx_bundle(tmp_path / "bundle")


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.avi", frames=8)


def _count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_headless_run_writes_every_frame_of_a_video(bundle: Path, video: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "annotated.avi"
    code = cli.main(["--bundle", str(bundle), "--headless", "--source", str(video), "--output", str(out), "--privacy", "--threads", "1"])
    assert code == 0
    assert _count_frames(out) == 8
    assert sorted(p.name for p in out.parent.iterdir()) == ["annotated.avi"]  # no partial file left behind
    assert "8 frames in" in capsys.readouterr().out


def test_headless_max_frames_and_model_choice(bundle: Path, video: Path, tmp_path: Path) -> None:
    out = tmp_path / "short.avi"
    args = ["--bundle", str(bundle), "--headless", "--source", str(video), "--output", str(out), "--max-frames", "3"]
    assert cli.main(args + ["--model", "seg-argmax", "--no-yolo", "--alpha", "0.8"]) == 0
    assert _count_frames(out) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "no semantic model 'nope'"),
        (["--alpha", "2"], "--alpha must be within 0..1"),
        (["--source", "missing.mp4"], "missing.mp4: no such video file"),
        (["--source", "/dev/video99"], "/dev/video99: no such camera device"),
        ([], "--headless needs --source"),
    ],
)
def test_cli_user_errors_are_one_line(bundle: Path, args: List[str], message: str, capsys) -> None:
    assert cli.main(["--bundle", str(bundle), "--headless"] + args) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_broken_bundle(tmp_path: Path, capsys) -> None:
    assert cli.main(["--bundle", str(tmp_path), "--headless", "--source", "x.mp4"]) == 2
    assert "manifest.json: missing: not an idd-edge bundle" in capsys.readouterr().err


def test_not_a_video_is_reported(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(sources.SourceError, match="cannot be opened as a video"):
        sources.open_source(str(junk))


def test_benchmark_mode_prints_a_table_and_writes_json(bundle: Path, video: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "bench" / "runtime.json"
    code = cli.main(["--bundle", str(bundle), "--benchmark", str(video), "3", "--benchmark-json", str(report), "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ms/frame" in printed and "seg-argmax" in printed
    data = json.loads(report.read_text())
    rows = data["rows"]
    assert [(r["semantic"], r["instance"]) for r in rows] == [
        ("seg-logits", "-"),
        ("seg-logits", "yolo-tiny"),
        ("seg-argmax", "-"),
        ("seg-argmax", "yolo-tiny"),
    ]
    for row in rows:
        assert row["frames"] == 3 and row["fps"] > 0 and row["pipelined_fps"] > 0
        assert row["ms_per_frame"] == pytest.approx(row["host_ms"] + row["inference_ms"], rel=1e-6)
        assert row["host_ms"] == pytest.approx(row["preprocess_ms"] + row["postprocess_ms"] + row["render_ms"], rel=1e-6)
    assert data["frame_shape"] == [120, 160, 3] and data["bundle_version"] == "v1"


def test_frame_queue_drops_stale_frames_only_when_live() -> None:
    stop = threading.Event()
    live = FrameQueue(2, drop_stale=True)
    for i in range(5):
        assert live.put(i, stop)
    assert live.dropped == 3 and [live.get(stop), live.get(stop)] == [3, 4]
    recorded = FrameQueue(2, drop_stale=False)
    assert recorded.put(0, stop) and recorded.put(1, stop)
    stop.set()
    assert not recorded.put(2, stop)  # a file source waits for room instead of dropping (until stopped)
    assert recorded.dropped == 0


class _ScriptedSource:
    """A source replaying a script of reads: how the pipeline meets corrupt frames and messages."""

    is_live = False
    name, fps = "scripted", 10.0

    def __init__(self, script):
        self._script = list(script)

    def read(self) -> sources.Read:
        return self._script.pop(0) if self._script else sources.Read(sources.END, message="scripted: end")

    def close(self) -> None:
        pass


def test_pipeline_skips_corrupt_frames_and_switches_models_live(bundle: Path) -> None:
    loaded = load_runtime(bundle, backend="onnx", onnx_threads=1)
    engine = Engine(loaded)
    frame = make_frame()
    script = [sources.Read(sources.FRAME, frame)] * 3 + [sources.Read(sources.SKIP, message="scripted: corrupt frame skipped")]
    script += [sources.Read(sources.FRAME, frame)] * 6
    box = SettingsBox(Settings(semantic="seg-logits", yolo=True))
    seen: List[str] = []
    messages: List[str] = []

    def on_frame(annotated: np.ndarray, result) -> None:
        seen.append(result.settings.semantic)
        if len(seen) == 2:
            box.update(semantic="seg-argmax", yolo=False, alpha=0.2)

    pipeline = Pipeline(engine, _ScriptedSource(script), box, on_frame=on_frame, on_message=messages.append, queue_size=1)
    try:
        assert pipeline.start().wait(60)
    finally:
        loaded.close()
    assert pipeline.failure is None and pipeline.frames_shown == 9 and pipeline.frames_skipped == 1
    assert seen[0] == "seg-logits" and seen[-1] == "seg-argmax"
    assert "scripted: corrupt frame skipped" in messages and "scripted: end" in messages


def test_camera_that_goes_away_is_reopened(video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 'camera' is a real capture of a short clip: when it runs dry it behaves like an unplugged UVC camera."""
    opened: List[int] = []

    def opener() -> cv2.VideoCapture:
        opened.append(1)
        return cv2.VideoCapture(str(video))

    camera = sources.CameraSource("/dev/video7", opener)
    reads = [camera.read() for _ in range(9)]
    assert [r.status for r in reads[:8]] == [sources.FRAME] * 8
    assert reads[8].status == sources.SKIP and "unplugged" in reads[8].message
    monkeypatch.setattr(sources, "REOPEN_INTERVAL_S", 0.0)
    back = camera.read()
    assert back.status == sources.SKIP and "camera back" in back.message
    assert camera.read().status == sources.FRAME and len(opened) == 2
    camera.close()


def test_a_camera_that_cannot_open_is_reported(tmp_path: Path) -> None:
    with pytest.raises(sources.SourceError, match="camera cannot be opened"):
        sources.CameraSource("/dev/video42", lambda: cv2.VideoCapture(str(tmp_path / "absent.avi")))


def test_video_file_source_reports_its_end(video: Path) -> None:
    source = sources.VideoFileSource(str(video))
    statuses = [source.read().status for _ in range(9)]
    assert statuses == [sources.FRAME] * 8 + [sources.END]
    source.close()


def test_stream_memory_tracks_smooths_and_privacy_never_waits_for_smoothing(bundle: Path) -> None:
    from idd_edge_runtime.engine import StreamMemory
    from tests._runtime_bundle import PERSON_REGION

    loaded = load_runtime(bundle, backend="onnx", onnx_threads=1)
    try:
        engine, memory = Engine(loaded), StreamMemory()
        settings = Settings(semantic="seg-logits", yolo=True, tracking=True, smoothing=3)
        road = np.full_like(make_frame(), 110)
        results = [engine.infer(frame, settings, i, memory) for i, frame in enumerate([road, road, make_frame(), make_frame(), make_frame()])]
        # The red block (a person to both models) appears at frame 2: tracked from its second frame on...
        assert [r.track_ids.tolist() for r in results[2:]] == [[-1, -1, -1], [1, 2, 3], [1, 2, 3]]
        # ...and the smoothed map shows it only after 3 frames of the model saying so, while the raw map does at once.
        person = results[2].semantic_model.class_names.index("person")
        assert (results[2].labels == person).any() and not (results[2].smoothed_labels == person).any()
        assert not (results[3].smoothed_labels == person).any() and (results[4].smoothed_labels == person).any()
        # Privacy by the semantic map blurs this frame's person pixels, not the smoothed map's (still road).
        private = results[2]
        private.settings = Settings(semantic="seg-logits", yolo=False, privacy=True, smoothing=3)
        private.detections = None
        drawn = engine.render(private)
        plain = engine.render(replace(private, settings=Settings(semantic="seg-logits", yolo=False, privacy=False, smoothing=3)))
        assert np.abs(drawn[PERSON_REGION].astype(int) - plain[PERSON_REGION].astype(int)).mean() > 5
    finally:
        loaded.close()
