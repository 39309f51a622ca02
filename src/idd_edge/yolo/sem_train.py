"""`idd-edge yolo-sem-train`: Ultralytics YOLO26n-sem trained by Ultralytics' own trainer, fully offline,
saved as a run of this project so the students' chain evaluates, exports and gates it unchanged.

The architecture comes from the model YAML, from scratch (no checkpoint exists offline, and the students'
comparison is about what `yolo train task=semantic` gives on the same data). Ultralytics trains square
images only (`imgsz` is one number); with the short side scaled to `imgsz` during augmentation, `imgsz`
= the students' input height (128) shows the network objects at the scale it is evaluated at (the
144x256 frames resized to 128x224). Writes under RUN_DIR (= `<train.out>/ultralytics_sem`):

    model.pt, model.json   the EMA weights Ultralytics keeps (fp32, plain state dict of
                           `seg.ultralytics_sem.UltralyticsSemantic`), input normalization 0-1
    train_metrics.json     the contract `idd-edge compare` reads: Ultralytics' own last-epoch validation
                           mIoU (its letterboxed square protocol; the evaluate stage gives the comparable one)
    ultralytics/           Ultralytics' run directory (results.csv, args.yaml, plots), replaced atomically
                           when training ends (an interrupted run resumes: `yolo/resume.py`)
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from idd_edge import atomic, config
from idd_edge.errors import InputError, StageError
from idd_edge.yolo import results
from idd_edge.yolo.offline import import_ultralytics, set_cpu_threads
from idd_edge.yolo.resume import prepare_staging, run_fingerprint, state_file

log = logging.getLogger(__name__)

RUN_NAME = "ultralytics_sem"
ROLE = "ultralytics"
VAL_MIOU_COLUMN = "metrics/mIoU"
CE_COLUMN = "train/ce_loss"
_CASTS = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class SemTrainSettings:
    """The `yolo.semantic.train` parameters (see conf/yolo.yaml), in Ultralytics' names."""

    model: str
    epochs: int
    imgsz: int
    batch: int
    workers: int
    threads: int  # CPU threads for torch; 0: the process's count (torch's default: one per core)
    device: str
    plots: bool
    seed: int
    optimizer: str
    lr0: float
    nbs: int
    warmup_epochs: float
    close_mosaic: int
    cls_pw: float
    val: bool

    @classmethod
    def from_params(cls, node: dict, source: str | Path) -> SemTrainSettings:
        try:  # field types are strings here (postponed annotations)
            settings = cls(**{f.name: _CASTS[f.type](node[f.name]) for f in fields(cls)})
        except KeyError as exc:
            raise InputError(source, f"yolo.semantic.train is missing {exc}; recompose with `idd-edge params`") from None
        except (TypeError, ValueError) as exc:
            raise InputError(source, f"yolo.semantic.train has a value of the wrong type: {exc}") from None
        if settings.imgsz % 32:
            raise InputError(source, f"yolo.semantic.train.imgsz must be a multiple of 32, got {settings.imgsz}")
        if settings.threads < 0:
            raise InputError(
                source, f"yolo.semantic.train.threads must be >= 0 (0: torch's default), got {settings.threads}"
            )
        if not 0.0 <= settings.cls_pw <= 1.0:
            raise InputError(source, f"yolo.semantic.train.cls_pw must be in 0-1 (Ultralytics' range), got {settings.cls_pw}")
        return settings


