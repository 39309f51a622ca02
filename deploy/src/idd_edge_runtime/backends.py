"""Inference backends behind one interface: a `Session` runs one model on one prepared input tensor.

* `OnnxSession`: ONNX Runtime on the CPU (any machine; the fallback on a Pi without a Hailo device).
* `hailo.HailoSession`: HailoRT's InferModel API on a Hailo-8/8L (see hailo.py).

Both return a dict of output name -> float32 (or integer, for an on-graph argmax) array with the batch
dimension removed where the model has one, so the post-processing is backend-agnostic.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Protocol, Tuple

import numpy as np

from idd_edge_runtime.manifest import ModelEntry



class BackendError(RuntimeError):
    """A model could not be loaded or run by its backend; the message names the model and the cause."""


class Session(Protocol):
    """One loaded model. `run` takes the input tensor laid out as the manifest's input spec (with batch 1)."""

    entry: ModelEntry
    backend: str

    def run(self, tensor: np.ndarray) -> Dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class OnnxSession:
    """ONNX Runtime CPU session for one model of the bundle."""

    backend = "onnxruntime"

    def __init__(self, entry: ModelEntry, path: "str | os.PathLike[str]", threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(
                f"{entry.label}: onnxruntime is not installed (pip install 'idd-edge-runtime[onnx]')"
            ) from None
        options = ort.SessionOptions()
        # 0 = ONNX Runtime's default (all cores); the benchmark pins 1 for per-core figures.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, NoSuchFile...)
            raise BackendError(f"{entry.label}: ONNX Runtime cannot load {path}: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(f"{entry.label}: expected one input, the ONNX graph has {len(inputs)}")
        self._input_name = inputs[0].name
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.entry = entry
        self.input_shape = _expected_input_shape(entry)
        declared = inputs[0].shape
        if len(declared) == 4 and all(isinstance(d, int) for d in declared) and tuple(declared) != self.input_shape:
            raise BackendError(
                f"{entry.label}: the ONNX input is {tuple(declared)} but the manifest says {self.input_shape}"
            )

    @property
    def output_names(self) -> List[str]:
        return list(self._output_names)

    def run(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        outputs = self._session.run(self._output_names, {self._input_name: tensor})
        return dict(zip(self._output_names, outputs))

    def close(self) -> None:
        self._session = None


def _expected_input_shape(entry: ModelEntry) -> Tuple[int, int, int, int]:
    spec = entry.input
    if spec.layout == "NCHW":
        return (1, 3, spec.height, spec.width)
    return (1, spec.height, spec.width, 3)


def open_session(
    entry: ModelEntry,
    path: "str | os.PathLike[str]",
    hailo_device: "Optional[object]" = None,
    onnx_threads: int = 0,
) -> Session:
    """Open `entry` with the backend its format needs (`hailo_device` is a hailo.HailoDevice for HEFs)."""
    if entry.is_hef:
        if hailo_device is None:
            raise BackendError(f"{entry.label}: a HEF needs a Hailo device")
        return hailo_device.open(entry, path)  # type: ignore[attr-defined]
    return OnnxSession(entry, path, threads=onnx_threads)
