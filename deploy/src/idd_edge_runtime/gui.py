"""PyQt5 window like the seed's Pi app: video or camera input, model switch, YOLO toggle, privacy,
overlay alpha slider and an FPS readout. The pipeline threads do the work; the window only shows the
newest annotated frame (delivered through a queued Qt signal) and writes the user's choices into the
shared SettingsBox, so a switch takes effect on the next frame.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable, List, Optional, Tuple

import cv2
import numpy as np
from PyQt5 import QtCore, QtGui, QtWidgets

from idd_edge_runtime.engine import Engine, FrameResult, SettingsBox
from idd_edge_runtime.pipeline import Pipeline
from idd_edge_runtime.sources import SourceError, discover_sources, open_source

NO_SEMANTIC = "(none)"


class MainWindow(QtWidgets.QMainWindow):
    frame_ready = QtCore.pyqtSignal()
    message = QtCore.pyqtSignal(str)

    def __init__(
        self,
        engine: Engine,
        settings: SettingsBox,
        cameras: Optional[List[Tuple[str, str]]] = None,
        source_opener: Callable[..., object] = open_source,
        capture_size: Tuple[Optional[int], Optional[int]] = (None, None),
    ):
        super().__init__()
        self.engine, self.settings = engine, settings
        self._open_source = source_opener
        self._capture_size = capture_size
        self.pipeline: Optional[Pipeline] = None
        self._source: Optional[object] = None
        self._latest: Optional[np.ndarray] = None
        self._latest_lock = threading.Lock()
        self.frames_shown = 0
        self.messages: List[str] = []
        self.setWindowTitle(f"idd-edge — bundle {engine.loaded.manifest.version}")
        self._build(cameras if cameras is not None else discover_sources())
        self.frame_ready.connect(self._show_latest, QtCore.Qt.QueuedConnection)
        self.message.connect(self._show_message, QtCore.Qt.QueuedConnection)
        self._timer = QtCore.QTimer(self)
        self._timer.timeout.connect(self._poll)
        self._timer.start(200)
        for note in engine.loaded.messages():
            self._show_message(note)

    # ------------------------------------------------------------------------------ layout
    def _build(self, cameras: List[Tuple[str, str]]) -> None:
        self.video = QtWidgets.QLabel("Open a video or start a camera")
        self.video.setAlignment(QtCore.Qt.AlignCenter)
        self.video.setMinimumSize(640, 360)
        self.video.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Expanding)
        self.video.setStyleSheet("background: #202020; color: #d0d0d0;")

        self.open_button = QtWidgets.QPushButton("Open video…")
        self.open_button.clicked.connect(self._choose_video)
        self.camera_combo = QtWidgets.QComboBox()
        for spec, description in cameras:
            self.camera_combo.addItem(description, spec)
        self.camera_button = QtWidgets.QPushButton("Start camera")
        self.camera_button.setEnabled(bool(cameras))
        self.camera_button.clicked.connect(lambda: self.start_source(self.camera_combo.currentData()))
        self.stop_button = QtWidgets.QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)

        current = self.settings.get()
        self.model_combo = QtWidgets.QComboBox()
        self.model_combo.addItems(self.engine.semantic_names + [NO_SEMANTIC])
        self.model_combo.setCurrentText(current.semantic or NO_SEMANTIC)
        self.model_combo.currentTextChanged.connect(self._model_changed)
        self.yolo_check = QtWidgets.QCheckBox("YOLO instance overlay")
        self.yolo_check.setChecked(current.yolo and self.engine.has_instance)
        self.yolo_check.setEnabled(self.engine.has_instance)
        self.yolo_check.toggled.connect(lambda on: self.settings.update(yolo=bool(on)))
        self.privacy_check = QtWidgets.QCheckBox("Privacy: blur people")
        self.privacy_check.setChecked(current.privacy)
        self.privacy_check.toggled.connect(lambda on: self.settings.update(privacy=bool(on)))
        self.alpha_slider = QtWidgets.QSlider(QtCore.Qt.Horizontal)
        self.alpha_slider.setRange(0, 100)
        self.alpha_slider.setValue(int(round(current.alpha * 100)))
        self.alpha_label = QtWidgets.QLabel()
        self.alpha_slider.valueChanged.connect(self._alpha_changed)
        self._alpha_changed(self.alpha_slider.value())
        self.fps_label = QtWidgets.QLabel("FPS: –")
        font = self.fps_label.font()
        font.setPointSize(font.pointSize() + 4)
        font.setBold(True)
        self.fps_label.setFont(font)

        panel = QtWidgets.QFormLayout()
        panel.addRow(self.open_button)
        panel.addRow("Camera", self.camera_combo)
        panel.addRow(self.camera_button)
        panel.addRow(self.stop_button)
        panel.addRow("Semantic model", self.model_combo)
        panel.addRow(self.yolo_check)
        panel.addRow(self.privacy_check)
        panel.addRow(self.alpha_label, self.alpha_slider)
        panel.addRow(self.fps_label)
        side = QtWidgets.QWidget()
        side.setLayout(panel)
        side.setFixedWidth(300)

        layout = QtWidgets.QHBoxLayout()
        layout.addWidget(self.video, 1)
        layout.addWidget(side)
        central = QtWidgets.QWidget()
        central.setLayout(layout)
        self.setCentralWidget(central)
        self.statusBar().showMessage(self.engine.loaded.describe())

    # ------------------------------------------------------------------------------ controls
    def _model_changed(self, text: str) -> None:
        self.settings.update(semantic=None if text == NO_SEMANTIC else text)

    def _alpha_changed(self, value: int) -> None:
        self.settings.update(alpha=value / 100.0)
        self.alpha_label.setText(f"Alpha {value / 100:.2f}")

    def _choose_video(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open video", os.getcwd(), "Videos (*.mp4 *.avi *.mkv *.mov);;All files (*)")
        if path:
            self.start_source(path)

    def start_source(self, spec: Optional[str]) -> bool:
        """Stop the running source (if any) and start `spec`; a source that fails to open is reported."""
        if not spec:
            return False
        self.stop()
        try:
            self._source = self._open_source(spec, *self._capture_size)
        except SourceError as exc:
            self._show_message(str(exc))
            return False
        self.pipeline = Pipeline(
            self.engine, self._source, self.settings, on_frame=self._on_frame, on_message=self.message.emit, banner=False
        )
        self.pipeline.start()
        self._show_message(f"playing {spec}")
        return True

    def stop(self) -> None:
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline.wait(5)
            self.pipeline = None
        if self._source is not None:
            self._source.close()  # type: ignore[attr-defined]
            self._source = None

    # ------------------------------------------------------------------------------ frames
    def _on_frame(self, frame: np.ndarray, _result: FrameResult) -> None:
        # Called in the drawing thread: keep only the newest frame and let the GUI thread pick it up.
        with self._latest_lock:
            self._latest = frame
        self.frame_ready.emit()

    def _show_latest(self) -> None:
        with self._latest_lock:
            frame, self._latest = self._latest, None
        if frame is None:
            return
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        image = QtGui.QImage(rgb.data, width, height, 3 * width, QtGui.QImage.Format_RGB888).copy()
        pixmap = QtGui.QPixmap.fromImage(image).scaled(self.video.size(), QtCore.Qt.KeepAspectRatio, QtCore.Qt.SmoothTransformation)
        self.video.setPixmap(pixmap)
        self.frames_shown += 1

    def _show_message(self, text: str) -> None:
        self.messages.append(text)
        self.statusBar().showMessage(text, 10_000)

    def _poll(self) -> None:
        pipeline = self.pipeline
        if pipeline is None:
            return
        self.fps_label.setText(f"FPS: {pipeline.fps:.1f}")
        if pipeline.wait(0):
            self._show_message("stopped: " + (pipeline.failure or "end of video"))
            self.pipeline = None
            if self._source is not None:
                self._source.close()  # type: ignore[attr-defined]
                self._source = None

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        self.stop()
        super().closeEvent(event)


def run_gui(engine: Engine, settings: SettingsBox, source: Optional[str] = None, width: Optional[int] = None, height: Optional[int] = None) -> int:
    if not any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")):
        print("idd-edge-runtime: error: no display; use --headless (or set QT_QPA_PLATFORM)", file=sys.stderr)
        return 2
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    window = MainWindow(engine, settings, capture_size=(width, height))
    window.resize(1280, 720)
    window.show()
    if source:
        window.start_source(source)
    code = app.exec_()
    window.stop()
    return int(code)
