"""`idd-edge-runtime --serve` as a real process on 127.0.0.1, spoken to with a real HTTP client (urllib).

The runtime plays a synthetic clip (the test bundle's ONNX models) over and over; the tests read its
status and results, switch models and settings, upload images, read the MJPEG stream, and send bad
requests, checking every time that the pipeline keeps drawing frames.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import cv2
import numpy as np
import pytest

pytest.importorskip("flask", reason="the runtime's serve extra (Flask) is not installed")
from pycocotools import mask as coco_mask  # noqa: E402

from idd_edge_runtime.engine import Engine, Settings  # noqa: E402
from idd_edge_runtime.loader import load_runtime  # noqa: E402
from tests._runtime_bundle import build_onnx_bundle, make_frame, write_video  # noqa: E402


# pycocotools' decoder under NumPy 2 warns about its own __array__; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _png_base64(image: np.ndarray) -> str:
    return base64.b64encode(cv2.imencode(".png", image)[1].tobytes()).decode("ascii")


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    bundle: Path
    token: Optional[str] = None

    def request(self, path: str, body: Any = None, raw: Optional[bytes] = None, token: Optional[str] = "default") -> Tuple[int, Dict[str, Any]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        token = self.token if token == "default" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + path, data=data, headers=headers), timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def frames(self) -> int:
        return self.request("api/status")[1]["frames"]

    def wait_frames(self, more_than: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            count = self.frames()
            if count > more_than:
                return count
            time.sleep(0.05)
        raise AssertionError(f"the pipeline stopped drawing frames (still {more_than} after {timeout} s)")


def start_server(bundle: Path, video: Path, *extra: str) -> Served:
    command = [sys.executable, "-m", "idd_edge_runtime.cli", "--bundle", str(bundle), "--serve", "--source", str(video),
               "--loop", "--port", "0", "--threads", "1", *extra]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("serving on "):
        process.kill()
        raise AssertionError(f"no 'serving on' line: {line!r} {process.communicate()[1][-2000:]}")
    return Served(line.split()[-1], process, bundle)


def stop_server(served: Served) -> str:
    served.process.terminate()
    _, stderr = served.process.communicate(timeout=20)
    assert served.process.returncode == 0, stderr[-2000:]  # SIGTERM is a clean stop (systemd's stop)
    return stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve")
    bundle = build_onnx_bundle(root / "bundle")
    served = start_server(bundle, write_video(root / "clip.avi", frames=20, moving=True, fps=25))
    try:
        served.wait_frames(2)
        yield served
    finally:
        stop_server(served)


def test_status_and_live_result(served: Served) -> None:
    deadline = time.monotonic() + 15
    while True:  # the FPS readout waits for half a second of frames (no start-up burst figure)
        code, status = served.request("api/status")
        if code != 200 or status["fps"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert code == 200 and status["models"] == ["seg-logits", "seg-argmax"] and status["instance_model"] == "yolo-tiny"
    assert status["running"] and status["inference_ms"] > 0 and status["host_ms"] > 0
    # a rate over >= 0.5 s of drawn frames: not the thousands of FPS the first burst of queued frames reads as
    assert 0 < status["fps"] < 1000
    assert status["settings"] == {"model": "seg-logits", "yolo": True, "alpha": 0.5, "privacy": False, "tracking": True, "smoothing": 0}

    code, result = served.request("api/result")
    assert code == 200 and (result["width"], result["height"]) == (160, 120)
    assert set(result["semantic_histogram"]) <= {"road", "person", "rider", "sky"} and "road" in result["semantic_histogram"]
    assert sum(result["semantic_histogram"].values()) == pytest.approx(1.0, abs=1e-3)
    persons = [i for i in result["instances"] if i["class"] == "person"]
    assert len(persons) == 2  # the still red block: two grid cells of the tiny model
    for instance in persons:
        mask = coco_mask.decode(instance["mask"])  # COCO's own decoder reads our RLE
        x0, y0, x1, y1 = instance["box"]
        assert mask.shape == (120, 160) and mask.sum() > 100
        ys, xs = np.nonzero(mask)
        assert xs.min() >= x0 - 1 and xs.max() <= x1 and ys.min() >= y0 - 1 and ys.max() <= y1
    # The still persons keep their track ids from one frame to the next.
    first = sorted(i["track_id"] for i in persons)
    served.wait_frames(served.frames() + 3)
    later = sorted(i["track_id"] for i in served.request("api/result")[1]["instances"] if i["class"] == "person")
    assert first == later and all(isinstance(t, int) for t in first)


def test_infer_an_uploaded_image_like_the_engine(served: Served) -> None:
    frame = make_frame()
    code, result = served.request("api/infer", {"image": _png_base64(frame), "model": "seg-argmax", "visualize": True})
    assert code == 200 and result["semantic_model"] == "seg-argmax"
    loaded = load_runtime(served.bundle, backend="onnx", onnx_threads=1)
    try:
        expected = Engine(loaded).infer(frame, Settings(semantic="seg-argmax", yolo=True))
    finally:
        loaded.close()
    masks = expected.detections.full_masks()
    assert len(result["instances"]) == len(masks) == 3
    for instance, box, mask in zip(result["instances"], expected.detections.boxes, masks):
        assert instance["box"] == pytest.approx(box.tolist(), abs=0.1) and instance["track_id"] is None
        assert np.array_equal(coco_mask.decode(instance["mask"]).astype(bool), mask)
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(result["image"]), np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == frame.shape and not np.array_equal(overlay, frame)
    # A data: URL, as a browser's FileReader gives it, is accepted too.
    code, _ = served.request("api/infer", {"image": "data:image/png;base64," + _png_base64(frame), "yolo": False})
    assert code == 200


def test_model_switch_and_settings(served: Served) -> None:
    code, status = served.request("api/model", {"model": "seg-argmax"})
    assert code == 200 and status["settings"]["model"] == "seg-argmax"
    served.wait_frames(served.frames() + 3)
    assert served.request("api/result")[1]["semantic_model"] == "seg-argmax"
    code, status = served.request("api/settings", {"yolo": False, "alpha": 0.25, "privacy": True, "smoothing": 3, "tracking": False})
    assert code == 200 and status["settings"] == {"model": "seg-argmax", "yolo": False, "alpha": 0.25, "privacy": True, "tracking": False, "smoothing": 3}
    served.wait_frames(served.frames() + 3)
    result = served.request("api/result")[1]
    assert all(i["track_id"] is None for i in result["instances"])  # privacy still runs YOLO, tracking is off
    code, status = served.request("api/model", {"model": None})
    assert code == 200 and status["settings"]["model"] is None
    served.request("api/model", {"model": "seg-logits"})
    served.request("api/settings", {"yolo": True, "alpha": 0.5, "privacy": False, "smoothing": 0, "tracking": True})


@pytest.mark.parametrize(
    "path, body, raw, code, message",
    [
        ("api/model", {"model": "nope"}, None, 404, "no semantic model 'nope'; loaded: ['seg-logits', 'seg-argmax']"),
        ("api/model", {"name": "x"}, None, 400, 'expected {"model": NAME}'),
        ("api/model", None, b"{not json", 400, "the body must be a JSON object"),
        ("api/settings", {"alpha": 3}, None, 400, "alpha must be within 0..1, got 3"),
        ("api/settings", {"yolo": 1}, None, 400, "yolo must be true/false, got 1"),
        ("api/settings", {"smoothing": True}, None, 400, "smoothing must be a number, got true"),
        ("api/settings", {"fast": True}, None, 400, "unknown setting 'fast'"),
        ("api/infer", {"image": "!!not base64"}, None, 400, '"image" is not valid base64'),
        ("api/infer", {"image": base64.b64encode(b"GIF89a junk").decode()}, None, 400, "are not an image OpenCV can read"),
        ("api/infer", {"image": ""}, None, 400, '"image" must be a base64 string'),
        ("api/infer", {"image": _png_base64(make_frame()), "model": "nope"}, None, 404, "no semantic model 'nope'"),
        ("api/infer", None, b"x" * (17 << 20), 413, "Request Entity Too Large"),
        ("api/nothing", None, None, 404, "Not Found"),
    ],
)
def test_bad_requests_get_a_4xx_message_and_the_pipeline_goes_on(served: Served, path, body, raw, code, message) -> None:
    before = served.frames()
    got, answer = served.request(path, body, raw)
    assert got == code and message in answer["error"]
    served.wait_frames(before)
    assert served.process.poll() is None


def test_mjpeg_stream_and_frame(served: Served) -> None:
    with urllib.request.urlopen(served.url + "stream.mjpg", timeout=30) as response:
        assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
        images = []
        while len(images) < 3:
            assert response.readline() == b"--frame\r\n"
            headers = {}
            while (line := response.readline()) != b"\r\n":
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            images.append(cv2.imdecode(np.frombuffer(response.read(int(headers["content-length"])), np.uint8), cv2.IMREAD_COLOR))
            response.readline()
    assert all(image.shape == (120, 160, 3) for image in images)
    assert not np.array_equal(images[0], images[-1])  # the car moves: the stream is live, not one frame repeated
    with urllib.request.urlopen(served.url + "frame.jpg", timeout=30) as response:
        assert response.headers["Content-Type"] == "image/jpeg" and len(response.read()) > 1000
    with urllib.request.urlopen(served.url, timeout=30) as response:
        page = response.read().decode()
    assert 'id="live"' in page and "stream.mjpg" in page and "api/settings" in page


def test_token_is_required_on_every_route(tmp_path: Path) -> None:
    bundle = build_onnx_bundle(tmp_path / "bundle")
    served = start_server(bundle, write_video(tmp_path / "clip.avi", frames=5), "--token", "s3cret")
    try:
        served.token = "s3cret"
        served.wait_frames(0)
        for path in ("", "api/status", "api/result", "frame.jpg", "stream.mjpg"):
            for token in (None, "wrong"):
                request = urllib.request.Request(served.url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(request, timeout=10)
                assert refused.value.code == 401 and b"missing or wrong token" in refused.value.read()
        assert served.request("api/model", {"model": "seg-argmax"}, token="wrong")[0] == 401
        assert served.request("api/status")[1]["settings"]["model"] == "seg-logits"  # the refused switch did nothing
        with urllib.request.urlopen(served.url + "frame.jpg?token=s3cret", timeout=10) as response:
            assert response.status == 200  # the page's <img> and stream carry it in the URL
        # A viewer still watching the stream when the service stops: a clean exit all the same (stop_server checks 0).
        watching = urllib.request.urlopen(served.url + "stream.mjpg?token=s3cret", timeout=10)
        assert watching.readline() == b"--frame\r\n"
    finally:
        stop_server(served)


def test_refuses_to_serve_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    bundle = build_onnx_bundle(tmp_path / "bundle")
    video = write_video(tmp_path / "clip.avi", frames=3)
    env = {k: v for k, v in os.environ.items() if k != "IDD_EDGE_TOKEN"}
    completed = subprocess.run(
        [sys.executable, "-m", "idd_edge_runtime.cli", "--bundle", str(bundle), "--serve", "--source", str(video), "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert completed.returncode == 2 and "--host 0.0.0.0 is reachable from other machines: set --token" in completed.stderr
