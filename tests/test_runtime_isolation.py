"""The device runtime stands alone: it imports and runs ONNX inference with torch and idd_edge blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests._runtime_bundle import build_onnx_bundle, make_frame

BLOCKED = ("torch", "torchvision", "ultralytics", "idd_edge", "lightning", "timm", "segmentation_models_pytorch")

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import numpy as np

    BLOCKED = set(sys.argv[3].split(","))

    class Blocker:
        '''Meta-path finder that refuses the training stack, as on a Pi that only has the runtime.'''
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the device runtime must not import it")
            return None

    sys.meta_path.insert(0, Blocker())
    import idd_edge_runtime
    for module in pkgutil.iter_modules(idd_edge_runtime.__path__):
        importlib.import_module(f"idd_edge_runtime.{module.name}")

    from idd_edge_runtime.engine import Engine, Settings
    from idd_edge_runtime.loader import load_runtime

    loaded = load_runtime(sys.argv[1], backend="onnx", onnx_threads=1)
    engine = Engine(loaded)
    frame = np.load(sys.argv[2])
    out, result = engine.process(frame, Settings(semantic="seg-logits", yolo=True, privacy=True))
    assert not result.errors, result.errors
    assert result.labels is not None and len(result.detections) == 3
    leaked = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("ok", out.shape, len(result.detections))
    """
)


def test_runtime_runs_without_torch_or_the_training_package(tmp_path: Path) -> None:
    import numpy as np

    bundle = build_onnx_bundle(tmp_path / "bundle")
    frame_path = tmp_path / "frame.npy"
    np.save(frame_path, make_frame())
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bundle), str(frame_path), ",".join(BLOCKED)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip() == "ok (120, 160, 3) 3"


def test_the_blocker_really_blocks(tmp_path: Path) -> None:
    """Guard against a vacuous pass: the same finder makes `import torch` fail."""
    blocked = SCRIPT.split("sys.meta_path.insert(0, Blocker())")[0] + "sys.meta_path.insert(0, Blocker())\nimport torch\n"
    completed = subprocess.run([sys.executable, "-c", blocked, "-", "-", "torch"], capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0 and "torch is blocked" in completed.stderr
