"""`idd-edge yolo-train`: train Ultralytics YOLOv8n-seg on the bridged dataset, fully offline.

The architecture comes from the model YAML; initial weights from a local checkpoint when one exists
(never downloaded), otherwise training starts from scratch and says so. Writes under OUT:

    train/                 the Ultralytics run (weights/best.pt, last.pt, results.csv, plots), replaced atomically
                           when training ends (an interrupted run resumes: `yolo/resume.py`)
    metrics.json           DVC metrics: best-epoch box/mask mAP50, mAP50-95, precision, recall; last losses
    plots/losses.csv       per-epoch train/val losses (DVC plots)
    plots/metrics.csv      per-epoch box/mask metrics (DVC plots)
"""

from __future__ import annotations

import argparse
import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from idd_edge import atomic, config
from idd_edge.errors import InputError
from idd_edge.yolo import results
from idd_edge.yolo.amp import AMP_CHOICES, answered_amp_check, resolve_amp
from idd_edge.yolo.offline import import_ultralytics, set_cpu_threads
from idd_edge.yolo.resume import prepare_staging, run_fingerprint, state_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """The `yolo.train` parameters (see conf/yolo.yaml)."""

    model: str
    pretrained: Path
    epochs: int
    imgsz: int
    batch: int
    workers: int
    threads: int  # CPU threads for torch; 0: the process's count (torch's default: one per core)
    device: str
    patience: int
    amp: bool | str
    cache: bool | str
    plots: bool
    seed: int
    # Optimisation (Ultralytics' names): see conf/yolo.yaml for why the small-data values differ from its own.
    optimizer: str
    lr0: float
    nbs: int
    warmup_epochs: float
    close_mosaic: int
    val: bool

    @classmethod
    def from_params(cls, node: dict, source: str | Path) -> TrainSettings:
        try:
            settings = cls(
                model=str(node["model"]), pretrained=Path(node["pretrained"]), epochs=int(node["epochs"]),
                imgsz=int(node["imgsz"]), batch=int(node["batch"]), workers=int(node["workers"]),
                threads=int(node["threads"]), device=str(node["device"]), patience=int(node["patience"]),
                amp=node["amp"], cache=node["cache"], plots=bool(node["plots"]), seed=int(node["seed"]),
                optimizer=str(node["optimizer"]), lr0=float(node["lr0"]), nbs=int(node["nbs"]),
                warmup_epochs=float(node["warmup_epochs"]), close_mosaic=int(node["close_mosaic"]),
                val=bool(node["val"]),
            )
        except KeyError as exc:
            raise InputError(source, f"yolo.train is missing {exc}; recompose with `idd-edge params`") from None
        if not any(settings.amp is choice if isinstance(choice, bool) else settings.amp == choice
                   for choice in AMP_CHOICES):  # `is` for booleans: 0 and 1 are no AMP setting
            raise InputError(source, f"yolo.train.amp must be false, true (fp16 on CUDA) or bf16, got {settings.amp!r}")
        if settings.cache not in (False, "ram"):
            raise InputError(
                source, f"yolo.train.cache must be false or ram, got {settings.cache!r} (disk writes into the dataset)"
            )
        if settings.imgsz % 32:
            raise InputError(
                source, f"yolo.train.imgsz must be a multiple of 32 (the largest stride), got {settings.imgsz}"
            )
        if settings.threads < 0:
            raise InputError(source, f"yolo.train.threads must be >= 0 (0: torch's default), got {settings.threads}")
        return settings


