"""Import Ultralytics so that it never reaches the network.

Left alone, Ultralytics probes DNS at import, downloads Arial.ttf when it checks a dataset (every
training run), downloads yolo26n.pt for its fp16 AMP check on CUDA, sends telemetry and error reports,
checks PyPI for updates and auto-installs missing requirements. Each has an off switch, all set here
before the first import:

* `YOLO_CONFIG_DIR` -> a project-local directory (settings, fonts), not the user's home.
* `YOLO_OFFLINE=1`: `ONLINE` is False, which disables telemetry, update checks, auto-install and Sentry.
* settings: `sync=False` and every integration callback (DVC, MLflow, ...) off; metrics are ours.
* `ULTRALYTICS_SAFE_LOAD=1`: checkpoints load with `torch.load(weights_only=True)` and an allow-list.
* Arial.ttf: Ultralytics looks for it in its config dir before downloading; we place matplotlib's
  bundled DejaVu Sans there under the names it asks for (it only draws plot labels with it).
* AMP: Ultralytics' fp16 check downloads a model; `amp.py` runs the same check on the model being
  trained and answers Ultralytics' with its result.
* CPU threads: Ultralytics' `select_device` pins torch to `cpu_count - 1` threads on CPU (its
  `NUM_THREADS`), i.e. ONE thread on a 2-core machine, which made YOLO training here single-threaded.
  Its pin is set to the thread count torch has when Ultralytics is first imported (`OMP_NUM_THREADS` or
  torch's default of one per core), as every other stage of the pipeline runs.

`tests/test_yolo_train.py` proves it: a training run through the CLI with an audit hook that fails on
any internet socket or DNS lookup.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

from idd_edge import atomic

#: Project-local Ultralytics config directory (git- and DVC-ignored), relative to the working directory.
DEFAULT_CONFIG_DIR = Path(".ultralytics")
FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
DISABLED_SETTINGS = {
    "sync": False,
    "hub": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "neptune": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}


def import_ultralytics(config_dir: str | os.PathLike | None = None) -> ModuleType:
    """Return the `ultralytics` module, configured offline (see the module docstring).

    Must run before anything else imports Ultralytics: its network probe and settings happen at import.
    """
    first_import = "ultralytics" not in sys.modules
    if first_import:
        root = Path(config_dir or os.environ.get("YOLO_CONFIG_DIR") or DEFAULT_CONFIG_DIR).resolve()
        os.environ["YOLO_CONFIG_DIR"] = str(root)
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
        os.environ.setdefault("YOLO_VERBOSE", "True")
        _provide_fonts(root / "Ultralytics")
    elif os.environ.get("YOLO_OFFLINE") != "1":
        raise RuntimeError("ultralytics was imported before idd_edge.yolo.offline could configure it offline")

    import ultralytics
    from ultralytics.utils import SETTINGS

    if first_import:  # importing Ultralytics leaves torch's count alone; only its select_device resets it
        import torch

        _pin_ultralytics_threads(torch.get_num_threads())

    stale = {key: value for key, value in DISABLED_SETTINGS.items() if key in SETTINGS and SETTINGS[key] != value}
    if stale:
        SETTINGS.update(stale)
    return ultralytics


def set_cpu_threads(threads: int) -> None:
    """Train and validate on `threads` CPU threads (0: keep the process's count), also through Ultralytics'
    `select_device`, which would otherwise reset it. Call after `import_ultralytics`."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if threads == 0:
        return
    import torch

    torch.set_num_threads(threads)
    _pin_ultralytics_threads(threads)


def _pin_ultralytics_threads(threads: int) -> None:
    """The count Ultralytics' `select_device` sets torch to on CPU (its own rule: cpu_count - 1)."""
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = threads


def _provide_fonts(user_config_dir: Path) -> None:
    """Put a local TTF where Ultralytics' `check_font` looks before it downloads Arial."""
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in FONT_NAMES:
        target = user_config_dir / name
        if not target.exists():
            atomic.write_bytes(target, source.read_bytes())
