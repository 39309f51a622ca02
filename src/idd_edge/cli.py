"""The `idd-edge` command: one subcommand per pipeline stage (each a `dvc.yaml` stage).

Each stage module exposes `add_parser(subparsers)`, which registers its subcommand with a handler that
reads arguments and `params.yaml` once and calls the module's pure function. Handlers import heavy
libraries (torch, ultralytics) inside, so `idd-edge --help` and the data stages start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from idd_edge.errors import InputError, StageError

# Order = pipeline order, as `idd-edge --help` lists them.
STAGE_MODULES: tuple[str, ...] = (
    "idd_edge.params_cli",
    "idd_edge.repro",
    "idd_edge.data.synth",
    "idd_edge.data.convert",
    "idd_edge.data.split",
    "idd_edge.yolo.bridge",
    "idd_edge.yolo.train",
    "idd_edge.yolo.export",
    "idd_edge.yolo.sem_bridge",
    "idd_edge.yolo.sem_train",
    "idd_edge.seg.train",
    "idd_edge.seg.teacher_logits",
    "idd_edge.seg.evaluate",
    "idd_edge.seg.compare",
    "idd_edge.export.onnx_export",
    "idd_edge.export.calibrate",
    "idd_edge.export.quantize",
    "idd_edge.export.compile_hef",
    "idd_edge.export.compile_imx500",
    "idd_edge.export.gate",
    "idd_edge.bundle",
    "idd_edge.ship",
    "idd_edge.weights",
)

log = logging.getLogger("idd_edge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idd-edge", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for module_name in STAGE_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.handler(args) or 0)
    except (InputError, StageError) as exc:
        print(f"idd-edge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
