"""The live page in a real headless browser (Debian's chromium) against a real `--serve` process.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ended
by NUL on fds 3 and 4), so no WebDriver or websocket package is needed. Two screenshots a second apart
must show different overlay pictures (the clip's car moves; the second is retried for up to 15 s on a
loaded machine), and a control of the page must change the
runtime's settings. Without chromium the test skips locally and FAILS in CI (`.ci/run` installs it).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import cv2
import numpy as np
import pytest

pytest.importorskip("flask", reason="the runtime's serve extra (Flask) is not installed")
from tests._runtime_bundle import build_onnx_bundle, write_video  # noqa: E402
from tests.test_runtime_server import Served, start_server, stop_server  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = "no chromium installed (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test: {reason}")
    pytest.skip(reason)


class DevTools:
    """A headless chromium and its DevTools protocol over the two pipes."""

    def __init__(self, executable: str, profile: Path):
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()

        def wire_fds() -> None:  # in the child: the protocol's fixed descriptors 3 (commands) and 4 (replies)
            high_read, high_write = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_read, from_browser_write))
            os.dup2(high_read, 3)  # via fds >= 10, so neither dup2 overwrites the other's source
            os.dup2(high_write, 4)

        command = [executable, "--headless=new", "--remote-debugging-pipe", "--no-first-run", "--disable-gpu",
                   "--no-sandbox",  # root in CI containers; the page is our own, from 127.0.0.1
                   "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1000,700", "about:blank"]  # fmt: skip
        self.process = subprocess.Popen(
            command, preexec_fn=wire_fds, pass_fds=(3, 4),  # kept open after wire_fds (close_fds runs after it)
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0

    def send(self, method: str, session: str | None = None, **params: Any) -> Dict[str, Any]:
        self._next_id += 1
        message: Dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:  # events arrive in between: skip to our reply
            while b"\0" not in self._buffer:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise AssertionError(f"chromium closed the DevTools pipe: {self.process.stderr.read()[-2000:]!r}")  # type: ignore[union-attr]
                self._buffer += chunk
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, session: str, expression: str) -> Any:
        return self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        os.close(self._write)
        os.close(self._read)
        self.process.terminate()
        self.process.wait(20)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    devtools = DevTools(_browser(), tmp_path / "profile")
    try:
        yield devtools
    finally:
        devtools.close()


def _wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _overlay(browser: DevTools, session: str, tmp_path: Path, name: str) -> np.ndarray:
    """The live <img>'s pixels as the browser painted them (a screenshot of its box), saved to tmp_path."""
    box = browser.evaluate(session, "JSON.stringify(document.getElementById('live').getBoundingClientRect())")
    rect = json.loads(box)
    shot = browser.send("Page.captureScreenshot", session, format="png")
    png = base64.b64decode(shot["data"])
    (tmp_path / name).write_bytes(png)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    x, y, w, h = (int(round(rect[k])) for k in ("x", "y", "width", "height"))
    return image[y : y + h, x : x + w]


def test_live_page_updates_and_its_controls_work(browser: DevTools, tmp_path: Path) -> None:
    bundle = build_onnx_bundle(tmp_path / "bundle")
    served: Served = start_server(bundle, write_video(tmp_path / "clip.avi", frames=23, moving=True, fps=25))
    try:
        target = browser.send("Target.createTarget", url=served.url)["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        _wait_for(lambda: (browser.evaluate(session, "document.getElementById('live').naturalWidth") or 0) > 0)
        _wait_for(lambda: "FPS" in browser.evaluate(session, "document.getElementById('fps').textContent")
                  and "inference" in browser.evaluate(session, "document.getElementById('split').textContent"))  # fmt: skip
        browser.send("Page.bringToFront", session)  # a background tab may not repaint its <img>
        first = _overlay(browser, session, tmp_path, "first.png")
        assert first.shape[0] > 300 and first.shape[1] > 400  # the 160x120 clip scaled to the page's width
        assert first.std() > 20  # a drawn overlay, not an empty box
        # A second moment: the car has moved. On a loaded machine the stream may lag, so look a few times.
        deadline, changed = time.monotonic() + 15, 0.0
        while changed <= 0.01 and time.monotonic() < deadline:
            time.sleep(1.0)
            second = _overlay(browser, session, tmp_path, "second.png")
            # The box's fractional edges may round to one pixel more or less from one moment to the next.
            assert abs(first.shape[0] - second.shape[0]) <= 1 and abs(first.shape[1] - second.shape[1]) <= 1
            rows, cols = min(first.shape[0], second.shape[0]), min(first.shape[1], second.shape[1])
            changed = float((np.abs(first[:rows, :cols].astype(np.int16) - second[:rows, :cols].astype(np.int16)).max(axis=2) > 40).mean())
        assert changed > 0.01, f"the overlay did not update within 15 s ({100 * changed:.2f}% of its pixels changed)"

        browser.evaluate(session, "const m = document.getElementById('model'); m.value = 'seg-argmax'; m.dispatchEvent(new Event('change'));")
        _wait_for(lambda: served.request("api/status")[1]["settings"]["model"] == "seg-argmax")
        browser.evaluate(session, "const y = document.getElementById('yolo'); y.checked = false; y.dispatchEvent(new Event('change'));")
        _wait_for(lambda: served.request("api/status")[1]["settings"]["yolo"] is False)
        _wait_for(lambda: browser.evaluate(session, "document.getElementById('model').value") == "seg-argmax")
    finally:
        stop_server(served)
