"""`idd-edge compare`: tables from realistic run directories, per-class diffs, clear errors, and a real
git + DVC repository with two `dvc exp run` experiments compared across revisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from idd_edge import cli
from idd_edge.errors import InputError
from idd_edge.labels import LEVEL_CLASS_NAMES
from idd_edge.seg.compare import (
    RevSnapshot,
    WorkspaceSnapshot,
    compare,
    default_diff_pairs,
    format_losses,
    load_runs,
    render_markdown,
    snapshots_for,
)

LEVEL3 = LEVEL_CLASS_NAMES["level3"]
RUNS = "artifacts/seg"


def write_run(root: Path, run: str, role: str, best_miou: float, *, level: str = "level3", model: str = "m",
              best_epoch: int = 10, losses: dict | None = None, per_class: dict | None = None,
              evaluate: bool = True) -> Path:
    """A run directory with the training/evaluation output contract's files."""
    run_dir = root / RUNS / run
    run_dir.mkdir(parents=True, exist_ok=True)
    kd = role == "kd"
    losses = losses or {"ce": 0.3, "kl": 0.5 if kd else None, "total": 0.8 if kd else 0.3}
    (run_dir / "train_metrics.json").write_text(json.dumps({
        "run": run, "role": role, "model": model, "label_level": level, "best_miou": best_miou,
        "best_epoch": best_epoch, "epochs": 20, "final_losses": losses}))
    if evaluate:
        names = LEVEL_CLASS_NAMES[level]
        per_class = per_class or {name: best_miou for name in names}
        present = [v for v in per_class.values() if v is not None]
        (run_dir / "eval").mkdir(exist_ok=True)
        (run_dir / "eval" / "metrics.json").write_text(json.dumps({
            "run": run, "label_level": level, "miou": sum(present) / len(present), "pixel_accuracy": 0.9,
            "num_images": 4, "per_class_iou": per_class}))
        (run_dir / "eval" / "confusion.json").write_text(json.dumps(
            {"class_names": list(names), "matrix": [[0] * len(names)] * len(names)}))
    return run_dir


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """Three level3 runs like the seed project's, in a tmp workspace that is the current directory."""
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path, "teacher", "teacher", 0.6091, model="convnext_upernet", best_epoch=50,
              losses={"ce": 0.1890, "kl": None, "total": 0.1890})
    write_run(tmp_path, "baseline_lraspp", "baseline", 0.5156, model="mnv4s_lraspp", best_epoch=47,
              losses={"ce": 0.3038, "kl": None, "total": 0.3038},
              per_class={name: 0.5 for name in LEVEL3})
    kd_ious = {name: 0.5 for name in LEVEL3} | {"road": 0.45, "car": 0.58, "sky": 0.503, "wall": None}
    write_run(tmp_path, "kd_lraspp", "kd", 0.5138, model="mnv4s_lraspp", best_epoch=114,
              losses={"ce": 0.3053, "kl": 0.5106, "total": 0.8158}, per_class=kd_ious)
    return tmp_path


@pytest.fixture
def compare_cli(monkeypatch):
    """The real `idd-edge` entry point with only this stage registered (other stages' modules are not
    needed to test this one; registration itself is tested separately)."""
    monkeypatch.setattr(cli, "STAGE_MODULES", ("idd_edge.seg.compare",))
    return lambda *argv: cli.main(["compare", *argv])


def test_compare_is_registered_in_the_cli():
    """The real parser (every stage module registering itself) dispatches `compare` to this module."""
    args = cli.build_parser().parse_args(["compare", "--a", "baseline_lraspp", "--b", "kd_lraspp"])
    assert args.command == "compare" and args.handler.__module__ == "idd_edge.seg.compare"


def test_losses_are_formatted_like_the_seed_report():
    assert format_losses({"ce": 0.18441, "kl": 0.40749, "total": 0.5919}) == "CE 0.1844, KL 0.4075, total 0.5919"
    assert format_losses({"ce": 0.1101, "kl": None, "total": 0.1101}) == "CE 0.1101"


