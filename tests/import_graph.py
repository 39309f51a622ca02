"""Static import graph of the project's own code (`src/idd_edge`, `deploy/src/idd_edge_runtime`), read with
`ast` without importing anything: for the acyclicity test and for the dvc.yaml dependency test."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Top-level package -> the folder holding it.
PACKAGE_ROOTS = {"idd_edge": REPO / "src", "idd_edge_runtime": REPO / "deploy" / "src"}


def module_file(name: str) -> Path | None:
    """The source file of our module `name` (a package's `__init__.py`), or None for anything else."""
    parts = name.split(".")
    if parts[0] not in PACKAGE_ROOTS:
        return None
    base = PACKAGE_ROOTS[parts[0]].joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    """`src/idd_edge/seg/data.py` -> `idd_edge.seg.data` (a package `__init__.py` -> the package)."""
    for package, root in PACKAGE_ROOTS.items():
        if path.is_relative_to(root / package):
            parts = list(path.relative_to(root).with_suffix("").parts)
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(f"{path} is not in one of our packages")


def all_modules() -> list[str]:
    return sorted(module_name(path) for package, root in PACKAGE_ROOTS.items()
                  for path in (root / package).rglob("*.py"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(node: ast.Import | ast.ImportFrom, importer: str) -> Iterable[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:  # relative import: resolved against the importing module's package
        package = importer.split(".")
        package = package[: len(package) - node.level + (1 if module_file(importer).name == "__init__.py" else 0)]
        base = ".".join([*package, base] if base else package)
    yield base
    for alias in node.names:  # `from pkg import module` imports the submodule
        yield f"{base}.{alias.name}"


@cache
def imports(name: str, module_level: bool, type_checking: bool = False) -> frozenset[str]:
    """Our modules that module `name` imports (and, importing `a.b.c`, the packages `a`, `a.b` it runs).
    `module_level`: only the imports at module level, not those inside functions; `type_checking`: with
    the `if TYPE_CHECKING:` imports (they never run, but still say which module needs which)."""
    path = module_file(name)
    found: set[str] = set()

    def visit(nodes: Iterable[ast.stmt | ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
                visit(node.orelse)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for imported in _imported_names(node, name):
                    parts = imported.split(".")
                    found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and module_level:
                continue
            else:
                visit(ast.iter_child_nodes(node))

    visit(ast.parse(path.read_text(), filename=str(path)).body)
    # The importer's own packages ran before it did: an edge to them is no dependency the code chose.
    own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    return frozenset(module for module in found if module_file(module) is not None and module not in own_packages)


def closure(names: Iterable[str]) -> set[str]:
    """Every module of ours that importing `names` and running any of their functions can import."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imports(name, module_level=False))
    return seen


def find_cycle(modules: Iterable[str], module_level: bool, type_checking: bool) -> list[str] | None:
    """One import cycle among `modules` (as a path a -> b -> ... -> a), or None."""
    modules = set(modules)
    state: dict[str, str] = {}
    stack: list[str] = []

    def walk(name: str) -> list[str] | None:
        state[name] = "open"
        stack.append(name)
        for imported in sorted(imports(name, module_level, type_checking) & modules):
            if state.get(imported) == "open":
                return stack[stack.index(imported):] + [imported]
            if imported not in state and (cycle := walk(imported)):
                return cycle
        stack.pop()
        state[name] = "done"
        return None

    for name in sorted(modules):
        if name not in state and (cycle := walk(name)):
            return cycle
    return None
