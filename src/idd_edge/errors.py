"""User-facing errors. The CLI prints them as one line naming the file and the problem, exit code 2."""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad input that the user must fix: names the offending file and what is wrong with it."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class StageError(Exception):
    """A stage could not finish (e.g. a non-finite training loss); earlier results are left intact."""
