"""`idd-edge compare [EXPERIMENTS...]`: the seed report's results table across runs and experiments,
plus a per-class IoU diff between two runs.

Reads what the training and evaluation stages write for every run under `artifacts/seg/<run>/`
(`train_metrics.json`, `eval/metrics.json`) and, when present, `artifacts/yolo/metrics.json`, the export
stage's ONNX sizes and the CPU latency `benchmarks/int8.py --json` measured (a second table: mIoU beside
params, GFLOPs, ONNX size and ms per frame, the Ultralytics YOLO26n-sem run among the students). Without
experiment names it reads the workspace; with names (DVC experiments, branches, tags, commits) it reads
the same files at those revisions through DVC's file system (git-tracked and DVC-cached files alike),
next to the workspace. The table is printed (rich) and written as Markdown; `--a`/`--b` add a per-class
IoU comparison that flags classes that got worse, with a bar plot of the changes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from idd_edge.atomic import write_text
from idd_edge.errors import InputError
from idd_edge.labels import LEVEL_CLASS_NAMES
from idd_edge.seg.metrics import DELTA_TOLERANCE, classify_deltas, iou_deltas

log = logging.getLogger(__name__)

WORKSPACE = "workspace"
DEFAULT_RUNS_DIR = "artifacts/seg"
DEFAULT_YOLO_METRICS = "artifacts/yolo/metrics.json"
DEFAULT_OUT = "artifacts/reports/compare.md"
TRAIN_METRICS = "train_metrics.json"
EVAL_METRICS = "eval/metrics.json"

DEFAULT_EXPORT_METRICS = "artifacts/reports/export"
DEFAULT_LATENCY = "artifacts/reports/latency.json"

ROLE_TITLES = {"teacher": "Teacher", "baseline": "Baseline student", "kd": "Logit KD",
               "ultralytics": "Ultralytics semantic"}
SEG_HEADERS = ("Experiment", "Label", "Run", "Model", "Best mIoU", "Best Epoch", "Final losses", "Eval mIoU")
COST_HEADERS = ("Experiment", "Run", "Eval mIoU", "Params (M)", "GFLOPs", "ONNX MB", "CPU ms/frame",
                "mIoU pt per ms")


# --------------------------------------------------------------------------------------------------
# Where metrics are read from: the workspace, or a git revision / DVC experiment.


class Snapshot(Protocol):
    name: str

    def read_json(self, path: str) -> dict[str, Any] | None:
        """Parsed JSON object at `path`, or None if there is no such file."""

    def list_dirs(self, path: str) -> list[str]:
        """Names of the sub-directories of `path` (empty if `path` does not exist)."""

    def list_files(self, path: str) -> list[str]:
        """Names of the files in `path` (empty if `path` does not exist)."""

    def where(self, path: str) -> str:
        """How to name `path` in this snapshot in an error message."""


def _parse_json(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(where, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(where, f"expected a JSON object, got {type(data).__name__}")
    return data


@dataclass
class WorkspaceSnapshot:
    """Files on disk under `root` (absolute paths are used as they are)."""

    root: Path = Path(".")
    name: str = WORKSPACE

    def read_json(self, path: str) -> dict[str, Any] | None:
        file = self.root / path
        if not file.is_file():
            return None
        return _parse_json(file.read_text(encoding="utf-8"), str(file))

    def list_dirs(self, path: str) -> list[str]:
        directory = self.root / path
        return sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []

    def list_files(self, path: str) -> list[str]:
        directory = self.root / path
        return sorted(p.name for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []

    def where(self, path: str) -> str:
        return str(self.root / path)


@dataclass
class RevSnapshot:
    """Files of the git+DVC repository `repo` at `rev` (experiment name, branch, tag or commit)."""

    repo: Path
    rev: str
    name: str = ""
    _fs: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.rev

    @property
    def fs(self) -> Any:
        if self._fs is None:
            from dvc.api import DVCFileSystem
            from dvc.exceptions import DvcException

            try:
                self._fs = DVCFileSystem(os.fspath(self.repo), rev=self.rev)
                self._fs.ls("/", detail=False)  # resolves the revision now, so errors surface here
            except DvcException as exc:
                raise InputError(self.repo, f"cannot read revision/experiment {self.rev!r}: {exc}") from exc
        return self._fs

    def _relative(self, path: str) -> str:
        candidate = Path(path)
        if candidate.is_absolute():
            try:
                candidate = candidate.resolve().relative_to(self.repo.resolve())
            except ValueError as exc:
                raise InputError(path, f"is outside the repository {self.repo}") from exc
        return candidate.as_posix()

    def read_json(self, path: str) -> dict[str, Any] | None:
        relative = self._relative(path)
        if not self.fs.isfile(relative):
            return None
        try:
            text = self.fs.read_text(relative, encoding="utf-8")
        except Exception as exc:  # e.g. a DVC-tracked file whose cache is not on this machine
            raise InputError(self.where(path), f"cannot be read ({exc})") from exc
        return _parse_json(text, self.where(path))

    def list_dirs(self, path: str) -> list[str]:
        return self._list(path, "directory")

    def list_files(self, path: str) -> list[str]:
        return self._list(path, "file")

    def _list(self, path: str, kind: str) -> list[str]:
        relative = self._relative(path)
        if not self.fs.isdir(relative):
            return []
        entries = self.fs.ls(relative, detail=True)
        return sorted(Path(entry["name"]).name for entry in entries if entry["type"] == kind)

    def where(self, path: str) -> str:
        return f"{self.name}:{self._relative(path)}"


def list_experiments(repo: str | os.PathLike) -> list[str]:
    """Names of the repository's DVC experiments (all baselines), oldest baseline first."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        rows = dvc.api.exp_show(repo=os.fspath(repo))
    except DvcException as exc:
        raise InputError(repo, f"cannot list DVC experiments: {exc}") from exc
    return [row["Experiment"] for row in rows if row.get("Experiment")]


