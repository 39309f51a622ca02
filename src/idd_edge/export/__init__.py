"""Deployment stages: ONNX export, calibration sets, INT8 quantization, Hailo HEF compilation and the
accuracy gate that decides which models go into the device bundle."""