def train(dataset: Path, run_dir: Path, settings: SemTrainSettings, level: str, input_size: tuple[int, int],
          callbacks: Mapping[str, Callable[[object], None]] | None = None) -> dict[str, Any]:
    """Train on `dataset` (a yolo-sem-bridge directory), or resume its interrupted run (`yolo/resume.py`);
    write RUN_DIR (see module doc), return the metrics. `callbacks`: extra Ultralytics callbacks by event."""
    data_yaml = dataset / "data.yaml"
    if not data_yaml.is_file():
        raise InputError(data_yaml, "not found; run `idd-edge yolo-sem-bridge` first")
    import_ultralytics()
    set_cpu_threads(settings.threads)
    import yaml
    from ultralytics.models.yolo.semantic import SemanticSegmentationTrainer

    from idd_edge.labels import LEVEL_CLASS_NAMES
    from idd_edge.seg.trained import save_trained
    from idd_edge.seg.ultralytics_sem import ARCH, NORMALIZATION, UltralyticsSemantic

    names = list(yaml.safe_load(data_yaml.read_text())["names"].values())
    if names != list(LEVEL_CLASS_NAMES[level]):
        raise InputError(data_yaml, f"class names are not those of {level}; re-run `idd-edge yolo-sem-bridge`")
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = (run_dir / ".ultralytics.staging").resolve()
    resume_from = prepare_staging(staging, run_fingerprint(asdict(settings), dataset))
    overrides = {
        "model": settings.model, "data": str(data_yaml.resolve()), "epochs": settings.epochs,
        "imgsz": settings.imgsz, "batch": settings.batch, "workers": settings.workers, "device": settings.device,
        "plots": settings.plots, "seed": settings.seed, "deterministic": True, "optimizer": settings.optimizer,
        "lr0": settings.lr0, "nbs": settings.nbs, "warmup_epochs": settings.warmup_epochs,
        "close_mosaic": settings.close_mosaic, "cls_pw": settings.cls_pw, "val": settings.val,
        "amp": False,  # fp32: Ultralytics' AMP check would download a checkpoint, and CPUs train fp32 anyway
        "pretrained": False, "project": str(staging.parent), "name": staging.name, "exist_ok": True,
        "verbose": True,
    }
    if resume_from is not None:  # Ultralytics takes every setting, the epoch and the optimizer from it
        overrides["resume"] = str(resume_from)
    try:
        trainer = SemanticSegmentationTrainer(overrides=overrides)
    except (ValueError, TypeError, SyntaxError) as exc:  # Ultralytics' check_cfg on a bad setting
        raise StageError(f"yolo.semantic.train: Ultralytics refused the settings: {exc}") from None
    for event, callback in (callbacks or {}).items():
        trainer.add_callback(event, callback)
    trainer.train()
    if getattr(trainer, "ema", None) is None:
        raise StageError(f"{staging}: Ultralytics finished without EMA weights (training ended before the first step)")
    rows = results.read_rows(staging / "results.csv")
    if VAL_MIOU_COLUMN not in rows[-1]:
        raise StageError(f"{staging / 'results.csv'}: no {VAL_MIOU_COLUMN!r} column (not a semantic run?)")
    model_name = Path(settings.model).stem
    wrapped = UltralyticsSemantic(trainer.ema.ema.float())
    val_miou = float(rows[-1][VAL_MIOU_COLUMN])
    metrics = {
        "run": RUN_NAME, "role": ROLE, "model": model_name, "label_level": level,
        "best_miou": val_miou, "best_epoch": len(rows), "epochs": len(rows),
        "final_losses": {"ce": _train_loss(rows[-1]), "kl": None, "total": None},
    }
    save_trained(run_dir, wrapped.state_dict(), {
        "run": RUN_NAME, "role": ROLE,
        "model": {"name": model_name, "arch": ARCH, "yaml": settings.model, "pretrained": False},
        "num_classes": len(names), "input_size": list(input_size), "label_level": level, "class_names": names,
        "best_miou": val_miou, "best_epoch": len(rows),
    }, normalization=NORMALIZATION)
    shutil.rmtree(staging / "weights", ignore_errors=True)  # pickled checkpoints: model.pt holds the weights
    atomic.replace_dir(staging, run_dir / "ultralytics")
    state_file(staging).unlink(missing_ok=True)
    atomic.write_json(run_dir / "train_metrics.json", metrics)
    return metrics


def _train_loss(row: dict[str, float]) -> float:
    """The last epoch's training cross-entropy (Ultralytics' semantic loss adds a Dice and an auxiliary
    term, its own columns; the CE is what the students' `final_losses.ce` is too)."""
    if CE_COLUMN not in row:
        raise StageError(f"results.csv has no {CE_COLUMN!r} column: {sorted(row)}")
    return float(row[CE_COLUMN])


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("yolo-sem-train", help="train Ultralytics YOLO26n-sem on the bridged level (offline)")
    parser.add_argument("dataset", type=Path, help="yolo-sem-bridge output directory (holds data.yaml)")
    parser.add_argument("--params", type=Path, default=config.PARAMS_FILE)
    parser.set_defaults(handler=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    params = config.load_params(args.params)
    settings = SemTrainSettings.from_params(config.section(params, "yolo.semantic.train", args.params), args.params)
    run_dir = Path(config.section(params, "train.out", args.params)) / RUN_NAME
    image_size = config.section(params, "train.image_size", args.params)
    metrics = train(args.dataset, run_dir, settings, config.section(params, "label_level.name", args.params),
                    (int(image_size[0]), int(image_size[1])))
    log.info("%s: %d epochs, Ultralytics val mIoU %.4f -> %s", RUN_NAME, metrics["epochs"], metrics["best_miou"],
             run_dir / "train_metrics.json")
    return 0
