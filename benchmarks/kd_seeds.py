"""Experiment: is the KD gain over the baseline students more than seed noise?

    .venv/bin/python benchmarks/kd_seeds.py [--seeds 1 2] [--reuse]

Runs `dvc exp run -S train.student_seed=<seed> train_baseline train_kd evaluate` for each seed in the workspace (the
teacher, its logit cache and the data stay those of the committed run, up to date in the workspace, so DVC
does not train them again: only the students' initialisation and data order change; `--force` would
re-run every stage upstream of the targets, the teacher included), then restores the committed run
(`git checkout HEAD -- params.yaml dvc.lock artifacts`, `dvc checkout`). Needs the committed run in the
workspace and DVC cache (after `make repro`) and no uncommitted change to params.yaml or dvc.lock. Reads
each run's best val mIoU from the experiment's `train_metrics.json` and adds the
committed workspace run (its `train.student_seed`). Prints Markdown tables: per student and seed the
baseline and KD mIoU and KD - baseline; the mean and the sample standard deviation of KD - baseline; per
seed the best student (by mIoU, as issue 10 judges it) and its IoU of the road-scene "thing" classes
(the evaluate stage's `eval/metrics.json`; the evaluate stages of the teacher and YOLO26n-sem stay up to date).
`--reuse` reads experiments named `kd-seed<seed>` that exist already instead of running them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from idd_edge.repro import with_own_bin_first

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def dvc(*args: str, **kwargs: object) -> None:
    """`dvc ARGS` of this interpreter's environment; its stages find `idd-edge` there too (the documented
    `.venv/bin/python benchmarks/kd_seeds.py` runs without an activated environment)."""
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ROOT, check=True,
                   env=with_own_bin_first(os.environ), **kwargs)


def experiment_ref(name: str) -> str | None:
    """The git ref of the DVC experiment `name` on the current commit, or None."""
    head = git("rev-parse", "HEAD").strip()
    refs = git("for-each-ref", f"refs/exps/{head[:2]}/{head[2:]}", "--format=%(refname)").split()
    return next((ref for ref in refs if ref.rsplit("/", 1)[-1] == name), None)


#: the classes issue 10 asks the best student to learn
THING_CLASSES = ("person", "rider", "2-wheeler", "small-vehicle", "large-vehicle")


def run_json(rev: str | None, path: str) -> dict:
    """A JSON output of the workspace run (rev None) or of an experiment's commit."""
    return json.loads((ROOT / path).read_text() if rev is None else git("show", f"{rev}:{path}"))


def best_miou(rev: str | None, run: str) -> float:
    return 100.0 * float(run_json(rev, f"artifacts/seg/{run}/train_metrics.json")["best_miou"])


def class_iou(rev: str | None, run: str) -> dict[str, float]:
    per_class = run_json(rev, f"artifacts/seg/{run}/eval/metrics.json")["per_class_iou"]
    return {name: 100.0 * float(per_class[name]) for name in THING_CLASSES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reuse", action="store_true", help="read existing kd-seed<N> experiments")
    args = parser.parse_args()

    if git("status", "--porcelain", "params.yaml", "dvc.lock").strip():
        raise SystemExit("params.yaml or dvc.lock has uncommitted changes; commit the run first")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    students = list(params["models"]["students"])
    revs: dict[int, str | None] = {int(params["train"]["student_seed"]): None}  # None: the workspace run
    try:
        for seed in args.seeds:
            name = f"kd-seed{seed}"
            if not (args.reuse and experiment_ref(name)):
                if experiment_ref(name):
                    dvc("exp", "remove", name)
                # no --force: it re-runs every stage upstream of the targets, the teacher included
                dvc("exp", "run", "-n", name, "-S", f"train.student_seed={seed}", "train_baseline", "train_kd",
                    "evaluate")
            revs[seed] = experiment_ref(name)
    finally:  # the workspace holds the last experiment's outputs: back to the committed run
        git("checkout", "HEAD", "--", "params.yaml", "dvc.lock", "artifacts")
        dvc("checkout", "--force", capture_output=True)
    for seed in args.seeds:
        name, ref = f"kd-seed{seed}", revs[seed]
        if ref is None:
            raise SystemExit(f"experiment {name} not found after running it")

    runs = [f"{role}_{student}" for student in students for role in ("baseline", "kd")]
    # one read per run and seed (a `git show` for each experiment's file), used by both tables
    miou = {seed: {run: best_miou(rev, run) for run in runs} for seed, rev in revs.items()}
    print("| student | seed | baseline mIoU | KD mIoU | KD - baseline |")
    print("|---|---|---|---|---|")
    summary = []
    for student in students:
        gains = []
        for seed in revs:
            base, kd = miou[seed][f"baseline_{student}"], miou[seed][f"kd_{student}"]
            gains.append(kd - base)
            print(f"| {student} | {seed} | {base:.2f} | {kd:.2f} | {kd - base:+.2f} |")
        spread = statistics.stdev(gains) if len(gains) > 1 else float("nan")
        summary.append(f"| {student} | {statistics.mean(gains):+.2f} | {spread:.2f} | {min(gains):+.2f} |")
    print("\n| student | mean KD - baseline | std (n-1) | worst seed |")
    print("|---|---|---|---|")
    print("\n".join(summary))

    print("\n| seed | best student | mIoU | " + " | ".join(THING_CLASSES) + " |")
    print("|---|---|---|" + "---|" * len(THING_CLASSES))
    for seed, rev in revs.items():
        best = max(runs, key=miou[seed].get)  # max keeps the first of equal scores, as before
        ious = class_iou(rev, best)
        print(f"| {seed} | {best} | {miou[seed][best]:.2f} | " + " | ".join(f"{ious[name]:.1f}" for name in THING_CLASSES) + " |")


if __name__ == "__main__":
    main()
