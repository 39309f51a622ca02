"""`idd-edge repro`: the scheduler on a fake clock of jobs, then real `dvc repro` processes side by side in a
small git+DVC project (independent stages overlap, dvc.lock ends up as `dvc repro` would write it, a failure
stops what depends on it and keeps what finished)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from idd_edge.errors import InputError
from idd_edge.repro import (StagePlan, StageRun, default_jobs, last_line, read_durations, run_plan, stage_env,
                              tail, updated_durations)

BIN = Path(sys.executable).parent


class FakeJob:
    """Finishes with `code` after `polls` polls."""

    def __init__(self, polls: int, code: int = 0):
        self.left, self.code = polls, code

    def poll(self) -> int | None:
        self.left -= 1
        return self.code if self.left <= 0 else None


def _plan(edges: dict[str, set[str]]) -> StagePlan:
    order: list[str] = []

    def visit(name: str) -> None:
        for up in sorted(edges[name]):
            visit(up)
        if name not in order:
            order.append(name)

    for name in edges:
        visit(name)
    return StagePlan(tuple(order), {name: frozenset(ups) for name, ups in edges.items()})


# prep -> {teacher -> kd -> report, yolo -> report, baseline}
GRAPH = {"prep": set(), "baseline": {"prep"}, "teacher": {"prep"}, "kd": {"teacher"}, "yolo": {"prep"},
         "report": {"kd", "yolo"}}


def _simulate(plan: StagePlan, polls: dict[str, int], jobs: int, codes: dict[str, int] | None = None,
              keep_going: bool = False, expected: dict[str, float] | None = None
              ) -> tuple[list[StageRun], list[tuple[str, str, set[str]]]]:
    """Run the plan with fake jobs; events record (event, stage, stages running at that moment)."""
    running: set[str] = set()
    events: list[tuple[str, str, set[str]]] = []

    def start(name: str) -> FakeJob:
        running.add(name)
        return FakeJob(polls[name], (codes or {}).get(name, 0))

    def on_change(event: str, run: StageRun) -> None:
        if event == "finished":
            running.discard(run.stage)
        events.append((event, run.stage, set(running)))

    ticks = iter(range(10_000))
    runs = run_plan(plan, start, jobs, keep_going, on_change, expected_seconds=expected, poll_seconds=0,
                    clock=lambda: float(next(ticks)))
    return runs, events


def test_downstream_counts_rank_the_longest_chain_first():
    counts = _plan(GRAPH).downstream_counts()
    assert counts == {"prep": 5, "baseline": 0, "teacher": 2, "kd": 1, "yolo": 1, "report": 0}


def test_stages_start_after_their_upstream_and_never_more_than_jobs_at_once():
    plan = _plan(GRAPH)
    runs, events = _simulate(plan, {"prep": 1, "baseline": 2, "teacher": 6, "kd": 2, "yolo": 3, "report": 1}, jobs=2)
    assert all(run.status == "ran" for run in runs)
    finished: set[str] = set()
    for event, stage, running in events:
        assert len(running) <= 2
        if event == "started":
            assert plan.upstream[stage] <= finished, f"{stage} started before {plan.upstream[stage] - finished}"
        else:
            finished.add(stage)
    starts = [stage for event, stage, _ in events if event == "started"]
    assert starts[:2] == ["prep", "teacher"]  # the stage with most downstream work first, beside nothing
    assert starts.index("yolo") < starts.index("baseline")  # yolo leads to the report, the baseline to nothing
    # the teacher did not run alone: yolo started beside it
    assert any(stage == "yolo" and running == {"teacher", "yolo"} for event, stage, running in events
               if event == "started")


def test_critical_path_adds_the_longest_chain_below_each_stage():
    path = _plan(GRAPH).critical_path({"teacher": 100, "kd": 20, "yolo": 50}, unknown=1)
    assert path == {"report": 1, "kd": 21, "teacher": 121, "yolo": 51, "baseline": 1, "prep": 122}


def test_measured_times_start_the_longest_chain_first():
    # By stage counts the teacher (2 below it) goes before the yolo (1); measured, yolo's chain is longer.
    plan = _plan(GRAPH)
    polls = {"prep": 1, "baseline": 1, "teacher": 2, "kd": 1, "yolo": 9, "report": 1}
    _, by_count = _simulate(plan, polls, jobs=1)
    _, by_time = _simulate(plan, polls, jobs=1, expected={"teacher": 2, "kd": 1, "yolo": 9})
    started = lambda events: [stage for event, stage, _ in events if event == "started"]  # noqa: E731
    assert started(by_count)[1] == "teacher" and started(by_time)[1] == "yolo"


def test_durations_file_round_trip_keeps_only_stages_that_ran(tmp_path):
    path = tmp_path / "stage_seconds.json"
    assert read_durations(path) == {}
    runs = [StageRun("a", "ran", 0.0, 12.34), StageRun("b", "up to date", 0.0, 1.5), StageRun("c", "failed", 0.0, 3)]
    merged = updated_durations({"b": 40.0, "old": 5.0}, runs)
    assert merged == {"a": 12.3, "b": 40.0, "old": 5.0}
    path.write_text(json.dumps(merged))
    assert read_durations(path) == merged
    path.write_text(json.dumps({"a": "slow"}))
    with pytest.raises(InputError, match="stage_seconds.json: expected a JSON object"):
        read_durations(path)


def test_one_job_is_dvc_order_one_at_a_time():
    plan = _plan(GRAPH)
    _, events = _simulate(plan, dict.fromkeys(GRAPH, 1), jobs=1)
    assert all(len(running) <= 1 for _, _, running in events)


def test_a_failure_stops_new_stages_but_lets_running_ones_finish():
    plan = _plan(GRAPH)
    runs, _ = _simulate(plan, {"prep": 1, "baseline": 1, "teacher": 1, "kd": 1, "yolo": 5, "report": 1}, jobs=2,
                        codes={"teacher": 3})
    status = {run.stage: run.status for run in runs}
    assert status["teacher"] == "failed" and status["yolo"] == "ran"  # yolo was running: it finished
    assert status["kd"] in ("skipped", "not run") and status["report"] in ("skipped", "not run")
    assert status["baseline"] == "not run"
    assert {run.stage: run.returncode for run in runs}["teacher"] == 3


def test_keep_going_runs_everything_not_downstream_of_the_failure():
    plan = _plan(GRAPH)
    runs, _ = _simulate(plan, dict.fromkeys(GRAPH, 1), jobs=2, codes={"teacher": 1}, keep_going=True)
    status = {run.stage: run.status for run in runs}
    assert status == {"prep": "ran", "baseline": "ran", "teacher": "failed", "kd": "skipped", "yolo": "ran",
                      "report": "skipped"}


def test_jobs_must_be_positive():
    with pytest.raises(ValueError, match="jobs"):
        run_plan(_plan(GRAPH), lambda name: FakeJob(1), 0)


def test_default_jobs_one_per_core_but_one_at_a_time_on_a_gpu():
    assert default_jobs(cores=2, gpus=0) == 2
    assert default_jobs(cores=16, gpus=1) == 1
    assert default_jobs(cores=0, gpus=0) == 1


def test_stage_env_splits_the_cores_unless_the_user_set_threads():
    env = stage_env(jobs=2, cores=8, base={"PATH": "/usr/bin"})
    assert env["OMP_NUM_THREADS"] == "4" and env["OMP_WAIT_POLICY"] == "PASSIVE" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].split(os.pathsep) == [str(BIN), "/usr/bin"]
    assert stage_env(jobs=4, cores=2, base={})["OMP_NUM_THREADS"] == "1"
    assert stage_env(jobs=2, cores=8, base={"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"


def test_tail_and_last_line_read_progress_bar_output(tmp_path):
    log = tmp_path / "stage.log"
    log.write_text("a\n" + "bar 1%\rbar 50%\rbar 100%\n" + "\n".join(f"line {i}" for i in range(50)) + "\n")
    assert tail(log, 3).splitlines() == ["line 47", "line 48", "line 49"]
    assert tail(tmp_path / "missing.log") == ""
    assert last_line(log) == "line 49"
    log.write_text("Epoch 3/40\r 10%|#    |\r 55%|#####|" + "x" * 200)
    assert last_line(log, limit=20) == "55%|#####|xxxxxxx..."


# A stage writes its start/end times and the thread count it was given; `slow` stages sleep long enough
# for a second process to start beside them.
STAGE_SCRIPT = """
import os, sys, time, json
name, seconds, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
start = time.time(); time.sleep(seconds)
os.makedirs("out", exist_ok=True)
json.dump({"start": start, "end": time.time(), "threads": os.environ.get("OMP_NUM_THREADS")},
          open(f"out/{name}.json", "w"))
