"""dvc.yaml's source deps cannot drift: each stage must list every file of ours that its `idd-edge
<subcommand>` can import (the static import closure of the subcommand's module, lazy imports included),
and nothing it cannot. Otherwise editing, say, labels.py would not re-run training."""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path

import pytest
import yaml

from idd_edge import cli
from tests.import_graph import REPO, closure, module_file

#: Files every stage imports that cannot change what a stage computes, so that editing them does not re-run
#: the pipeline: exception classes (messages only) and the params.yaml reader (what it reads, DVC tracks
#: through each stage's `params:`).
PLUMBING = {"src/idd_edge/errors.py", "src/idd_edge/config.py"}


def subcommand_modules() -> dict[str, str]:
    """`idd-edge` subcommand -> the module that registers it (as the CLI itself builds them)."""
    owners = {}
    for module_name in cli.STAGE_MODULES:
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module_name).add_parser(subparsers)
        owners.update(dict.fromkeys(subparsers.choices, module_name))
    return owners


def is_package_marker(path: Path) -> bool:
    """A package `__init__.py` that only documents and re-exports (docstring, imports, `__version__`/
    `__all__`, `os.environ.setdefault`, a lazy `__getattr__` whose imports the closure follows)."""
    if path.name != "__init__.py":
        return False
    for node in ast.parse(path.read_text()).body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        environ = isinstance(node, ast.Expr) and "os.environ.setdefault" in ast.unparse(node)
        dunder = isinstance(node, ast.Assign) and all(
            isinstance(t, ast.Name) and t.id in ("__version__", "__all__") for t in node.targets)
        lazy = isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
        if not (docstring or environ or dunder or lazy or isinstance(node, (ast.Import, ast.ImportFrom))):
            return False
    return True


def required_files(module_name: str) -> set[str]:
    files = {module_file(name) for name in closure([module_name])}
    return {str(path.relative_to(REPO)) for path in files if not is_package_marker(path)} - PLUMBING


def stages() -> dict[str, dict]:
    """Stage name -> its definition (a foreach/matrix stage's template)."""
    definitions = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in definitions.items()}


def subcommand(cmd: str) -> str:
    words = cmd.split()
    return words[words.index("idd-edge") + 1]


def source_deps(stage: dict) -> list[str]:
    return [str(dep) for dep in stage.get("deps", []) if str(dep).startswith(("src/", "deploy/src/"))]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_lists_every_source_file_it_imports(name):
    stage = stages()[name]
    module = subcommand_modules()[subcommand(stage["cmd"])]
    deps = source_deps(stage)
    missing = sorted(path for path in required_files(module) if not covered(path, deps))
    assert not missing, f"dvc.yaml stage {name!r} ({module}) imports but does not depend on: {', '.join(missing)}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_lists_no_source_file_it_does_not_import(name):
    """A listed file that the stage does not import (renamed, or never used) only re-runs it needlessly;
    folders (the bundle ships the whole runtime) are left alone."""
    stage = stages()[name]
    module = subcommand_modules()[subcommand(stage["cmd"])]
    needed = required_files(module)
    extra = sorted(dep for dep in source_deps(stage) if dep.endswith(".py") and dep not in needed)
    assert not extra, f"dvc.yaml stage {name!r} ({module}) depends on files it does not import: {', '.join(extra)}"


def test_every_stage_runs_a_known_subcommand_and_the_closure_follows_lazy_imports():
    owners = subcommand_modules()
    assert {subcommand(stage["cmd"]) for stage in stages().values()} <= set(owners)
    # teacher-logits imports the trained-model reader inside a function; the label table through seg.data.
    files = required_files(owners["teacher-logits"])
    assert {"src/idd_edge/seg/trained.py", "src/idd_edge/labels.py", "src/idd_edge/seg/logit_cache.py"} <= files
    assert "deploy/src/idd_edge_runtime/preprocess.py" in required_files(owners["gate"])