# --------------------------------------------------------------------------------------------------
# Run records and their validation against the training/evaluation output contract.


@dataclass(frozen=True)
class RunRecord:
    experiment: str
    run: str
    train: dict[str, Any]
    eval: dict[str, Any] | None
    #: deployment cost where measured: `onnx_mb` (export stage), `cpu_ms` (benchmarks/int8.py --json)
    cost: dict[str, float] = field(default_factory=dict)

    @property
    def label_level(self) -> str:
        return self.train["label_level"]

    @property
    def ref(self) -> str:
        return f"{self.experiment}:{self.run}"


def _number(value: Any, allow_none: bool = False) -> bool:
    if value is None:
        return allow_none
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(data: Mapping[str, Any], key: str, check: Any, where: str, expected: str) -> Any:
    if key not in data:
        raise InputError(where, f"missing key {key!r}")
    if not check(data[key]):
        raise InputError(where, f"{key!r} must be {expected}, got {data[key]!r}")
    return data[key]


def validate_train_metrics(data: Mapping[str, Any], where: str) -> None:
    """Check a `train_metrics.json` against the contract; InputError naming the file otherwise."""
    _require(data, "run", lambda v: isinstance(v, str) and v, where, "a run name")
    _require(data, "role", lambda v: v in ROLE_TITLES, where, f"one of {', '.join(ROLE_TITLES)}")
    _require(data, "model", lambda v: isinstance(v, str), where, "a string")
    _require(data, "label_level", lambda v: v in LEVEL_CLASS_NAMES, where, f"one of {', '.join(LEVEL_CLASS_NAMES)}")
    _require(data, "best_miou", lambda v: _number(v) and 0 <= v <= 1, where, "a number in 0..1")
    _require(data, "best_epoch", lambda v: isinstance(v, int) and v >= 1, where, "a 1-based epoch")
    _require(data, "epochs", lambda v: isinstance(v, int) and v >= 1, where, "a positive integer")
    losses = _require(data, "final_losses", lambda v: isinstance(v, dict), where, "an object")
    _require(losses, "ce", _number, f"{where} final_losses", "a number")
    for key in ("kl", "total"):
        if not _number(losses.get(key), allow_none=True):
            raise InputError(where, f"final_losses {key!r} must be a number or null, got {losses.get(key)!r}")