sys.exit(code)
"""


def _project(tmp_path: Path, fail: str = "", seconds: float = 4) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "stage.py").write_text(STAGE_SCRIPT)

    def stage(name: str, seconds: float, deps: list[str]) -> dict:
        return {"cmd": f"python stage.py {name} {seconds} {1 if name == fail else 0}",
                "deps": ["stage.py", *[f"out/{dep}.json" for dep in deps]], "outs": [f"out/{name}.json"]}

    stages = {"prep": stage("prep", 0, []), "left": stage("left", seconds, ["prep"]),
              "right": stage("right", seconds, ["prep"]), "join": stage("join", 0, ["left", "right"])}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    for command in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(command, cwd=project, check=True, capture_output=True)
    return project


def _repro(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, "-m", "idd_edge.cli", "repro", "--jobs", "2", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_real_dvc_runs_independent_stages_side_by_side_and_writes_the_same_lock(tmp_path):
    project = _project(tmp_path)
    done = _repro(project)
    assert done.returncode == 0, done.stdout + done.stderr
    times = {name: json.loads((project / "out" / f"{name}.json").read_text()) for name in ("left", "right")}
    assert times["left"]["start"] < times["right"]["end"] and times["right"]["start"] < times["left"]["end"], times
    cores = len(os.sched_getaffinity(0))
    assert times["left"]["threads"] == str(max(1, cores // 2))
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prep", "left", "right", "join"}
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=project, capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout, status.stdout
    timings = json.loads((project / "artifacts/logs/repro/timings.json").read_text())
    assert {row["stage"]: row["status"] for row in timings["stages"]} == dict.fromkeys(lock["stages"], "ran")
    seconds = json.loads((project / "artifacts/reports/stage_seconds.json").read_text())
    assert set(seconds) == set(lock["stages"]) and seconds["left"] >= 4
    again = _repro(project)
    assert again.returncode == 0 and "0 ran, 4 up to date" in again.stderr, again.stderr
    assert json.loads((project / "artifacts/reports/stage_seconds.json").read_text()) == seconds


@pytest.mark.slow
def test_real_dvc_failure_names_the_stage_and_keeps_finished_outputs(tmp_path):
    project = _project(tmp_path, fail="right")
    done = _repro(project, "--log-dir", "logs")
    assert done.returncode == 1
    assert "FAIL" in done.stderr and "right" in done.stderr and "logs/right.log" in done.stderr
    assert "failed to reproduce 'right'" in done.stderr  # the tail of DVC's own output in the stage log
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prep", "left"}  # `left` ran beside the failure and was committed
    assert not (project / "out" / "join.json").exists()


@pytest.mark.slow
def test_interrupting_repro_stops_its_stages_and_a_rerun_finishes(tmp_path):
    import signal
    import time

    project = _project(tmp_path, seconds=30)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "idd_edge.cli", "repro", "--jobs", "2"], cwd=project, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = project / "artifacts/logs/repro/left.log"
    deadline = time.monotonic() + 60
    while "Running stage" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # to this process only, as `kill -INT` would: the stages must hear of it
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert not (project / "out" / "left.json").exists()  # stopped mid-sleep, nothing committed of it
    lock = yaml.safe_load((project / "dvc.lock").read_text()) if (project / "dvc.lock").exists() else {}
    assert "left" not in lock.get("stages", {})
    (project / "dvc.yaml").write_text((project / "dvc.yaml").read_text().replace(" 30 ", " 0 "))
    done = _repro(project)
    assert done.returncode == 0 and "0 failed" in done.stderr, done.stderr
