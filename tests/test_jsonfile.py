"""Stage-to-stage JSON reads fail with the file's name and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from idd_edge.errors import InputError
from idd_edge.jsonfile import read_json, read_json_if_present


def test_missing_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"gate.json: run `idd-edge gate` first"):
        read_json(tmp_path / "gate.json", missing="run `idd-edge gate` first")
    bad = tmp_path / "bad.json"
    bad.write_text('{"miou": 0.5,')
    with pytest.raises(InputError, match=r"bad.json: not valid JSON"):
        read_json(bad)
    with pytest.raises(InputError, match=r"bad.json: not valid JSON"):
        read_json_if_present(bad)


def test_optional_file(tmp_path: Path) -> None:
    assert read_json_if_present(tmp_path / "absent.json") is None
    (tmp_path / "ok.json").write_text('{"built": false}')
    assert read_json_if_present(tmp_path / "ok.json") == {"built": False}