def test_seed_style_table_from_workspace_runs(workspace):
    comparison = compare([WorkspaceSnapshot()])
    markdown = render_markdown(comparison)
    lines = markdown.splitlines()
    header = "| Experiment | Label | Run | Model | Best mIoU | Best Epoch | Final losses | Eval mIoU |"
    table = lines[lines.index(header):]
    # ordered teacher, baseline, kd as in the seed report
    assert table[2] == ("| workspace | Label3 | Teacher (teacher) | convnext_upernet | 60.91% | 50 | CE 0.1890 "
                        "| 60.91% |")
    assert table[3].startswith("| workspace | Label3 | Baseline student (baseline_lraspp) | mnv4s_lraspp | 51.56% | 47 "
                               "| CE 0.3038 | 50.00% |")
    assert table[4].startswith("| workspace | Label3 | Logit KD (kd_lraspp) | mnv4s_lraspp | 51.38% | 114 "
                               "| CE 0.3053, KL 0.5106, total 0.8158 |")
    assert "YOLO" not in markdown  # no YOLO metrics in this workspace: section skipped


def test_cli_writes_report_diff_and_plot(workspace, compare_cli, capsys):
    out = workspace / "artifacts" / "reports" / "compare.md"
    assert compare_cli("--a", "baseline_lraspp", "--b", "kd_lraspp", "--out", str(out)) == 0
    markdown = out.read_text()
    assert "| workspace | Label3 | Logit KD (kd_lraspp)" in markdown
    assert "## Per-class IoU: workspace:kd_lraspp vs workspace:baseline_lraspp (Label3)" in markdown
    assert "| road | 50.00% | 45.00% | -5.00 | **worse** |" in markdown
    assert "| car | 50.00% | 58.00% | +8.00 | better |" in markdown
    assert "| sky | 50.00% | 50.30% | +0.30 | same |" in markdown  # within the 0.5 pt tolerance
    assert "| wall | 50.00% | n/a | n/a | n/a |" in markdown
    assert "Classes worse by more than 0.5 pt: 1 (road)." in markdown
    plot = out.with_name("compare_iou_diff.png")
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "![per-class IoU change](compare_iou_diff.png)" in markdown
    printed = capsys.readouterr().out
    assert "Logit KD (kd_lraspp)" in printed and "Classes worse by more than 0.5 pt: 1 (road)" in printed


def test_tolerance_changes_what_counts_as_worse(workspace, compare_cli):
    out = workspace / "report.md"
    assert compare_cli("--a", "baseline_lraspp", "--b", "kd_lraspp", "--tolerance-points", "10",
                       "--out", str(out)) == 0
    assert "Classes worse by more than 10 pt: 0 (none)." in out.read_text()


def test_yolo_metrics_are_included_when_present(workspace):
    yolo = {"box": {"mAP50": 0.36054, "mAP50-95": 0.21013, "precision": 0.69262, "recall": 0.32409},
            "mask": {"mAP50": 0.3256, "mAP50-95": 0.15582, "precision": 0.63365, "recall": 0.28907},
            "best_epoch": 90, "losses": {"train": {"box": 1.31612, "seg": 2.48142}}}
    (workspace / "artifacts" / "yolo").mkdir(parents=True)
    (workspace / "artifacts" / "yolo" / "metrics.json").write_text(json.dumps(yolo))
    markdown = render_markdown(compare([WorkspaceSnapshot()]))
    assert "## YOLO instance segmentation" in markdown
    assert "| workspace | box mAP50-95 | 0.21013 |" in markdown
    assert "| workspace | mask recall | 0.28907 |" in markdown
    assert "| workspace | best_epoch | 90 |" in markdown
    assert "| workspace | losses train seg | 2.48142 |" in markdown


def test_errors_name_the_missing_or_bad_file(workspace, compare_cli, capsys):
    assert compare_cli("--a", "baseline_lraspp", "--b", "kd_nope", "--out", "r.md") == 2
    assert "artifacts/seg/kd_nope/train_metrics.json: missing" in capsys.readouterr().err

    (workspace / RUNS / "teacher" / "eval" / "metrics.json").unlink()
    assert compare_cli("--a", "teacher", "--b", "kd_lraspp", "--out", "r.md") == 2
    assert "artifacts/seg/teacher/eval/metrics.json: missing: run the evaluate stage" in capsys.readouterr().err

    (workspace / RUNS / "kd_lraspp" / "train_metrics.json").unlink()
    assert compare_cli("--out", "r.md") == 2
    assert "artifacts/seg/kd_lraspp/train_metrics.json: missing" in capsys.readouterr().err
    assert not (workspace / "r.md").exists()


def test_invalid_metrics_are_rejected_with_the_key(workspace):
    path = workspace / RUNS / "teacher" / "train_metrics.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | {"best_miou": 60.91}))  # percent instead of 0..1
    with pytest.raises(InputError, match=r"teacher/train_metrics.json: 'best_miou' must be a number in 0\.\.1"):
        load_runs(WorkspaceSnapshot())
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "role"}))
    with pytest.raises(InputError, match="missing key 'role'"):
        load_runs(WorkspaceSnapshot())
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_runs(WorkspaceSnapshot())


