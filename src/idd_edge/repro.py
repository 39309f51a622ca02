"""`idd-edge repro`: `dvc repro` with independent stages run side by side, one thread each.

DVC runs a pipeline's stages one at a time (iterative/dvc#755). On a small CPU that wastes cores: torch
gets little from a second thread for these small models and batches (2 cores: the teacher's training step
takes 277 ms on one thread and 205 ms on two, YOLOv8n-seg's epoch 1.2x faster), while two single-threaded
stages side by side each keep ~93 % of their speed (296 ms a teacher step). So this command runs up to
`--jobs` stages at once, each in its own `dvc repro --single-item` process with `cores / jobs` threads
(OMP_NUM_THREADS, which torch and our ONNX Runtime sessions follow), starting a stage once every stage it
depends on has finished.

DVC allows this: it releases the repository lock while a stage's command runs and holds read/write locks on
that stage's dependencies and outputs instead, so stages that do not share outputs can run at once;
`--wait-for-lock` makes the short locked phases (status check, commit to the cache, the dvc.lock write) of
concurrent processes queue instead of failing. Each stage still decides for itself whether it changed,
exactly as in `dvc repro`, and writes the same dvc.lock entry. What a stage computes does not depend on how
it was scheduled where its settings pin the thread count (training: `train.engine.threads`,
`yolo.*.train.threads`).

Among the stages that are ready, the one heading the longest chain of work starts first: critical-path
scheduling with each stage's seconds from its last run (`--durations`, committed with the baseline run so
that a fresh clone has them; 10 s for a stage never timed), then the number of stages downstream. On the
default pipeline that starts the teacher before YOLOv8n-seg and the slowest KD student first, and leaves the
baselines to fill the gaps. Every stage's output goes to its own log (`--log-dir`); the terminal shows which
stages run, a line a minute about each, and a failed stage's last lines.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from idd_edge.errors import InputError

DEFAULT_LOG_DIR = Path("artifacts/logs/repro")
TAIL_LINES = 40
HEARTBEAT_SECONDS = 60
DEFAULT_DURATIONS = Path("artifacts/reports/stage_seconds.json")
UNKNOWN_STAGE_SECONDS = 10.0  # a stage never timed here: most stages take seconds, the few long ones are known


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """The stages to bring up to date, in DVC's own order, and what each waits for."""

    order: tuple[str, ...]
    upstream: Mapping[str, frozenset[str]]

    def dependents(self) -> dict[str, set[str]]:
        """The stages that depend directly on each stage."""
        below: dict[str, set[str]] = {name: set() for name in self.order}
        for name in self.order:
            for parent in self.upstream[name]:
                below[parent].add(name)
        return below

    def downstream_counts(self) -> dict[str, int]:
        """How many stages depend on each stage, directly or not."""
        below = self.dependents()
        return {name: len(_descendants(name, below)) for name in self.order}

    def critical_path(self, seconds: Mapping[str, float], unknown: float) -> dict[str, float]:
        """Per stage: its expected seconds plus those of the longest chain of stages that wait for it (a
        stage without a measured time counts `unknown`). Starting the stage with the longest such path first
        keeps the pipeline's critical path moving: the teacher before YOLO, the slowest KD student first."""
        below = self.dependents()
        path: dict[str, float] = {}
        for name in reversed(self.order):  # DVC's order lists a stage after everything it depends on
            path[name] = seconds.get(name, unknown) + max((path[child] for child in below[name]), default=0.0)
        return path