def validate_eval_metrics(data: Mapping[str, Any], where: str) -> None:
    """Check an `eval/metrics.json` against the contract; InputError naming the file otherwise."""
    level = _require(data, "label_level", lambda v: v in LEVEL_CLASS_NAMES, where,
                     f"one of {', '.join(LEVEL_CLASS_NAMES)}")
    for key in ("miou", "pixel_accuracy"):
        _require(data, key, lambda v: _number(v, allow_none=True) and (v is None or 0 <= v <= 1), where,
                 "a number in 0..1 or null")
    per_class = _require(data, "per_class_iou", lambda v: isinstance(v, dict), where, "an object")
    bad = [name for name, iou in per_class.items() if not (_number(iou, allow_none=True) and (iou is None or 0 <= iou <= 1))]
    if bad:
        raise InputError(where, f"per_class_iou values must be numbers in 0..1 or null: {', '.join(bad)}")
    unknown = sorted(set(per_class) - set(LEVEL_CLASS_NAMES[level]))
    if unknown:
        raise InputError(where, f"per_class_iou has classes that are not {level} classes: {', '.join(unknown)}")


def load_run(snapshot: Snapshot, runs_dir: str, run: str) -> RunRecord:
    """One run's metrics from `snapshot`; InputError naming the missing/invalid file."""
    return _record(snapshot, runs_dir, run, snapshot.read_json(f"{runs_dir}/{run}/{TRAIN_METRICS}"),
                   snapshot.read_json(f"{runs_dir}/{run}/{EVAL_METRICS}"))


def _record(snapshot: Snapshot, runs_dir: str, run: str, train: dict[str, Any] | None,
            evaluation: dict[str, Any] | None) -> RunRecord:
    train_where = snapshot.where(f"{runs_dir}/{run}/{TRAIN_METRICS}")
    eval_where = snapshot.where(f"{runs_dir}/{run}/{EVAL_METRICS}")
    if train is None:
        raise InputError(train_where, "missing: the run has no training metrics")
    validate_train_metrics(train, train_where)
    if evaluation is not None:
        validate_eval_metrics(evaluation, eval_where)
        if evaluation["label_level"] != train["label_level"]:
            raise InputError(eval_where, f"label_level {evaluation['label_level']} differs from "
                                         f"{train['label_level']} in {TRAIN_METRICS}")
    return RunRecord(snapshot.name, run, train, evaluation)


def load_runs(snapshot: Snapshot, runs_dir: str = DEFAULT_RUNS_DIR) -> list[RunRecord]:
    """Every run under `runs_dir` in `snapshot` (a run = a directory with training or eval metrics;
    directories with neither, e.g. a run still training, are skipped)."""
    records = []
    for run in snapshot.list_dirs(runs_dir):
        train = snapshot.read_json(f"{runs_dir}/{run}/{TRAIN_METRICS}")
        evaluation = snapshot.read_json(f"{runs_dir}/{run}/{EVAL_METRICS}")
        if train is None and evaluation is None:
            log.debug("%s: no metrics yet, skipped", snapshot.where(f"{runs_dir}/{run}"))
            continue
        records.append(_record(snapshot, runs_dir, run, train, evaluation))
    if not records:
        raise InputError(snapshot.where(f"{runs_dir}/*/{TRAIN_METRICS}"), "missing: no run has metrics here")
    return records


def has_runs(snapshot: Snapshot, runs_dir: str = DEFAULT_RUNS_DIR) -> bool:
    return any(snapshot.read_json(f"{runs_dir}/{run}/{TRAIN_METRICS}") is not None
               for run in snapshot.list_dirs(runs_dir))


def load_yolo_metrics(snapshot: Snapshot, path: str = DEFAULT_YOLO_METRICS) -> dict[str, Any] | None:
    return snapshot.read_json(path)


