"""Small ONNX helpers shared by the export, quantization, gate and benchmark code."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def onnx_session(model: str | os.PathLike | bytes, threads: int | None = None):
    """A CPU ONNX Runtime session for a model path or serialized bytes (`threads` None: OMP_NUM_THREADS
    where set, else ORT's default of one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = threads or env_threads()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    source = model if isinstance(model, bytes) else str(Path(model))
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def env_threads() -> int | None:
    """OMP_NUM_THREADS as a count, or None. ONNX Runtime ignores it, but `idd-edge repro` sets it for stages
    that share the cores, and ORT's own pool of one spinning thread per core would fight the other stage."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def run_single(session, batch: np.ndarray) -> np.ndarray:
    """Run a one-input, one-output session (the first output for models with several)."""
    input_name = session.get_inputs()[0].name
    return session.run(None, {input_name: np.ascontiguousarray(batch)})[0]


def labels_from_output(output: np.ndarray) -> np.ndarray:
    """(N, H, W) int64 class ids from a semantic model output: logits (N, C, H, W) or labels (N, 1, H, W)."""
    if output.ndim != 4:
        raise ValueError(f"expected a 4-D semantic output, got shape {output.shape}")
    if np.issubdtype(output.dtype, np.integer):
        if output.shape[1] != 1:
            raise ValueError(f"integer output must be a (N, 1, H, W) label map, got shape {output.shape}")
        return output[:, 0].astype(np.int64, copy=False)
    return output.argmax(axis=1)