def test_diff_across_label_levels_is_refused(workspace):
    write_run(workspace, "teacher_l1", "teacher", 0.78, level="level1")
    with pytest.raises(InputError, match=r"cannot diff per-class IoU of workspace:teacher \(level3\) and workspace:teacher_l1 \(level1\)"):
        compare([WorkspaceSnapshot()], a="teacher", b="teacher_l1")
    with pytest.raises(InputError, match="--a and --b go together"):
        compare([WorkspaceSnapshot()], a="teacher")


def test_empty_workspace_names_what_is_missing(tmp_path):
    with pytest.raises(InputError, match=r"artifacts/seg/\*/train_metrics.json: missing: no run has metrics"):
        compare([WorkspaceSnapshot(tmp_path)])


# --------------------------------------------------------------------------------------------------
# A real git + DVC repository: two experiments of a trivial stage that writes the metrics files.

MAKE_METRICS = textwrap.dedent("""
    import json, os, yaml
    p = yaml.safe_load(open("params.yaml"))
    names = p["classes"]
    for run, role in (("teacher", "teacher"), ("kd_s", "kd")):
        miou = p[run]
        os.makedirs(f"artifacts/seg/{run}/eval", exist_ok=True)
        losses = {"ce": 0.2, "kl": 0.4 if role == "kd" else None, "total": 0.6 if role == "kd" else 0.2}
        json.dump({"run": run, "role": role, "model": "tiny", "label_level": "level1", "best_miou": miou,
                   "best_epoch": 3, "epochs": 5, "final_losses": losses},
                  open(f"artifacts/seg/{run}/train_metrics.json", "w"))
        per_class = {n: miou for n in names} | {names[0]: p["first_class_iou"]}
        json.dump({"run": run, "label_level": "level1", "miou": miou, "pixel_accuracy": 0.9, "num_images": 2,
                   "per_class_iou": per_class}, open(f"artifacts/seg/{run}/eval/metrics.json", "w"))
""")

DVC_YAML = textwrap.dedent("""
    stages:
      train:
        cmd: {python} make_metrics.py
        deps: [make_metrics.py]
        params: [teacher, kd_s, first_class_iou]
        outs:
          - artifacts/seg/teacher/eval
          - artifacts/seg/kd_s/eval
        metrics:
          - artifacts/seg/teacher/train_metrics.json:
              cache: false
          - artifacts/seg/kd_s/train_metrics.json:
              cache: false
""")


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)


