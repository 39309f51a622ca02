"""idd-edge device runtime: loads a bundle and runs semantic + YOLO overlays (Hailo or ONNX Runtime).

This package is installed on the device on its own: it depends on numpy and OpenCV only and must
never import torch or the training package.
"""

__version__ = "0.1.0"