def transferred_weights(model_yaml: str, checkpoint: Path, num_classes: int) -> tuple[int, int]:
    """(tensors transferred, tensors in the model) when `checkpoint` initialises `model_yaml` with `num_classes`.

    Done exactly as Ultralytics' trainer does it (`SegmentationModel.load`: class branch rebuilt at the
    source width when only the class count differs, then name-and-shape intersection).
    """
    import_ultralytics()
    from ultralytics.nn.tasks import SegmentationModel, load_checkpoint
    from ultralytics.utils.torch_utils import intersect_dicts

    try:  # torch.load(weights_only=True) with Ultralytics' class allow-list (ULTRALYTICS_SAFE_LOAD, offline.py)
        source, _ = load_checkpoint(checkpoint)
    except (TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        problem = str(exc).strip().splitlines()[0]
        raise InputError(checkpoint, f"not a loadable Ultralytics checkpoint: {problem}") from None
    model = SegmentationModel(model_yaml, nc=num_classes, verbose=False)
    model.load(source, verbose=False)
    target = model.state_dict()
    return len(intersect_dicts(source.float().state_dict(), target)), len(target)


def train(dataset: Path, out: Path, settings: TrainSettings,
          callbacks: Mapping[str, Callable[[object], None]] | None = None) -> dict:
    """Train on `dataset` (a yolo-bridge directory with data.yaml), or resume its interrupted run; write OUT
    (see module doc); return metrics. `callbacks`: extra Ultralytics callbacks by event name."""
    data_yaml = dataset / "data.yaml"
    if not data_yaml.is_file():
        raise InputError(data_yaml, "not found; run `idd-edge yolo-bridge` first")
    import_ultralytics()
    set_cpu_threads(settings.threads)
    import yaml
    from ultralytics import YOLO

    num_classes = len(yaml.safe_load(data_yaml.read_text())["names"])
    init = {"weights": None, "transferred": 0, "total": 0}
    if settings.pretrained.is_file():
        transferred, total = transferred_weights(settings.model, settings.pretrained, num_classes)
        init = {"weights": str(settings.pretrained), "transferred": transferred, "total": total}
        log.info(
            "initialising %s from %s: %d/%d tensors transferred", settings.model, settings.pretrained, transferred, total
        )
    else:
        log.warning(
            "no pretrained weights at %s: training %s from scratch (random initialisation)",
            settings.pretrained,
            settings.model,
        )

    amp = resolve_amp(settings.amp, settings.device, settings.model, settings.pretrained, num_classes)
    out.mkdir(parents=True, exist_ok=True)
    staging = (out / ".train.staging").resolve()
    resume_from = prepare_staging(staging, run_fingerprint(asdict(settings), dataset))
    with answered_amp_check(amp):  # Ultralytics' own check would download yolo26n.pt
        model = YOLO(str(resume_from or settings.model), task="segment")
        for event, callback in (callbacks or {}).items():
            model.add_callback(event, callback)
        if resume_from is not None:  # Ultralytics takes every setting, the epoch and the optimizer from it
            model.train(resume=True)
        else:
            model.train(
                data=str(data_yaml.resolve()),
                epochs=settings.epochs,
                imgsz=settings.imgsz,
                batch=settings.batch,
                workers=settings.workers,
                device=settings.device,
                patience=settings.patience,
                amp=amp.amp,
                cache=settings.cache,
                plots=settings.plots,
                seed=settings.seed,
                optimizer=settings.optimizer,
                lr0=settings.lr0,
                nbs=settings.nbs,
                warmup_epochs=settings.warmup_epochs,
                close_mosaic=settings.close_mosaic,
                val=settings.val,
                deterministic=True,
                pretrained=str(settings.pretrained) if init["weights"] else False,
                project=str(staging.parent),
                name=staging.name,
                exist_ok=True,
                verbose=True,
            )
    rows = results.read_results(staging / "results.csv")
    metrics = {**results.summarize(rows), "init": {"transferred": init["transferred"], "total": init["total"]}}
    atomic.replace_dir(staging, out / "train")
    state_file(staging).unlink(missing_ok=True)
    atomic.write_json(out / "metrics.json", metrics)
    for name, text in results.plot_tables(rows).items():
        atomic.write_text(out / "plots" / name, text)
    return metrics


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("yolo-train", help="train YOLOv8n-seg on the bridged dataset (offline)")
    parser.add_argument("dataset", type=Path, help="yolo-bridge output directory (holds data.yaml)")
    parser.add_argument("out", type=Path, help="output directory (train/, metrics.json, plots/)")
    parser.add_argument("--params", type=Path, default=config.PARAMS_FILE)
    parser.set_defaults(handler=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    params = config.load_params(args.params)
    settings = TrainSettings.from_params(config.section(params, "yolo.train", args.params), args.params)
    metrics = train(args.dataset, args.out, settings)
    box, mask = metrics["box"], metrics["mask"]
    log.info(
        "best epoch %d/%d: box mAP50 %.4f mAP50-95 %.4f | mask mAP50 %.4f mAP50-95 %.4f -> %s",
        metrics["best_epoch"], metrics["epochs"], box["map50"], box["map50_95"], mask["map50"], mask["map50_95"],
        args.out / "metrics.json",
    )
    return 0