def _descendants(name: str, below: Mapping[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = [name]
    while stack:
        for child in below[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def load_plan(root: Path, targets: Sequence[str] = ()) -> StagePlan:
    """The stages `dvc repro TARGETS` would visit (all of dvc.yaml without targets), from DVC's own graph."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    try:
        with Repo(str(root)) as repo:
            stages = collect_stages(repo, list(targets) or ["dvc.yaml"])
            graph = get_active_graph(repo.index.graph)  # frozen stages cut from their dependencies
            ordered = plan_repro(graph, stages)
            names = {stage: stage.addressing for stage in ordered}
            upstream = {
                names[stage]: frozenset(names[dep] for dep in graph.successors(stage) if dep in names)
                for stage in ordered
            }
    except DvcException as exc:
        raise InputError(root / "dvc.yaml", f"DVC cannot plan the run: {exc}") from None
    return StagePlan(tuple(names[stage] for stage in ordered), upstream)


class Job(Protocol):
    def poll(self) -> int | None: ...


@dataclasses.dataclass
class StageRun:
    """One stage's state: `not run`, `running`, then `ran`, `up to date`, `restored` (DVC's run cache),
    `failed` or `skipped` (an upstream stage failed)."""

    stage: str
    status: str = "not run"
    started: float | None = None
    seconds: float | None = None
    returncode: int | None = None


def run_plan(
    plan: StagePlan,
    start: Callable[[str], Job],
    jobs: int,
    keep_going: bool = False,
    on_change: Callable[[str, StageRun], None] = lambda event, run: None,
    on_wait: Callable[[], None] = lambda: None,
    expected_seconds: Mapping[str, float] | None = None,
    poll_seconds: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
) -> list[StageRun]:
    """Run every stage of `plan` once all of its upstream stages succeeded, at most `jobs` at a time.

    `start(stage)` launches a stage and returns something to `poll()` for its exit code. Of the stages that
    can start, the one with the longest critical path (`expected_seconds` of earlier runs, see
    `StagePlan.critical_path`) goes first, then the one with more stages downstream. After a failure
    no new stage starts unless `keep_going`, which runs everything not downstream of a failed stage; the
    stages already running always finish (they are committed by DVC, as in `dvc repro`). `on_change` hears
    of every start and end, `on_wait` is called while stages run (progress reports).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    path = plan.critical_path(expected_seconds or {}, UNKNOWN_STAGE_SECONDS)
    counts = plan.downstream_counts()
    position = {name: index for index, name in enumerate(plan.order)}
    runs = {name: StageRun(name) for name in plan.order}
    pending = list(plan.order)
    running: dict[str, Job] = {}
    succeeded: set[str] = set()
    stopped = False
    while pending or running:
        blocked = [name for name in pending if any(runs[up].status in ("failed", "skipped")
                                                   for up in plan.upstream[name])]
        for name in blocked:
            pending.remove(name)
            runs[name].status = "skipped"
            on_change("skipped", runs[name])
        while not stopped and len(running) < jobs:
            ready = [name for name in pending if plan.upstream[name] <= succeeded]
            if not ready:
                break
            name = max(ready, key=lambda stage: (path[stage], counts[stage], -position[stage]))
            pending.remove(name)
            runs[name].started = clock()
            running[name] = start(name)
            runs[name].status = "running"
            on_change("started", runs[name])
        if not running:
            break  # stopped after a failure, or nothing left that can start
        time.sleep(poll_seconds)
        on_wait()
        for name, job in list(running.items()):
            code = job.poll()
            if code is None:
                continue
            del running[name]
            run = runs[name]
            run.seconds, run.returncode = clock() - run.started, code
            if code == 0:
                run.status = "ran"
                succeeded.add(name)
            else:
                run.status = "failed"
                stopped = stopped or not keep_going
            on_change("finished", run)
    return [runs[name] for name in plan.order]


def default_jobs(cores: int, gpus: int) -> int:
    """One stage per core on a CPU machine. With a GPU, one at a time: side by side, the training stages would
    share the device (two full-scale trainings do not fit in one GPU's memory) and the data-loading workers."""
    return 1 if gpus else max(1, cores)


def stage_env(jobs: int, cores: int, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of each stage process: `cores / jobs` threads unless the user set OMP_NUM_THREADS,
    passive OpenMP waiting (spinning threads of processes that share cores slow each other down), unbuffered
    Python output, and this interpreter's bin/ first on PATH so the stages' `idd-edge` is the one running
    this."""
    env = dict(base)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // jobs)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("PYTHONUNBUFFERED", "1")  # stdout is a log file: progress bars must reach it as they go
    return with_own_bin_first(env)


def with_own_bin_first(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with this interpreter's bin/ first on PATH, so that `dvc` and the stages' `idd-edge` are those
    of the environment running this (no activation needed)."""
    env = dict(env)
    bin_dir = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        env["PATH"] = os.pathsep.join(filter(None, [bin_dir, env.get("PATH")]))
    return env


def log_path(log_dir: Path, stage: str) -> Path:
    return log_dir / f"{stage.replace('/', '_')}.log"


def classify(run: StageRun, log: Path) -> None:
    """`ran`, `restored` or `up to date`, from what DVC printed (it skips a stage whose dependencies and
    parameters are unchanged, and restores the outputs of a run it has cached)."""
    if run.status != "ran":
        return
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    if "Running stage" in text:
        return
    run.status = "restored" if "is cached" in text else "up to date"  # from DVC's run cache, or unchanged


def _log_lines(path: Path, window: int | None = None) -> list[str]:
    """A stage log's non-empty lines, progress-bar redraws (carriage returns) split into lines of their own;
    only from its last `window` bytes when given (the minute lines read a growing log)."""
    if not path.is_file():
        return []
    with path.open("rb") as handle:
        if window is not None:
            handle.seek(max(0, path.stat().st_size - window))
        text = handle.read().decode("utf-8", errors="replace").replace("\r", "\n")
    return [line.rstrip() for line in text.splitlines() if line.strip()]  # tracebacks keep their indent


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    return "\n".join(_log_lines(path)[-lines:])


def last_line(path: Path, limit: int = 110) -> str:
    """The last non-empty line of a log (a progress bar's latest state), shortened."""
    lines = _log_lines(path, window=4096)
    line = lines[-1].strip() if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def timings_record(runs: Sequence[StageRun], jobs: int, threads: str, wall: float) -> dict:
    """What `--log-dir`/timings.json keeps: per-stage wall seconds and start offsets, for time tables."""
    first = min((run.started for run in runs if run.started is not None), default=0.0)
    return {
        "jobs": jobs,
        "threads_per_stage": threads,
        "wall_seconds": round(wall, 1),
        "stages": [
            {"stage": run.stage, "status": run.status,
             "start": None if run.started is None else round(run.started - first, 1),
             "seconds": None if run.seconds is None else round(run.seconds, 1)}
            for run in runs
        ],
    }


def read_durations(path: Path) -> dict[str, float]:
    """Expected seconds per stage from an earlier run's `stage_seconds.json` ({} when there is none)."""
    from idd_edge.jsonfile import read_json_if_present

    data = read_json_if_present(path)
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in data.values()):
        raise InputError(path, "expected a JSON object of stage name -> seconds (>= 0)")
    return {str(name): float(seconds) for name, seconds in data.items()}


def updated_durations(previous: Mapping[str, float], runs: Sequence[StageRun]) -> dict[str, float]:
    """`previous` with the wall seconds of the stages that ran this time (an up-to-date stage's second of
    checking says nothing about its cost)."""
    merged = dict(previous)
    merged.update({run.stage: round(run.seconds, 1) for run in runs if run.status == "ran" and run.seconds})
    return dict(sorted(merged.items()))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "repro", help="dvc repro with independent stages side by side (--jobs), one log per stage")
    parser.add_argument("targets", nargs="*", help="stages or dvc.yaml files (default: the whole pipeline)")
    parser.add_argument("-j", "--jobs", type=int, default=None,
                        help="stages at a time (default: one per core, or 1 where a CUDA GPU is visible); each "
                             "gets cores/jobs threads")
    parser.add_argument("-k", "--keep-going", action="store_true",
                        help="after a failure, still run the stages that do not depend on it")
    parser.add_argument("--log-dir", type=Path, default=DEFAULT_LOG_DIR, help="one <stage>.log per stage")
    parser.add_argument("--durations", type=Path, default=DEFAULT_DURATIONS,
                        help="each stage's seconds when it last ran: read to start the longest chains first, "
                             "updated afterwards (committed with the baseline run, so a fresh clone has it)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from idd_edge import atomic

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    root = Path.cwd()
    plan = load_plan(root, args.targets)
    durations = read_durations(args.durations)
    cores = len(os.sched_getaffinity(0))
    if args.jobs is None:
        import torch

        args.jobs = default_jobs(cores, torch.cuda.device_count())
    env = stage_env(args.jobs, cores, os.environ)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    handles: dict[str, tuple[subprocess.Popen, IO[str]]] = {}

    def start(stage: str) -> subprocess.Popen:
        log = log_path(args.log_dir, stage).open("w", encoding="utf-8")
        process = subprocess.Popen(
            [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=root,
            start_new_session=True)  # its own process group, which an interrupt is passed on to
        handles[stage] = (process, log)
        return process

    done = 0

    def on_change(event: str, run: StageRun) -> None:
        nonlocal done
        stamp = time.strftime("%H:%M:%S")
        if event == "started":
            busy = ", ".join(name for name, (proc, _) in handles.items() if proc.poll() is None)
            console.print(f"{stamp} start  {run.stage}   [dim](running: {busy})[/dim]")
            return
        done += 1
        if event == "skipped":
            console.print(f"{stamp} skip   {run.stage}: an upstream stage failed")
            return
        _, log = handles[run.stage]
        log.close()
        path = log_path(args.log_dir, run.stage)
        classify(run, path)
        progress = f"[{done}/{len(plan.order)}]"
        if run.status == "failed":
            console.print(f"{stamp} [red]FAIL[/red]   {run.stage} (exit {run.returncode}, {run.seconds:.0f} s) "
                          f"{progress}; last lines of {path}:\n{tail(path)}")
        else:
            console.print(f"{stamp} {'done' if run.status == 'ran' else 'ok'}   {run.stage} "
                          f"({run.status}, {run.seconds:.0f} s) {progress}")

    last_report = time.monotonic()

    def on_wait() -> None:  # every minute: what runs, for how long, and the last line it printed
        nonlocal last_report
        if time.monotonic() - last_report < HEARTBEAT_SECONDS:
            return
        last_report = time.monotonic()
        for stage, (process, _) in handles.items():
            if process.poll() is None:
                console.print(f"{time.strftime('%H:%M:%S')} ...    {stage}: "
                              f"{last_line(log_path(args.log_dir, stage))}", markup=False)

    threads = env["OMP_NUM_THREADS"]
    console.print(f"idd-edge repro: {len(plan.order)} stages, {args.jobs} at a time, {threads} thread(s) each; "
                  f"logs in {args.log_dir}/")
    began = time.monotonic()
    try:
        runs = run_plan(plan, start, args.jobs, args.keep_going, on_change, on_wait, durations)
    except BaseException as exc:
        # Ctrl-C, a SIGINT to this process, or an error here (a closed output pipe): stop the stages, or
        # they would run on unwatched. Each runs in its own session, so the signal goes to its whole group:
        # `dvc repro` itself ignores SIGINT while its stage's command runs and leaves it to that command
        # (which it then does not commit).
        for process, _ in handles.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)
        for process, _ in handles.values():
            process.wait()
        if not isinstance(exc, KeyboardInterrupt):
            raise
        console.print("idd-edge repro: interrupted; finished stages are committed, re-run to go on")
        return 130
    wall = time.monotonic() - began
    atomic.write_json(args.log_dir / "timings.json", timings_record(runs, args.jobs, threads, wall))
    if any(run.status == "ran" for run in runs):
        atomic.write_json(args.durations, updated_durations(durations, runs))
    failed = [run.stage for run in runs if run.status == "failed"]
    not_run = [run.stage for run in runs if run.status in ("skipped", "not run")]
    ran = sum(run.status == "ran" for run in runs)
    fresh = sum(run.status in ("up to date", "restored") for run in runs)
    console.print(f"idd-edge repro: {ran} ran, {fresh} up to date, "
                  f"{len(failed)} failed, {len(not_run)} not run, in {wall:.0f} s")
    if failed:
        console.print(f"[red]failed:[/red] {', '.join(failed)}" + (f"; not run: {', '.join(not_run)}" if not_run else ""))
        return 1
    return 0
