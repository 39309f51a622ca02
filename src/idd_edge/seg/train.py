"""`idd-edge train {teacher,baseline,kd} [--student KEY]`: one training run (one DVC stage per role).

Runs: `teacher` (models.teacher), `baseline_<student>` and `kd_<student>` (models.students.<student>),
written to `<train.out>/<run>/`:
- `checkpoints/{best,last}.ckpt` (Lightning; best by val mIoU) and `checkpoints/run.json` (what run
  they belong to). Re-running an interrupted stage resumes from `last.ckpt`: epoch counter, optimizer,
  scheduler, history and RNG states. A finished run, or changed settings, start afresh.
- `model.pt` + `model.json`: the best weights as a plain state dict (see `trained.py`).
- `train_metrics.json` (DVC metrics) and `dvclive/` (per-epoch curves for `dvc plots`).

Engine: Lightning. Mixed precision on GPU (`engine.precision: auto` = bf16-mixed where supported, else
16-mixed; fp32 on CPU), DDP over `engine.devices` x `engine.num_nodes`, checkpoints loaded with
`weights_only=True`. A non-finite loss stops the stage with a StageError, keeping the last good checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from idd_edge import atomic, config
from idd_edge.errors import InputError, StageError

log = logging.getLogger(__name__)

ROLES = ("teacher", "baseline", "kd")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
RUN_STATE = "run.json"
KD_KEYS = ("temperature", "alpha", "temperature_squared", "loss", "teacher_logits")
TEACHER_LOGITS = ("cached", "online")  # KD against cached teacher logits, or the teacher run on each batch


@dataclass(frozen=True)
class EngineConfig:
    """Where and how Lightning trains; does not change what a run is (not part of its fingerprint)."""

    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int | str = 1  # per node; >1 (or "auto" on a multi-GPU node) selects DDP
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_find_unused_parameters_true ...
    precision: str = "auto"
    channels_last: bool = True
    sync_batchnorm: bool = True  # BatchNorm statistics over all GPUs under DDP (ignored on CPU)
    progress_bar: bool = True
    threads: int = 0  # torch CPU threads; 0: the process's count (OMP_NUM_THREADS, else one per core)

    @classmethod
    def from_params(cls, cfg: dict[str, Any]) -> EngineConfig:
        engine = cls(**cfg)
        if engine.precision not in PRECISIONS:
            raise ValueError(f"engine.precision {engine.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if engine.threads < 0:
            raise ValueError(f"engine.threads must be >= 0, got {engine.threads}")
        return engine

    def resolved(self) -> tuple[str, str]:
        """(accelerator, precision) with `auto` resolved: GPU when available, bf16/16-mixed there, fp32 on CPU."""
        import torch

        accelerator = self.accelerator
        if accelerator == "auto":
            accelerator = "gpu" if torch.cuda.is_available() else "cpu"
        precision = self.precision
        if precision == "auto":
            if accelerator == "cpu":
                precision = "32-true"
            else:
                precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return accelerator, precision


@dataclass(frozen=True)
class Schedule:
    """Per-role schedule (seed: teacher 50 epochs lr 1e-4, students 50 / KD 125 epochs lr 6e-4)."""

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int


@dataclass(frozen=True)
class TrainJob:
    """Everything one run needs, read from params once (see `job_from_params`)."""

    run: str
    role: str
    model_cfg: dict[str, Any]
    label_level: str
    split_dir: Path
    out_dir: Path
    image_size: tuple[int, int]
    schedule: Schedule
    optim: dict[str, Any]
    augment: dict[str, Any]
    loss: dict[str, Any] = field(default_factory=lambda: {"class_weighting": "none"})
    kd: dict[str, Any] | None = None
    teacher_dir: Path | None = None
    teacher_logits: Path | None = None  # the teacher-logit cache when KD reads cached logits
    seed: int = 42
    workers: int = 0
    mask_mode: str = "auto"
    eval_batch_size: int = 8
    engine: EngineConfig = field(default_factory=EngineConfig)

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.run

    def fingerprint(self) -> str:
        """Hash of what defines the run (not where it runs); a checkpoint of another run is not resumed."""
        from idd_edge.seg.trained import WEIGHTS_NAME

        spec = asdict(self)
        spec.pop("engine")
        spec.pop("workers")
        spec["split_dir"] = str(self.split_dir)
        spec["out_dir"] = str(self.out_dir)
        spec["teacher_dir"] = str(self.teacher_dir)
        spec["teacher_logits"] = str(self.teacher_logits)
        if self.teacher_dir is not None:
            spec["teacher_weights"] = _sha256(self.teacher_dir / WEIGHTS_NAME)
        if self.teacher_logits is not None:
            from idd_edge.seg.logit_cache import INDEX_NAME

            spec["teacher_logits_index"] = _sha256(self.teacher_logits / INDEX_NAME)
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def _sha256(path: Path) -> str | None:
    from idd_edge_runtime.manifest import sha256_file

    return sha256_file(path) if path.is_file() else None


def run_name(role: str, student: str | None) -> str:
    return "teacher" if role == "teacher" else f"{role}_{student}"


def is_global_zero_process() -> bool:
    """True in the process of global rank 0, before any process group exists: the global rank set by
    torchrun (RANK) or SLURM (SLURM_PROCID), else Lightning's own launcher (children get LOCAL_RANK > 0,
    processes on other nodes NODE_RANK > 0). Only this process cleans a run directory before training."""
    for variable in ("RANK", "SLURM_PROCID"):
        if variable in os.environ:
            return int(os.environ[variable]) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def resume_checkpoint(ckpt_dir: Path, fingerprint: str) -> Path | None:
    """`last.ckpt` if it belongs to an unfinished run with this fingerprint, else None."""
    last, state_file = ckpt_dir / "last.ckpt", ckpt_dir / RUN_STATE
    if not last.is_file() or not state_file.is_file():
        return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if state.get("complete"):
        log.info("%s: previous run finished; training afresh", ckpt_dir.parent.name)
        return None
    if state.get("fingerprint") != fingerprint:
        log.info("%s: settings changed since the interrupted run; training afresh", ckpt_dir.parent.name)
        return None
    return last


def start_fresh(run_dir: Path, fingerprint: str) -> None:
    for stale in ("checkpoints", "dvclive"):
        shutil.rmtree(run_dir / stale, ignore_errors=True)
    atomic.write_json(run_dir / "checkpoints" / RUN_STATE, {"fingerprint": fingerprint, "complete": False})


def load_teacher(teacher_dir: Path, job: TrainJob) -> Any:
    from idd_edge.seg.models import set_export_mode
    from idd_edge.seg.trained import INFO_NAME, load_trained

    teacher, info = load_trained(teacher_dir)
    if info["label_level"] != job.label_level:
        raise InputError(teacher_dir / INFO_NAME, f"teacher trained on {info['label_level']}, the student on "
                                                  f"{job.label_level}; re-run the teacher stage")
    set_export_mode(teacher, False)
    log.info("teacher %s (%s) for %s", info.get("run"), info["model"].get("name"), job.run)
    return teacher


def open_teacher_logits(job: TrainJob) -> Any:
    """The teacher-logit cache of a KD run, checked against the current teacher and label level."""
    from idd_edge.labels import LEVEL_CLASS_NAMES
    from idd_edge.seg.logit_cache import TeacherLogits
    from idd_edge.seg.trained import WEIGHTS_NAME

    cache = TeacherLogits(job.teacher_logits)
    cache.check_matches(_sha256(job.teacher_dir / WEIGHTS_NAME), job.label_level, len(LEVEL_CLASS_NAMES[job.label_level]))
    log.info("%s: KD from the teacher logits cached in %s", job.run, job.teacher_logits)
    return cache


def training_class_weights(job: TrainJob, train_set: Any) -> Any:
    """CE class weights of the run from its training split's pixel counts (`train.loss`), or None."""
    from idd_edge.seg.kd import WEIGHTINGS, class_weights_from_counts

    scheme = job.loss["class_weighting"]
    if scheme not in WEIGHTINGS:
        raise ValueError(f"train.loss.class_weighting {scheme!r}; choose one of {', '.join(WEIGHTINGS)}")
    if scheme == "none":
        return None
    weights = class_weights_from_counts(train_set.class_pixel_counts(), float(job.loss["power"]),
                                        float(job.loss["max_weight"]))
    log.info("%s: CE class weights %s", job.run, " ".join(f"{w:.2f}" for w in weights.tolist()))
    return weights