# --------------------------------------------------------------------------------------------------
# The comparison and its tables.


@dataclass(frozen=True)
class IoUDiff:
    a: RunRecord
    b: RunRecord
    deltas: dict[str, float | None]
    verdicts: dict[str, str]
    tolerance: float

    @property
    def worse(self) -> list[str]:
        return [name for name, verdict in self.verdicts.items() if verdict == "worse"]


def load_costs(snapshot: Snapshot, export_metrics: str = DEFAULT_EXPORT_METRICS,
               latency: str = DEFAULT_LATENCY) -> dict[str, dict[str, float]]:
    """Per run: ONNX size from the export stage's metrics and ONNX Runtime fp32 CPU milliseconds per frame
    from `benchmarks/int8.py --json` (a machine-dependent measurement, so no pipeline stage writes it)."""
    costs: dict[str, dict[str, float]] = {}
    for name in snapshot.list_files(export_metrics):
        if name.endswith(".json"):
            metrics = snapshot.read_json(f"{export_metrics}/{name}") or {}
            if _number(metrics.get("onnx_mb")):
                costs.setdefault(name.removesuffix(".json"), {})["onnx_mb"] = float(metrics["onnx_mb"])
    measured = snapshot.read_json(latency)
    if measured is not None:
        models = _require(measured, "models", lambda v: isinstance(v, dict), snapshot.where(latency), "an object")
        for run, row in models.items():
            if not (isinstance(row, dict) and _number(row.get("wall_fp32_ms"))):
                raise InputError(snapshot.where(latency), f"models.{run}.wall_fp32_ms must be a number")
            costs.setdefault(run, {})["cpu_ms"] = float(row["wall_fp32_ms"])
    return costs


@dataclass
class Comparison:
    records: list[RunRecord]
    yolo: dict[str, dict[str, Any]] = field(default_factory=dict)
    diff: IoUDiff | None = None


def parse_run_ref(text: str) -> tuple[str, str]:
    """`EXP:RUN` -> (EXP, RUN); a bare `RUN` means the workspace."""
    experiment, _, run = text.rpartition(":")
    if not run:
        raise InputError(None, f"run reference {text!r} has no run name (use EXP:RUN or RUN)")
    return experiment or WORKSPACE, run


def diff_runs(a: RunRecord, b: RunRecord, snapshot_a: Snapshot, snapshot_b: Snapshot, runs_dir: str,
              tolerance: float = DELTA_TOLERANCE) -> IoUDiff:
    """Per-class IoU change from run `a` to run `b` (same label level, both evaluated)."""
    for record, snapshot in ((a, snapshot_a), (b, snapshot_b)):
        if record.eval is None:
            raise InputError(snapshot.where(f"{runs_dir}/{record.run}/{EVAL_METRICS}"),
                             "missing: run the evaluate stage for a per-class comparison")
    if a.label_level != b.label_level:
        raise InputError(None, f"cannot diff per-class IoU of {a.ref} ({a.label_level}) and {b.ref} ({b.label_level})")
    deltas = iou_deltas(a.eval["per_class_iou"], b.eval["per_class_iou"])
    return IoUDiff(a, b, deltas, classify_deltas(deltas, tolerance), tolerance)


