"""conf/ is the single source of truth: params.yaml must be exactly its composition."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from idd_edge import config
from idd_edge.errors import InputError


def test_committed_params_equal_composition_of_conf() -> None:
    committed = yaml.safe_load(Path("params.yaml").read_text())
    assert committed == config.compose(), (
        "params.yaml is out of date with conf/: run `idd-edge params` (or `make params`) and commit it"
    )


@pytest.mark.parametrize("level", ["level1", "level2", "level3"])
def test_label_level_override(level: str) -> None:
    params = config.compose([f"label_level={level}"])
    assert params["label_level"]["name"] == level
    assert params["label_level"]["encoding"] == f"{level}Id"


def test_real_data_override() -> None:
    params = config.compose(["data=idd", "data.root=/datasets/IDD_Segmentation"])
    assert params["data"] == {"name": "idd", "root": "/datasets/IDD_Segmentation"}


def test_write_then_load_roundtrip(tmp_path: Path) -> None:
    params = config.compose(["label_level=level3"])
    config.write_params(params, tmp_path / "params.yaml")
    assert config.load_params(tmp_path / "params.yaml") == params
    assert config.section(params, "label_level.num_classes") == 26


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="params.yaml: parameters file not found"):
        config.load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        config.load_params(bad)
    with pytest.raises(InputError, match="missing key 'label_level.nope'"):
        config.section({"label_level": {}}, "label_level.nope")
