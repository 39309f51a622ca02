"""The PyQt5 window, offscreen: plays a video through the pipeline, switches models, writes a screenshot."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PyQt5.QtWidgets", reason="the gui extra (PyQt5) is not installed")

from idd_edge_runtime import sources  # noqa: E402
from idd_edge_runtime.engine import Engine, SettingsBox  # noqa: E402
from idd_edge_runtime.gui import NO_SEMANTIC, MainWindow  # noqa: E402
from idd_edge_runtime.loader import load_runtime  # noqa: E402
from tests._runtime_bundle import build_onnx_bundle, write_video  # noqa: E402


class _PacedVideo(sources.VideoFileSource):
    """A video file read at 50 FPS, like a camera: the clip must still be playing when the test switches models."""

    def read(self) -> sources.Read:
        time.sleep(0.02)
        return super().read()


def _process_until(app, condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_gui_plays_a_video_switches_models_and_screenshots(tmp_path: Path) -> None:
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["idd-edge-runtime"])
    loaded = load_runtime(build_onnx_bundle(tmp_path / "bundle"), backend="onnx", onnx_threads=1)
    engine = Engine(loaded)
    settings = SettingsBox(engine.default_settings())
    window = MainWindow(
        engine, settings, cameras=[("/dev/video0", "/dev/video0 USB camera")], source_opener=lambda spec, *_: _PacedVideo(spec)
    )
    window.resize(1100, 560)
    window.show()
    try:
        assert window.model_combo.count() == 3 and window.yolo_check.isEnabled()
        assert not window.start_source(str(tmp_path / "absent.mp4"))
        assert "no such video file" in window.messages[-1]

        assert window.start_source(str(write_video(tmp_path / "clip.avi", frames=80)))
        assert _process_until(app, lambda: window.frames_shown >= 3)
        window.model_combo.setCurrentText("seg-argmax")
        window.yolo_check.setChecked(False)
        window.privacy_check.setChecked(True)
        window.alpha_slider.setValue(70)
        current = settings.get()
        assert (current.semantic, current.yolo, current.privacy, current.alpha) == ("seg-argmax", False, True, 0.7)
        window.model_combo.setCurrentText(NO_SEMANTIC)
        assert settings.get().semantic is None
        window.model_combo.setCurrentText("seg-logits")
        window.yolo_check.setChecked(True)
        shown = window.frames_shown
        assert _process_until(app, lambda: window.frames_shown >= shown + 3)
        assert _process_until(app, lambda: window.fps_label.text() != "FPS: –" and "FPS: 0.0" not in window.fps_label.text(), 5)

        shot = tmp_path / "gui.png"
        assert window.grab().save(str(shot))
        image = window.video.pixmap().toImage()
        assert image.width() > 300 and image.height() > 200
        pixels = np.array([[image.pixelColor(x, y).red() for x in range(0, image.width(), 7)] for y in range(0, image.height(), 7)])
        assert pixels.std() > 10  # a drawn frame, not an empty label
        assert shot.stat().st_size > 10_000
        if os.environ.get("IDD_EDGE_KEEP_SCREENSHOT"):
            Path(os.environ["IDD_EDGE_KEEP_SCREENSHOT"]).write_bytes(shot.read_bytes())

        assert _process_until(app, lambda: window.pipeline is None, 60)  # the clip ends; the window stays
        assert any(m.startswith("stopped: ") and "end of video" in m for m in window.messages)
    finally:
        window.close()
        loaded.close()