def compare(snapshots: Sequence[Snapshot], runs_dir: str = DEFAULT_RUNS_DIR,
            yolo_metrics: str = DEFAULT_YOLO_METRICS, a: str | None = None, b: str | None = None,
            tolerance: float = DELTA_TOLERANCE, export_metrics: str = DEFAULT_EXPORT_METRICS,
            latency: str = DEFAULT_LATENCY) -> Comparison:
    """Load every run of every snapshot (with its deployment cost where measured) and, with `a` and `b`
    (`EXP:RUN` or `RUN`), their IoU diff."""
    if (a is None) != (b is None):
        raise InputError(None, "--a and --b go together: name both runs to diff")
    by_name = {snapshot.name: snapshot for snapshot in snapshots}
    comparison = Comparison(records=[])
    for snapshot in snapshots:
        costs = load_costs(snapshot, export_metrics, latency)
        comparison.records.extend(replace(record, cost=costs.get(record.run, {}))
                                  for record in load_runs(snapshot, runs_dir))
        yolo = load_yolo_metrics(snapshot, yolo_metrics)
        if yolo is not None:
            comparison.yolo[snapshot.name] = yolo
    comparison.records.sort(key=_record_order({s.name: i for i, s in enumerate(snapshots)}))
    if a is not None and b is not None:
        ends = []
        for ref in (a, b):
            experiment, run = parse_run_ref(ref)
            if experiment not in by_name:
                raise InputError(None, f"{ref}: experiment {experiment!r} is not among those compared "
                                       f"({', '.join(by_name)})")
            ends.append((load_run(by_name[experiment], runs_dir, run), by_name[experiment]))
        (record_a, snapshot_a), (record_b, snapshot_b) = ends
        comparison.diff = diff_runs(record_a, record_b, snapshot_a, snapshot_b, runs_dir, tolerance)
    return comparison


def default_diff_pairs(records: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """(baseline, kd) run references of the same student, experiment and label level: the comparison
    that says what distillation changed per class (`baseline_<student>` vs `kd_<student>`)."""
    by_key = {(r.experiment, r.label_level, r.train["role"], r.run.partition("_")[2]): r for r in records}
    pairs = []
    for (experiment, level, role, student), record in by_key.items():
        baseline = by_key.get((experiment, level, "baseline", student))
        if role == "kd" and baseline is not None and record.eval and baseline.eval:
            pairs.append((baseline.ref, record.ref))
    return pairs


def _record_order(experiment_rank: Mapping[str, int]) -> Any:
    roles = list(ROLE_TITLES)
    levels = list(LEVEL_CLASS_NAMES)
    return lambda r: (experiment_rank.get(r.experiment, len(experiment_rank)), levels.index(r.label_level),
                      roles.index(r.train["role"]), r.run)


def format_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def format_losses(losses: Mapping[str, float | None]) -> str:
    """Seed report style: "CE 0.1844, KL 0.4075, total 0.5919"; KL and total only for distillation."""
    parts = [f"CE {losses['ce']:.4f}"]
    if losses.get("kl") is not None:
        parts.append(f"KL {losses['kl']:.4f}")
        if losses.get("total") is not None:
            parts.append(f"total {losses['total']:.4f}")
    return ", ".join(parts)


def level_title(level: str) -> str:
    return "Label" + level.removeprefix("level")


def seg_rows(records: Sequence[RunRecord]) -> list[tuple[str, ...]]:
    rows = []
    for record in records:
        train = record.train
        rows.append((
            record.experiment,
            level_title(record.label_level),
            f"{ROLE_TITLES[train['role']]} ({record.run})",
            train["model"],
            format_percent(train["best_miou"]),
            str(train["best_epoch"]),
            format_losses(train["final_losses"]),
            format_percent(record.eval["miou"]) if record.eval else "n/a",
        ))
    return rows


def format_number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def cost_rows(records: Sequence[RunRecord]) -> list[tuple[str, ...]]:
    """mIoU beside what a run costs to deploy: parameters and GFLOPs (evaluate stage), ONNX size (export
    stage) and CPU latency (benchmarks/int8.py), and the accuracy bought per millisecond."""
    rows = []
    for record in records:
        evaluation = record.eval or {}
        miou, cpu_ms = evaluation.get("miou"), record.cost.get("cpu_ms")
        params = evaluation.get("params")
        rows.append((
            record.experiment,
            record.run,
            format_percent(miou),
            format_number(None if params is None else params / 1e6, 3),
            format_number(evaluation.get("gflops"), 3),
            format_number(record.cost.get("onnx_mb"), 2),
            format_number(cpu_ms, 2),
            format_number(None if miou is None or not cpu_ms else 100 * miou / cpu_ms, 2),
        ))
    return rows


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix} {key}".strip()
        if isinstance(value, Mapping):
            items.extend(_flatten(value, name))
        elif value is None or isinstance(value, (int, float, str)):
            items.append((name, value))
    return items


