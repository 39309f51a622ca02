"""The model formats of the project, once: what the pipeline's stages name their files, what the accuracy
gate calls each format, what the bundle manifest says and how the device feeds it.

Lives in the runtime package because both sides read it: the pipeline (`idd_edge.export`, `idd_edge.bundle`)
imports the runtime, the runtime never imports the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class ModelFormat:
    manifest: str  # the manifest's `format` of a bundle entry
    gate: str  # the accuracy gate's key for this format's evaluation (quantization.json)
    stage_file: str  # the file its stage writes per model: export/<name>/model.onnx, ...
    bundle_suffix: str  # the bundle's copy: models/<name><bundle_suffix>
    layout: str  # the input tensor the device feeds it
    dtype: str
    host_normalises: bool  # False: normalisation is part of the model (a HEF does it on the chip)


ONNX_FP32 = ModelFormat("onnx", "onnx_fp32", "model.onnx", ".onnx", "NCHW", "float32", True)
ONNX_INT8 = ModelFormat("onnx-int8", "onnx_int8", "model_int8.onnx", "_int8.onnx", "NCHW", "float32", True)
HEF = ModelFormat("hef", "hailo_emulation", "model.hef", ".hef", "NHWC", "uint8", False)
# Sony IMX500 (Raspberry Pi AI Camera): the converter's packerOut.zip, turned into the sensor's .rpk by
# `imx500-package` on the Pi; the sensor feeds the network raw pixels, its first layer normalises.
IMX500 = ModelFormat("imx500", "imx500_quantized", "packerOut.zip", "_imx500_packerOut.zip", "NCHW", "uint8", False)

#: Every format, in the order the bundle lists a model's entries (the device prefers them in this order).
MODEL_FORMATS: Tuple[ModelFormat, ...] = (HEF, ONNX_INT8, ONNX_FP32)
#: Formats that run on the camera sensor itself: bundled beside the others, but opened by their camera
#: (`idd_edge_runtime.imx500`), never by the loader's frame-by-frame backends.
SENSOR_FORMATS: Tuple[ModelFormat, ...] = (IMX500,)
ALL_FORMATS: Tuple[ModelFormat, ...] = MODEL_FORMATS + SENSOR_FORMATS
BY_MANIFEST_NAME: Dict[str, ModelFormat] = {fmt.manifest: fmt for fmt in ALL_FORMATS}
BY_GATE_NAME: Dict[str, ModelFormat] = {fmt.gate: fmt for fmt in ALL_FORMATS}
