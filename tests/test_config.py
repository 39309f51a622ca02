"""conf/ is the single source of truth: params.yaml must be exactly its composition."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from idd_edge import config, labels
from idd_edge.errors import InputError


def test_committed_params_equal_composition_of_conf() -> None:
    committed = yaml.safe_load(Path("params.yaml").read_text())
    assert committed == config.compose(), (
        "params.yaml is out of date with conf/: run `idd-edge params` (or `make params`) and commit it"
    )


def test_label_level_configs_are_the_label_table_s_levels() -> None:
    """conf/label_level/ has one config per level of labels.py, and each says what labels.py says (Hydra
    needs the values in YAML; labels.py is where they are defined)."""
    assert sorted(path.stem for path in Path("conf/label_level").glob("*.yaml")) == sorted(labels.LEVEL_ENCODING)
    for level in labels.LEVEL_ENCODING:
        composed = config.compose([f"label_level={level}"])["label_level"]
        mix_classes = composed.pop("mix_classes")  # a training choice (train.<role>.class_mix), not a fact
        assert composed == {"name": level, "encoding": labels.LEVEL_ENCODING[level],
                            "num_classes": labels.num_classes(level), "dir_name": labels.LEVEL_DIR_NAME[level]}
        assert set(mix_classes) <= set(labels.LEVEL_CLASS_NAMES[level])


def test_the_runtime_knows_the_same_label_levels() -> None:
    """The device runtime cannot import labels.py; its manifest schema keeps its own list."""
    from idd_edge_runtime.manifest import LABEL_LEVELS

    assert sorted(LABEL_LEVELS) == sorted(labels.LEVEL_ENCODING)


def test_real_data_override() -> None:
    params = config.compose(["data=idd", "data.root=/datasets/IDD_Segmentation"])
    assert params["data"] == {"name": "idd", "root": "/datasets/IDD_Segmentation"}


def test_write_then_load_roundtrip(tmp_path: Path) -> None:
    params = config.compose(["label_level=level3"])
    config.write_params(params, tmp_path / "params.yaml")
    assert config.load_params(tmp_path / "params.yaml") == params
    assert config.section(params, "label_level.num_classes") == params["label_level"]["num_classes"]


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="params.yaml: parameters file not found"):
        config.load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        config.load_params(bad)
    with pytest.raises(InputError, match="missing key 'label_level.nope'"):
        config.section({"label_level": {}}, "label_level.nope")
