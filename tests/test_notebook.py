"""notebooks/compare_runs.ipynb runs top to bottom on the project's own interpreter against a tmp runs
directory and shows the results table, the per-class IoU plots and the baseline -> KD diff."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from idd_edge.labels import LEVEL_CLASS_NAMES
from tests.test_compare import write_run

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_runs.ipynb"


def test_python3_kernel_runs_this_interpreter():
    """The `python3` kernelspec says `python`; jupyter_client swaps in the running interpreter, so the
    notebook imports the same (venv, editable) idd_edge as the tests."""
    command = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert command[0] == sys.executable


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells)
    assert "parameters" in code_cells[0].metadata.get("tags", [])


@pytest.mark.slow
def test_notebook_executes_on_a_runs_directory(tmp_path, monkeypatch):
    level3 = LEVEL_CLASS_NAMES["level3"]
    write_run(tmp_path, "teacher", "teacher", 0.6091, model="convnext_upernet", best_epoch=50,
              losses={"ce": 0.1890, "kl": None, "total": 0.1890})
    write_run(tmp_path, "baseline_lraspp", "baseline", 0.5156, per_class={name: 0.5 for name in level3})
    write_run(tmp_path, "kd_lraspp", "kd", 0.5138, losses={"ce": 0.3053, "kl": 0.5106, "total": 0.8158},
              per_class={name: 0.5 for name in level3} | {"road": 0.41})
    plots = tmp_path / "plots"
    monkeypatch.setenv("IDD_EDGE_RUNS_DIR", str(tmp_path / "artifacts" / "seg"))
    monkeypatch.setenv("IDD_EDGE_PLOTS_DIR", str(plots))
    for name in ("IDD_EDGE_RUN_A", "IDD_EDGE_RUN_B", "IDD_EDGE_YOLO_METRICS"):
        monkeypatch.delenv(name, raising=False)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=180,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    markdown = "\n".join(output.data["text/markdown"] for output in outputs
                         if output.output_type == "display_data" and "text/markdown" in output.data)
    assert "| Experiment | Label | Run | Model | Best mIoU | Best Epoch | Final losses | Eval mIoU |" in markdown
    assert "| workspace | Label3 | Logit KD (kd_lraspp) | m | 51.38% | 10 | CE 0.3053, KL 0.5106, total 0.8158 |" in markdown
    assert "### workspace:kd_lraspp vs workspace:baseline_lraspp" in markdown
    assert "Classes worse by more than 0.5 pt: 1 (road)." in markdown
    images = [output for output in outputs if output.output_type == "display_data" and "image/png" in output.data]
    assert len(images) == 3 + 3 + 1  # per-class IoU and confusion per run, one diff
    assert sorted(p.name for p in plots.iterdir()) == sorted(
        [f"{run}_{kind}.png" for run in ("teacher", "baseline_lraspp", "kd_lraspp") for kind in ("iou", "confusion")]
        + ["baseline_lraspp_vs_kd_lraspp_iou_diff.png"])
    json.dumps(notebook)  # the executed notebook stays serialisable (no stray objects in outputs)
