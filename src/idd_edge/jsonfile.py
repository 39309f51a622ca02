"""Reading the JSON files stages hand to each other, with errors that name the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from idd_edge.errors import InputError


def read_json(path: str | os.PathLike, missing: str = "file not found") -> Any:
    """Parse `path`; a missing file (`missing` says what to do) or invalid JSON is an InputError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, missing) from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc}") from None


def read_json_if_present(path: str | os.PathLike) -> Any | None:
    """Like read_json, but None for a file that does not exist (optional outputs, e.g. a HEF status)."""
    return read_json(path) if Path(path).is_file() else None
