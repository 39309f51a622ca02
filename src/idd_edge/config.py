"""Configuration: Hydra groups under `conf/` are the single source of truth, composed into `params.yaml`.

DVC composes `params.yaml` itself on `dvc exp run -S key=value` (Hydra composition is enabled in
`.dvc/config`); `idd-edge params [OVERRIDES...]` does the same composition for plain `dvc repro` users.
Stages read `params.yaml` once, in their CLI entry, and pass plain values to the functions doing work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from idd_edge import atomic
from idd_edge.errors import InputError

CONFIG_DIR = Path("conf")
CONFIG_NAME = "config"
PARAMS_FILE = Path("params.yaml")
PARAMS_HEADER = (
    "# Generated from conf/ by Hydra composition (`idd-edge params` or `dvc exp run -S ...`).\n"
    "# Do not edit by hand: change conf/ and recompose. A test fails when the two disagree.\n"
)


def compose(overrides: Sequence[str] = (), config_dir: str | Path = CONFIG_DIR) -> dict[str, Any]:
    """Compose `conf/config.yaml` with Hydra overrides into a plain, fully resolved dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        cfg = hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def write_params(params: dict[str, Any], path: str | Path = PARAMS_FILE) -> None:
    atomic.write_text(path, PARAMS_HEADER + yaml.safe_dump(params, sort_keys=False, width=100))


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read `params.yaml`; a missing or malformed file is an InputError naming it."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "parameters file not found; run `idd-edge params` to compose it") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise InputError(path, "expected a mapping at the top level")
    return params


def section(params: dict[str, Any], dotted: str, source: str | Path = PARAMS_FILE) -> Any:
    """`params['a']['b']` for `dotted='a.b'`, with an error naming the missing key and the file."""
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise InputError(source, f"missing key {dotted!r}; recompose with `idd-edge params`")
        node = node[key]
    return node