def _dvc(repo, *args):
    dvc = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(dvc), *args], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    """Baseline commit (teacher 0.70, kd 0.60) and experiments `exp-low`, `exp-high` run with `dvc exp run -S`."""
    repo = tmp_path_factory.mktemp("dvc_repo")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "test")
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")
    (repo / "make_metrics.py").write_text(MAKE_METRICS)
    (repo / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    classes = list(LEVEL_CLASS_NAMES["level1"])
    (repo / "params.yaml").write_text(json.dumps({"teacher": 0.7, "kd_s": 0.6, "first_class_iou": 0.6,
                                                  "classes": classes}))
    _dvc(repo, "repro", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "baseline")
    _dvc(repo, "exp", "run", "-q", "-n", "exp-low", "-S", "kd_s=0.55", "-S", "first_class_iou=0.40")
    _dvc(repo, "exp", "run", "-q", "-n", "exp-high", "-S", "kd_s=0.65", "-S", "first_class_iou=0.62")
    return repo


@pytest.mark.slow
def test_compare_across_dvc_experiments(dvc_repo, compare_cli, monkeypatch):
    monkeypatch.chdir(dvc_repo)
    out = dvc_repo / "reports" / "compare.md"
    assert compare_cli("main", "exp-low", "exp-high", "--a", "exp-high:kd_s", "--b", "exp-low:kd_s",
                       "--out", str(out)) == 0
    markdown = out.read_text()
    kd_rows = [line for line in markdown.splitlines() if "Logit KD (kd_s)" in line]
    # workspace (= the last experiment applied), then the named revisions in order
    assert [row.split(" | ")[0] for row in kd_rows] == ["| workspace", "| main", "| exp-low", "| exp-high"]
    assert [row.split(" | ")[4] for row in kd_rows] == ["65.00%", "60.00%", "55.00%", "65.00%"]
    assert "| drivable | 62.00% | 40.00% | -22.00 | **worse** |" in markdown  # read from DVC-cached eval/
    assert "| non-drivable | 65.00% | 55.00% | -10.00 | **worse** |" in markdown
    assert (dvc_repo / "reports" / "compare_iou_diff.png").is_file()


@pytest.mark.slow
def test_all_experiments_and_unknown_revision(dvc_repo, compare_cli, monkeypatch, capsys):
    monkeypatch.chdir(dvc_repo)
    assert compare_cli("--all-experiments", "--out", "all.md") == 0
    experiments = {line.split(" | ")[0] for line in (dvc_repo / "all.md").read_text().splitlines()
                   if "(teacher)" in line}
    assert experiments == {"| workspace", "| exp-low", "| exp-high"}
    assert compare_cli("no-such-exp", "--out", "x.md") == 2
    assert "cannot read revision/experiment 'no-such-exp'" in capsys.readouterr().err
    snapshot = RevSnapshot(dvc_repo, "exp-low")
    assert snapshot.list_dirs("artifacts/seg") == ["kd_s", "teacher"]
    assert snapshot.list_dirs(os.fspath(dvc_repo / "artifacts" / "seg")) == ["kd_s", "teacher"]  # absolute path
    assert [s.name for s in snapshots_for(["exp-low"], dvc_repo)] == ["workspace", "exp-low"]


def test_default_diff_pairs_match_baseline_and_kd_of_the_same_student(workspace):
    write_run(workspace, "kd_other", "kd", 0.5)  # no baseline_other: no pair
    write_run(workspace, "baseline_deeplab", "baseline", 0.55, evaluate=False)
    write_run(workspace, "kd_deeplab", "kd", 0.57)  # baseline not evaluated: no pair
    records = compare([WorkspaceSnapshot()]).records
    assert default_diff_pairs(records) == [("workspace:baseline_lraspp", "workspace:kd_lraspp")]


def test_cost_table_puts_size_and_speed_beside_miou(workspace, compare_cli):
    """Params and GFLOPs from eval/metrics.json, ONNX MB from the export stage, CPU ms from
    benchmarks/int8.py --json; runs without them read n/a, and a malformed latency file is named."""
    write_run(workspace, "ultralytics_sem", "ultralytics", 0.30, model="yolo26n-sem", level="level3")
    for run, params, gflops in (("kd_lraspp", 344_992, 0.1603), ("ultralytics_sem", 1_632_512, 0.3038)):
        path = workspace / RUNS / run / "eval" / "metrics.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"params": params, "gflops": gflops}))
    export = workspace / "artifacts" / "reports" / "export"
    export.mkdir(parents=True)
    (export / "kd_lraspp.json").write_text(json.dumps({"onnx_mb": 1.391, "parity": {}}))
    (export / "ultralytics_sem.json").write_text(json.dumps({"onnx_mb": 6.274, "parity": {}}))
    latency = workspace / "artifacts" / "reports" / "latency.json"
    latency.write_text(json.dumps({"threads": 2, "models": {"kd_lraspp": {"wall_fp32_ms": 2.5},
                                                              "ultralytics_sem": {"wall_fp32_ms": 12.0}}}))
    out = workspace / "report.md"
    assert compare_cli("--out", str(out)) == 0
    markdown = out.read_text()
    assert "| Experiment | Run | Eval mIoU | Params (M) | GFLOPs | ONNX MB | CPU ms/frame | mIoU pt per ms |" in markdown
    lines = markdown.splitlines()
    assert "| workspace | ultralytics_sem | 30.00% | 1.633 | 0.304 | 6.27 | 12.00 | 2.50 |" in lines
    kd_row = next(line for line in lines if line.startswith("| workspace | kd_lraspp | "))
    assert kd_row.endswith("| 50.13% | 0.345 | 0.160 | 1.39 | 2.50 | 20.05 |")  # 50.13 % / 2.5 ms
    assert "| workspace | teacher | 60.91% | n/a | n/a | n/a | n/a | n/a |" in lines
    assert "| workspace | Label3 | Ultralytics semantic (ultralytics_sem) | yolo26n-sem | 30.00% |" in markdown

    latency.write_text(json.dumps({"models": {"kd_lraspp": {"cpu_fp32_ms": 2.5}}}))
    with pytest.raises(InputError, match=r"latency\.json.*models\.kd_lraspp\.wall_fp32_ms must be a number"):
        compare([WorkspaceSnapshot()])