def summarize(job: TrainJob, history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's `train_metrics.json`: best val mIoU (first epoch reaching it) and last-epoch losses."""
    if not history:
        raise StageError(f"{job.run}: no epoch was validated")
    best = max(history, key=lambda record: record["val_miou"])  # max keeps the first of equal values
    last = history[-1]
    return {
        "run": job.run,
        "role": job.role,
        "model": job.model_cfg["name"],
        "label_level": job.label_level,
        "best_miou": best["val_miou"],
        "best_epoch": best["epoch"],
        "epochs": last["epoch"],
        "final_losses": {"ce": last["train_ce"], "kl": last["train_kl"], "total": last["train_total"]},
    }


def train(job: TrainJob, extra_callbacks: Sequence[Any] = ()) -> dict[str, Any] | None:
    """Train (or resume) one run; on global rank zero export the best weights and return the summary."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from idd_edge.labels import LEVEL_CLASS_NAMES
    from idd_edge.seg.data import Augment, IDDSegDataset, make_loader
    from idd_edge.seg.kd import KDConfig
    from idd_edge.seg.live import EpochLog
    from idd_edge.seg.models import build_model
    from idd_edge.seg.task import OptimConfig, SegmentationTask
    from idd_edge.seg.trained import save_trained

    started, started_cpu = time.monotonic(), time.process_time()
    if job.engine.threads:
        # torch's CPU sums depend on how many threads split them: a fixed count trains the same model
        # whether the stage runs alone (`dvc repro`) or beside another (`idd-edge repro`).
        torch.set_num_threads(job.engine.threads)
    run_dir, ckpt_dir = job.run_dir, job.run_dir / "checkpoints"
    fingerprint = job.fingerprint()
    resume_from = resume_checkpoint(ckpt_dir, fingerprint)
    if is_global_zero_process():
        if resume_from is None:
            start_fresh(run_dir, fingerprint)
        else:
            log.info("%s: resuming the interrupted run from %s", job.run, resume_from)

    L.seed_everything(job.seed, workers=True, verbose=False)
    class_names = LEVEL_CLASS_NAMES[job.label_level]
    teacher, kd, cached_logits = None, None, None
    if job.role == "kd":
        kd = KDConfig.from_params(job.kd)
        if job.teacher_logits is not None:
            cached_logits = open_teacher_logits(job)
        else:
            teacher = load_teacher(job.teacher_dir, job)
    train_set = IDDSegDataset(job.split_dir / "train", job.label_level, job.image_size,
                              Augment.from_params(job.augment), job.mask_mode, cached_logits)
    val_set = IDDSegDataset(job.split_dir / "val", job.label_level, job.image_size, None, job.mask_mode)
    train_loader = make_loader(train_set, job.schedule.batch_size, job.workers, train=True)
    val_loader = make_loader(val_set, job.eval_batch_size, job.workers, train=False)

    model = build_model(job.model_cfg, len(class_names), job.image_size)
    optim = OptimConfig(lr=job.schedule.lr, weight_decay=job.schedule.weight_decay, **job.optim)
    epoch_log = EpochLog(run_dir / "dvclive", resume=resume_from is not None, run=job.run, epochs=job.schedule.epochs)
    task = SegmentationTask(model, class_names, optim, teacher, kd, job.engine.channels_last, epoch_log,
                            training_class_weights(job, train_set))

    accelerator, precision = job.engine.resolved()
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val/miou", mode="max", save_top_k=1,
        enable_version_counter=False, auto_insert_metric_name=False,
    )
    # Lightning's `save_last` only refreshes last.ckpt when a monitored checkpoint is saved (an
    # improvement), so a run would resume from its best epoch, not its latest: keep `last` separately.
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=job.schedule.epochs,
        accelerator=accelerator,
        devices=job.engine.devices,
        num_nodes=job.engine.num_nodes,
        strategy=job.engine.strategy,
        precision=precision,
        # Only DDP strategies apply it, and torch's SyncBatchNorm runs on GPUs only.
        sync_batchnorm=job.engine.sync_batchnorm and accelerator == "gpu",
        callbacks=[checkpoint, latest, *extra_callbacks],
        logger=False,
        enable_progress_bar=job.engine.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,  # a sanity pass would also shift the RNG stream of a resumed run
        benchmark=accelerator == "gpu",  # static shapes: let cuDNN pick the fastest kernels
        default_root_dir=run_dir,
    )
    log.info("%s: %s on %s, precision %s, %d train / %d val images, %d epochs", job.run,
             job.model_cfg["name"], accelerator, precision, len(train_set), len(val_set), job.schedule.epochs)
    with warnings.catch_warnings():
        # checkpoints/ always holds run.json, so Lightning's "directory not empty" notice is expected.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")  # Lightning vs this torch
        trainer.fit(task, train_loader, val_loader, ckpt_path=resume_from, weights_only=True)
    if trainer.interrupted:
        raise StageError(f"{job.run}: training was interrupted; re-run the stage to resume from {ckpt_dir / 'last.ckpt'}")
    if not trainer.is_global_zero:
        return None

    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    weights = {key.removeprefix("model."): value for key, value in best.items() if key.startswith("model.")}
    summary = summarize(job, task.history)
    save_trained(run_dir, weights, {
        "run": job.run, "role": job.role, "model": job.model_cfg, "num_classes": len(class_names),
        "input_size": list(job.image_size), "label_level": job.label_level, "class_names": list(class_names),
        "best_miou": summary["best_miou"], "best_epoch": summary["best_epoch"],
    })
    atomic.write_json(run_dir / "train_metrics.json", summary)
    atomic.write_json(ckpt_dir / RUN_STATE, {"fingerprint": fingerprint, "complete": True})
    epoch_log.end()
    log.info("%s: best val mIoU %.2f%% at epoch %d/%d (%.0f s, %.0f CPU-s in this process)", job.run,
             100 * summary["best_miou"], summary["best_epoch"], summary["epochs"], time.monotonic() - started,
             time.process_time() - started_cpu)
    return summary


def job_from_params(params: dict[str, Any], role: str, student: str | None, source: str | Path) -> TrainJob:
    """Read one run's settings from composed params (conf/train/*.yaml, conf/model/*.yaml)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    train_cfg = config.section(params, "train", source)
    level = config.section(params, "label_level", source)
    if role == "teacher":
        model_cfg = config.section(params, "models.teacher", source)
    else:
        students = config.section(params, "models.students", source)
        if student not in students:
            raise InputError(source, f"unknown student {student!r}; choose one of {', '.join(students)}")
        model_cfg = students[student]
    role_cfg = dict(train_cfg[role])
    class_mix = _probability(role_cfg.pop("class_mix", None), f"train.{role}.class_mix", source)
    augment = {**train_cfg["augment"], "class_mix": class_mix, "mix_classes": mix_class_ids(level, source)}
    kd = {k: role_cfg.pop(k) for k in KD_KEYS} if role == "kd" else None
    if kd is not None and kd["teacher_logits"] not in TEACHER_LOGITS:
        raise InputError(source, f"train.kd.teacher_logits is {kd['teacher_logits']!r}; choose one of {', '.join(TEACHER_LOGITS)}")
    cached = kd is not None and kd["teacher_logits"] == "cached"
    out_dir = Path(train_cfg["out"])
    return TrainJob(
        run=run_name(role, student),
        role=role,
        model_cfg=dict(model_cfg),
        label_level=level["name"],
        split_dir=Path(config.section(params, "split.out", source)) / level["dir_name"],
        out_dir=out_dir,
        image_size=tuple(train_cfg["image_size"]),
        schedule=Schedule(**role_cfg),
        optim=dict(train_cfg["optim"]),
        augment=augment,
        loss=dict(train_cfg["loss"]),
        kd=kd,
        teacher_dir=out_dir / "teacher" if role == "kd" else None,
        teacher_logits=Path(config.section(params, "train.teacher_logits.out", source)) if cached else None,
        seed=int(config.section(params, "seed" if role == "teacher" else "train.student_seed", source)),
        workers=int(train_cfg["workers"]),
        mask_mode=train_cfg["mask_mode"],
        eval_batch_size=int(train_cfg["eval_batch_size"]),
        engine=EngineConfig.from_params(dict(train_cfg["engine"])),
    )


def _probability(value: Any, key: str, source: str | Path) -> float:
    if value is None:
        raise InputError(source, f"{key} is missing (the probability of ClassMix for that role; 0 for none)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InputError(source, f"{key} must be a probability between 0 and 1, got {value!r}")
    return float(value)


def mix_class_ids(level: dict[str, Any], source: str | Path) -> list[int]:
    """Train ids of `label_level.mix_classes` (class names of the level), the classes ClassMix pastes."""
    from idd_edge.labels import LEVEL_CLASS_NAMES

    names = LEVEL_CLASS_NAMES[level["name"]]
    wanted = level.get("mix_classes")
    if not isinstance(wanted, (list, tuple)):
        raise InputError(source, f"label_level.mix_classes must be a list of {level['name']} class names, got {wanted!r}")
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise InputError(source, f"label_level.mix_classes: {', '.join(map(repr, unknown))} not a {level['name']} "
                                 f"class; choose from {', '.join(names)}")
    return [names.index(name) for name in wanted]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the teacher, a baseline student or a logit-KD student")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--student", help="student key under models.students (baseline and kd roles)")
    parser.add_argument("--params", default=str(config.PARAMS_FILE))
    parser.set_defaults(handler=_run)


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()  # advertisements for Lightning's cloud services


def route_lightning_logs() -> None:
    """Lightning logs through its own handler as well; keep one copy, in the CLI's format, without tips."""
    import lightning.pytorch  # noqa: F401  (installs Lightning's handlers, removed here)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropLightningTips())


def _run(args: argparse.Namespace) -> int:
    route_lightning_logs()
    if args.role != "teacher" and not args.student:
        raise InputError(None, f"the {args.role} role needs --student KEY")
    params = config.load_params(args.params)
    train(job_from_params(params, args.role, args.student, args.params))
    return 0
