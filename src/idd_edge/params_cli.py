"""`idd-edge params [OVERRIDES...]`: compose conf/ into params.yaml (what `dvc exp run -S` does)."""

from __future__ import annotations

import argparse
import logging

from idd_edge import config

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("params", help="compose conf/ (Hydra) into params.yaml")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. label_level=level3 data=idd")
    parser.add_argument("--config-dir", default=str(config.CONFIG_DIR))
    parser.add_argument("--out", default=str(config.PARAMS_FILE))
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    params = config.compose(args.overrides, args.config_dir)
    config.write_params(params, args.out)
    log.info("wrote %s (label level %s, data %s)", args.out, params["label_level"]["name"], params["data"]["name"])
    return 0