def _format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.5f}"
    return str(value)


def yolo_rows(yolo: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(experiment, metric, value) for every scalar of each YOLO metrics file (nested keys joined)."""
    return [(experiment, name, _format_value(value))
            for experiment, metrics in yolo.items() for name, value in _flatten(metrics)]


def diff_headers(diff: IoUDiff) -> tuple[str, ...]:
    return ("Class", f"A: {diff.a.ref}", f"B: {diff.b.ref}", "Change (pt)", "Verdict")


def diff_rows(diff: IoUDiff) -> list[tuple[str, ...]]:
    ious_a, ious_b = diff.a.eval["per_class_iou"], diff.b.eval["per_class_iou"]
    rows = []
    for name, delta in diff.deltas.items():
        change = "n/a" if delta is None else f"{100 * delta:+.2f}"
        verdict = diff.verdicts[name]
        rows.append((name, format_percent(ious_a.get(name)), format_percent(ious_b.get(name)), change,
                     "**worse**" if verdict == "worse" else verdict))
    return rows


def diff_summary(diff: IoUDiff) -> str:
    miou_a, miou_b = diff.a.eval["miou"], diff.b.eval["miou"]
    change = "" if miou_a is None or miou_b is None else f" ({100 * (miou_b - miou_a):+.2f} pt)"
    worse = diff.worse
    listed = ", ".join(worse) if worse else "none"
    return (f"Eval mIoU A {format_percent(miou_a)}, B {format_percent(miou_b)}{change}. "
            f"Classes worse by more than {100 * diff.tolerance:g} pt: {len(worse)} ({listed}).")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *(line(row) for row in rows)])


def render_markdown(comparison: Comparison, diff_plot: str | None = None) -> str:
    """The whole report as Markdown; `diff_plot` is the plot's path relative to the report."""
    parts = ["# Run comparison", "", "## Semantic segmentation", "",
             "Best mIoU: best validation mIoU during training; Eval mIoU: the evaluate stage.", "",
             markdown_table(SEG_HEADERS, seg_rows(comparison.records)), "",
             "## Accuracy and deployment cost", "",
             "Params and GFLOPs (one frame at the model input): the evaluate stage; ONNX MB: the export stage "
             "(deployed models only); CPU ms/frame: ONNX Runtime fp32, batch 1, from "
             f"`benchmarks/int8.py --json {DEFAULT_LATENCY}` on the machine that ran it.", "",
             markdown_table(COST_HEADERS, cost_rows(comparison.records)), ""]
    if comparison.yolo:
        parts += ["## YOLO instance segmentation", "",
                  markdown_table(("Experiment", "Metric", "Value"), yolo_rows(comparison.yolo)), ""]
    if comparison.diff is not None:
        diff = comparison.diff
        parts += [f"## Per-class IoU: {diff.b.ref} vs {diff.a.ref} ({level_title(diff.a.label_level)})", "",
                  diff_summary(diff), "", markdown_table(diff_headers(diff), diff_rows(diff)), ""]
        if diff_plot:
            parts += [f"![per-class IoU change]({diff_plot})", ""]
    return "\n".join(parts)


def print_comparison(comparison: Comparison, console: Any = None) -> None:
    """The same tables on the terminal."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: do not squeeze the tables into 80 columns
            console = Console(width=240)

    def show(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], worse_column: int | None = None):
        table = Table(title=title, title_justify="left")
        for header in headers:
            table.add_column(header)
        for row in rows:
            style = "bold red" if worse_column is not None and "worse" in row[worse_column] else None
            table.add_row(*(cell.replace("**", "") for cell in row), style=style)
        console.print(table)

    show("Semantic segmentation", SEG_HEADERS, seg_rows(comparison.records))
    show("Accuracy and deployment cost", COST_HEADERS, cost_rows(comparison.records))
    if comparison.yolo:
        show("YOLO instance segmentation", ("Experiment", "Metric", "Value"), yolo_rows(comparison.yolo))
    if comparison.diff is not None:
        diff = comparison.diff
        show(f"Per-class IoU: {diff.b.ref} vs {diff.a.ref}", diff_headers(diff), diff_rows(diff), worse_column=4)
        console.print(diff_summary(diff), soft_wrap=True)


def write_report(comparison: Comparison, out: str | os.PathLike, diff_plot: str | os.PathLike | None = None) -> Path:
    """Write the Markdown report (and the diff plot, if there is a diff) atomically."""
    out = Path(out)
    plot_link = None
    if comparison.diff is not None:
        from idd_edge.seg.plots import plot_iou_diff

        plot_path = Path(diff_plot) if diff_plot else out.with_name(f"{out.stem}_iou_diff.png")
        diff = comparison.diff
        plot_iou_diff(diff.a.eval["per_class_iou"], diff.b.eval["per_class_iou"], plot_path,
                      labels=(diff.a.ref, diff.b.ref), tolerance=diff.tolerance)
        plot_link = os.path.relpath(plot_path, out.parent)
    write_text(out, render_markdown(comparison, plot_link))
    return out


def snapshots_for(experiments: Sequence[str], repo: str | os.PathLike = ".", include_workspace: bool = True,
                  runs_dir: str = DEFAULT_RUNS_DIR) -> list[Snapshot]:
    """Workspace (when it has runs, or when no experiment is named) plus one snapshot per experiment."""
    repo = Path(repo)
    workspace = WorkspaceSnapshot(repo)
    snapshots: list[Snapshot] = []
    if include_workspace and (not experiments or has_runs(workspace, runs_dir)):
        snapshots.append(workspace)
    for experiment in dict.fromkeys(experiments):  # keep order, drop repeats
        if experiment == WORKSPACE:
            continue
        snapshots.append(RevSnapshot(repo, experiment))
    return snapshots


# --------------------------------------------------------------------------------------------------
# CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="results table of all runs (workspace and/or DVC experiments) + per-class IoU diff",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                        help="DVC experiment names or git revisions to compare (the workspace is included)")
    parser.add_argument("--all-experiments", action="store_true", help="add every DVC experiment of the repo")
    parser.add_argument("--a", metavar="[EXP:]RUN", help="reference run of the per-class IoU diff")
    parser.add_argument("--b", metavar="[EXP:]RUN", help="run compared with --a")
    parser.add_argument("--tolerance-points", type=float, default=100 * DELTA_TOLERANCE,
                        help="IoU drop (in points) below which a class does not count as worse (default %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="Markdown report (default %(default)s)")
    parser.add_argument("--diff-plot", help="per-class IoU change plot (default: <out>_iou_diff.png)")
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="run directories, relative to the repo")
    parser.add_argument("--yolo-metrics", default=DEFAULT_YOLO_METRICS, help="YOLO metrics file, relative to the repo")
    parser.add_argument("--export-metrics", default=DEFAULT_EXPORT_METRICS,
                        help="the export stage's per-model metrics directory, relative to the repo")
    parser.add_argument("--latency", default=DEFAULT_LATENCY,
                        help="CPU latency written by `benchmarks/int8.py --json`, relative to the repo (optional)")
    parser.add_argument("--repo", default=".", help="git+DVC repository root (default: current directory)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    experiments = list(args.experiments)
    if args.all_experiments:
        experiments += list_experiments(args.repo)
    for ref in (args.a, args.b):  # experiments named only in --a/--b are loaded too
        if ref:
            experiment, _ = parse_run_ref(ref)
            if experiment != WORKSPACE:
                experiments.append(experiment)
    snapshots = snapshots_for(experiments, args.repo, runs_dir=args.runs_dir)
    comparison = compare(snapshots, args.runs_dir, args.yolo_metrics, args.a, args.b,
                         tolerance=args.tolerance_points / 100, export_metrics=args.export_metrics,
                         latency=args.latency)
    print_comparison(comparison)
    out = write_report(comparison, args.out, args.diff_plot)
    log.info("wrote %s", out)
    return 0
