"""`idd-edge-runtime --serve`: the pipeline and a small HTTP server in one process (Flask, the `serve` extra).

    GET  /              the live page: overlay, FPS split, model switch, YOLO, alpha, privacy, tracking, smoothing
    GET  /stream.mjpg   the annotated frames as MJPEG (multipart/x-mixed-replace), for the page, VLC or ffplay
    GET  /frame.jpg     the latest annotated frame
    GET  /api/status    models, settings, FPS, inference vs host ms, frames, source state, last messages
    POST /api/model     {"model": NAME or null}: switch the semantic model (null: no semantic overlay)
    POST /api/settings  any of {"yolo", "alpha", "privacy", "tracking", "smoothing"}
    GET  /api/result    the latest frame's instances (class, score, box, track id, COCO RLE mask) + class histogram
    POST /api/infer     {"image": base64 JPEG/PNG, "model"?, "yolo"?, "visualize"?}: the same JSON for one image

Requests run in the server's threads and only read the pipeline's latest output or change its settings,
so a bad request gets a 4xx JSON {"error": ...} and the pipeline threads never see it. Bound to anything
but loopback, a token is required (header `Authorization: Bearer TOKEN`, or `?token=` for the page and
the stream, which a browser requests without headers); it is compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hmac
import ipaddress
import json
import logging
import signal
import statistics
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Deque, Dict, Iterator, Optional, Tuple

import cv2
import numpy as np
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from idd_edge_runtime import rle
from idd_edge_runtime.engine import Engine, FrameResult, SettingsBox
from idd_edge_runtime.pipeline import Pipeline
from idd_edge_runtime.preprocess import check_frame

PAGE = Path(__file__).with_name("web") / "index.html"
#: Largest upload /api/infer accepts (a 4K JPEG is ~3 MB; base64 adds a third).
MAX_UPLOAD_BYTES = 16 << 20
JPEG_QUALITY = 80
#: FPS split and timings are averaged over this many recent frames.
TIMING_WINDOW = 30
SETTING_TYPES = {"yolo": bool, "privacy": bool, "tracking": bool, "alpha": (int, float), "smoothing": int}


class RequestError(Exception):
    """A bad request: answered with `status` and a JSON message, nothing else happens."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LiveFrames:
    """The drawing thread's latest annotated frame and result, handed to any number of HTTP readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.sequence = 0
        self.frame: Optional[np.ndarray] = None
        self.result: Optional[FrameResult] = None
        self.timings: Deque[Tuple[float, float]] = collections.deque(maxlen=TIMING_WINDOW)
        self.messages: Deque[str] = collections.deque(maxlen=10)
        self.closed = False
        self.streams = 0  # MJPEG responses being written

    def close(self, timeout: float = 5.0) -> None:
        """End every MJPEG stream and wait for them: a daemon thread still inside OpenCV while the
        interpreter exits aborts the process (C++ terminate), which systemd would count as a failure."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.streams == 0, timeout)

    def publish(self, annotated: np.ndarray, result: FrameResult) -> None:
        with self._cond:
            self.frame, self.result = annotated, result
            self.timings.append((result.timings.inference_ms, result.timings.host_ms))
            self.sequence += 1
            self._cond.notify_all()

    def latest(self) -> Tuple[int, Optional[np.ndarray], Optional[FrameResult]]:
        with self._cond:
            return self.sequence, self.frame, self.result

    def wait_newer(self, sequence: int, timeout: float) -> Tuple[int, Optional[np.ndarray]]:
        with self._cond:
            self._cond.wait_for(lambda: self.sequence > sequence or self.closed, timeout)
            return self.sequence, self.frame

    def stream_started(self) -> bool:
        with self._cond:
            if not self.closed:
                self.streams += 1
            return not self.closed

    def stream_ended(self) -> None:
        with self._cond:
            self.streams -= 1
            self._cond.notify_all()

    def mean_timings(self) -> Dict[str, Optional[float]]:
        with self._cond:
            recent = list(self.timings)
        if not recent:
            return {"inference_ms": None, "host_ms": None}
        return {"inference_ms": statistics.fmean(t[0] for t in recent), "host_ms": statistics.fmean(t[1] for t in recent)}


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode the frame as JPEG")
    return data.tobytes()


