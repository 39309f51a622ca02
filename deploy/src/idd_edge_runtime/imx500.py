"""Semantic segmentation on the Raspberry Pi AI Camera (Sony IMX500): the sensor runs the network itself.

The bundle ships the converter's `packerOut.zip` (manifest format "imx500"); on the Pi, once:

    sudo apt install imx500-all imx500-tools
    imx500-package -i models/<name>_imx500_packerOut.zip -o rpk/<name>     # writes rpk/<name>/network.rpk

Then `Imx500Camera(entry, "rpk/<name>/network.rpk")` loads the network onto the sensor through picamera2's
IMX500 device API (`picamera2.devices.IMX500(network_file)`, before `Picamera2(imx500.camera_num)` is
created, as picamera2 requires) and `read()` returns each camera frame with the sensor's label map:
`IMX500.get_outputs(metadata)` gives the network's float32 output tensors (None until the first inference
arrives); the first is the C x H x W logits of the manifest's classes, argmax'ed here, as the host does for
an ONNX model. No host preprocessing: the sensor feeds the network its own pixels (resized to the input
size by the ISP, the first layer normalises them).

picamera2 exists only on Raspberry Pi OS (`sudo apt install python3-picamera2`); it is imported lazily so
the rest of the runtime never needs it.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import numpy as np

from idd_edge_runtime.backends import BackendError
from idd_edge_runtime.manifest import ModelEntry

RPK_HINT = "make one on the Pi with `imx500-package -i <packerOut.zip> -o <dir>` (apt package imx500-tools)"


def logits_to_labels(outputs: Any, entry: ModelEntry) -> Optional[np.ndarray]:
    """(H, W) class ids from `IMX500.get_outputs(metadata)`, or None when the frame carries no inference yet.

    The first output must hold one score per class and pixel: C x H x W (the exported graph's layout) or
    H x W x C, with or without a batch dimension of 1."""
    if outputs is None:
        return None
    if not len(outputs):
        raise BackendError(f"{entry.label}: the IMX500 returned no output tensor")
    logits = np.asarray(outputs[0])
    if logits.ndim == 4 and logits.shape[0] == 1:
        logits = logits[0]
    classes, height, width = len(entry.classes), entry.input.height, entry.input.width
    if logits.shape == (classes, height, width):
        return logits.argmax(axis=0)
    if logits.shape == (height, width, classes):
        return logits.argmax(axis=-1)
    raise BackendError(f"{entry.label}: the IMX500 output is {logits.shape}, expected ({classes}, {height}, {width}) logits "
                       "(was the .rpk packaged from this bundle's packerOut.zip?)")


class Imx500Camera:
    """The AI Camera with one of the bundle's IMX500 networks loaded: frames plus on-sensor label maps."""

    backend = "imx500"

    def __init__(self, entry: ModelEntry, rpk_path: "str | os.PathLike[str]", frame_size: Tuple[int, int] = (640, 480),
                 devices: Any = None, picamera2: Any = None):
        if not entry.is_imx500:
            raise BackendError(f"{entry.label}: not an IMX500 network")
        if not os.path.isfile(rpk_path):
            raise BackendError(f"{entry.label}: {rpk_path} not found; {RPK_HINT}")
        if devices is None or picamera2 is None:
            try:
                import picamera2 as picamera2_module
                from picamera2 import devices as devices_module
            except ImportError:
                raise BackendError(f"{entry.label}: picamera2 is not installed (Raspberry Pi OS: "
                                   "`sudo apt install python3-picamera2 imx500-all`)") from None
            devices, picamera2 = devices or devices_module, picamera2 or picamera2_module
        self.entry = entry
        # The network firmware goes to the sensor before the camera is opened (picamera2's documented order).
        self._imx500 = devices.IMX500(os.fspath(rpk_path))
        width, height = self._imx500.get_input_size()
        if (width, height) != (entry.input.width, entry.input.height):
            raise BackendError(f"{entry.label}: {rpk_path} takes {width}x{height} input but the manifest says "
                               f"{entry.input.width}x{entry.input.height}: package this bundle's packerOut.zip")
        self._camera = picamera2.Picamera2(self._imx500.camera_num)
        config = self._camera.create_preview_configuration(main={"size": tuple(frame_size), "format": "RGB888"})
        self._camera.start(config)

    def read(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """One frame (H, W, 3 as picamera2 gives it) and the sensor's (h, w) label map (None until the first
        inference result arrives with a frame)."""
        request = self._camera.capture_request()
        try:
            frame = request.make_array("main")
            labels = logits_to_labels(self._imx500.get_outputs(request.get_metadata(), add_batch=False), self.entry)
        finally:
            request.release()
        return frame, labels

    def close(self) -> None:
        if self._camera is not None:
            self._camera.stop()
            self._camera.close()
            self._camera = None