def result_json(result: FrameResult, engine: Engine) -> Dict[str, Any]:
    """Instances (COCO RLE masks in frame pixels, track ids) and the semantic class histogram of one frame."""
    height, width = result.frame.shape[:2]
    instances = []
    detections = result.detections
    instance = engine.loaded.instance
    if detections is not None and instance is not None:
        names = instance.class_names
        for i in range(len(detections)):
            class_id = int(detections.class_ids[i])
            track = None if result.track_ids is None or result.track_ids[i] < 0 else int(result.track_ids[i])
            instances.append({
                "class_id": class_id,
                "class": names[class_id] if class_id < len(names) else str(class_id),
                "score": round(float(detections.scores[i]), 4),
                "box": [round(float(v), 1) for v in detections.boxes[i]],
                "track_id": track,
                "mask": rle.encode_region(detections.masks[i], detections.mask_regions[i], (height, width)),
            })  # fmt: skip
    histogram = None
    model = result.semantic_model
    shown = result.shown_labels
    if shown is not None and model is not None:
        counts = np.bincount(shown.ravel(), minlength=len(model.class_names))
        total = max(int(counts.sum()), 1)
        histogram = {name: round(int(counts[i]) / total, 5) for i, name in enumerate(model.class_names) if counts[i]}
    timings = result.timings
    return {
        "frame": result.index,
        "width": width,
        "height": height,
        "semantic_model": model.name if model is not None else None,
        "instance_model": instance.name if detections is not None and instance is not None else None,
        "instances": instances,
        "semantic_histogram": histogram,
        "timings_ms": {"inference": timings.inference_ms, "host": timings.host_ms},
        "errors": list(result.errors),
    }


def _json_body() -> Dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise RequestError(f"{request.path}: the body must be a JSON object (Content-Type: application/json)")
    return data


def _decode_image(text: object) -> np.ndarray:
    if not isinstance(text, str) or not text:
        raise RequestError('/api/infer: "image" must be a base64 string of a JPEG or PNG')
    if text.startswith("data:"):
        text = text.partition(",")[2]  # a data: URL as a browser's FileReader makes it
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError('/api/infer: "image" is not valid base64') from None
    image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR) if raw else None
    if image is None:
        raise RequestError(f"/api/infer: the {len(raw)} decoded bytes are not an image OpenCV can read (JPEG, PNG, BMP, ...)")
    try:
        return check_frame(image)
    except ValueError as exc:
        raise RequestError(f"/api/infer: {exc}") from None


def create_app(engine: Engine, settings: SettingsBox, live: LiveFrames, pipeline: Any = None, token: Optional[str] = None) -> Flask:
    """The Flask app over a running pipeline (`pipeline` gives FPS and state; None when there is none)."""
    app = Flask("idd_edge_runtime")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES

    @app.before_request
    def check_token() -> None:
        if token is None:
            return
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else request.args.get("token", "")
        if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            raise RequestError("missing or wrong token (Authorization: Bearer TOKEN, or ?token=TOKEN)", 401)

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError) -> Tuple[Response, int]:
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Tuple[Response, int]:
        return jsonify(error=f"{request.path}: {exc.name}: {exc.description}"), exc.code or 500

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Tuple[Response, int]:
        app.logger.exception("request %s failed", request.path)
        return jsonify(error=f"{request.path}: internal error: {type(exc).__name__}: {exc}"), 500

    @app.get("/")
    def page() -> Response:
        return Response(PAGE.read_text(encoding="utf-8"), mimetype="text/html")

    @app.get("/frame.jpg")
    def frame() -> Response:
        _, image, _ = live.latest()
        if image is None:
            raise RequestError("no frame yet: the pipeline has not drawn one", 503)
        return Response(jpeg(image), mimetype="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/stream.mjpg")
    def stream() -> Response:
        def parts() -> Iterator[bytes]:
            if not live.stream_started():
                return
            try:
                sequence = 0
                while not live.closed:
                    sequence, image = live.wait_newer(sequence, timeout=5.0)
                    if image is None or live.closed:
                        continue
                    data = jpeg(image)
                    yield b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n"
            finally:  # also when the client went away (werkzeug closes the generator)
                live.stream_ended()

        return Response(parts(), mimetype="multipart/x-mixed-replace; boundary=frame", headers={"Cache-Control": "no-store"})

    def status() -> Dict[str, Any]:
        current = settings.get()
        instance = engine.loaded.instance
        return {
            "bundle_version": engine.loaded.manifest.version,
            "models": engine.semantic_names,
            "instance_model": instance.name if instance is not None else None,
            "settings": {
                "model": current.semantic, "yolo": current.yolo, "alpha": current.alpha, "privacy": current.privacy,
                "tracking": current.tracking, "smoothing": current.smoothing,
            },  # fmt: skip
            "fps": round(pipeline.fps, 2) if pipeline is not None else None,
            "frames": live.sequence,
            **{key: (round(v, 2) if v is not None else None) for key, v in live.mean_timings().items()},
            "source": getattr(getattr(pipeline, "source", None), "name", None),
            "running": pipeline is not None and not pipeline.finished,
            "failure": getattr(pipeline, "failure", None),
            "messages": list(live.messages),
        }

    @app.get("/api/status")
    def api_status() -> Response:
        return jsonify(status())

    @app.post("/api/model")
    def api_model() -> Response:
        data = _json_body()
        if "model" not in data:
            raise RequestError('/api/model: expected {"model": NAME} (or null for no semantic overlay)')
        name = data["model"]
        if name is not None and name not in engine.semantic_names:
            raise RequestError(f"/api/model: no semantic model {name!r}; loaded: {engine.semantic_names}", 404)
        settings.update(semantic=name)
        return jsonify(status())

    @app.post("/api/settings")
    def api_settings() -> Response:
        data = _json_body()
        changes: Dict[str, Any] = {}
        for key, value in data.items():
            expected = SETTING_TYPES.get(key)
            if expected is None:
                raise RequestError(f"/api/settings: unknown setting {key!r}; known: {sorted(SETTING_TYPES)}")
            # bool is an int in Python: a JSON true must not pass as a number or the reverse.
            if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
                raise RequestError(f"/api/settings: {key} must be {'true/false' if expected is bool else 'a number'}, got {json.dumps(value)}")
            changes[key] = value
        if "alpha" in changes and not 0.0 <= changes["alpha"] <= 1.0:
            raise RequestError(f"/api/settings: alpha must be within 0..1, got {changes['alpha']}")
        if "smoothing" in changes and not 0 <= changes["smoothing"] <= 255:
            raise RequestError(f"/api/settings: smoothing must be 0..255 frames, got {changes['smoothing']}")
        settings.update(**changes)
        return jsonify(status())

    @app.get("/api/result")
    def api_result() -> Response:
        _, _, result = live.latest()
        if result is None:
            raise RequestError("no frame yet: the pipeline has not drawn one", 503)
        return jsonify(result_json(result, engine))

    @app.post("/api/infer")
    def api_infer() -> Response:
        data = _json_body()
        image = _decode_image(data.get("image"))
        current = settings.get()
        name = data.get("model", current.semantic)
        if name is not None and name not in engine.semantic_names:
            raise RequestError(f"/api/infer: no semantic model {name!r}; loaded: {engine.semantic_names}", 404)
        yolo = data.get("yolo", engine.has_instance)
        if not isinstance(yolo, bool):
            raise RequestError(f"/api/infer: yolo must be true/false, got {json.dumps(yolo)}")
        result = engine.infer(image, replace(current, semantic=name, yolo=yolo))  # no stream memory: one image has no past
        answer = result_json(result, engine)
        if data.get("visualize"):
            answer["image"] = base64.b64encode(jpeg(engine.render(result))).decode("ascii")
        return jsonify(answer)

    return app


def serve(engine: Engine, settings: SettingsBox, source: Any, host: str, port: int, token: Optional[str], max_frames: Optional[int] = None) -> int:
    """Run the pipeline on `source` and serve it until SIGTERM/Ctrl-C; 1 when a pipeline thread failed.

    A failed pipeline ends the process (non-zero), so systemd's Restart=on-failure starts it afresh; a video
    file that ends leaves the last frame on show.
    """
    if token is None and not is_loopback(host):
        print(f"idd-edge-runtime: error: --host {host} is reachable from other machines: set --token (or IDD_EDGE_TOKEN)", file=sys.stderr)
        return 2
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a log line per request (the page polls every second)
    live = LiveFrames()

    def on_message(text: str) -> None:
        live.messages.append(text)
        print(text, file=sys.stderr, flush=True)

    pipeline = Pipeline(engine, source, settings, on_frame=live.publish, on_message=on_message, max_frames=max_frames)
    try:
        server = make_server(host, port, create_app(engine, settings, live, pipeline, token), threaded=True)
    except OSError as exc:
        print(f"idd-edge-runtime: error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    http = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    pipeline.start()
    http.start()
    print(f"serving on http://{host}:{server.port}/", flush=True)
    try:
        while not stop.wait(0.5):
            if pipeline.failure:
                break
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.shutdown()
        live.close()
        pipeline.stop()
        pipeline.wait(5)
    return 1 if pipeline.failure else 0
