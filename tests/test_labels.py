"""The label table is exact and the derived label spaces are consistent with it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from idd_edge import labels
from tests.conftest import SHARED_REFERENCE


def _reference_rows() -> list[list[str]]:
    path = SHARED_REFERENCE / "idd-format.md"
    if not path.exists():
        pytest.skip(f"reference table not available at {path}")
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 12 and re.fullmatch(r"\d+", cells[1]):
            rows.append(cells)
    return rows


def test_table_matches_reference_exactly() -> None:
    rows = _reference_rows()
    assert len(rows) == 40
    for label, row in zip(labels.LABELS, rows, strict=True):
        name, *ints_and_more = row
        expected = (
            name,
            *[int(v) for v in ints_and_more[:5]],
            ints_and_more[5],
            int(ints_and_more[6]),
            int(ints_and_more[7]),
            ints_and_more[8] == "True",
            ints_and_more[9] == "True",
            tuple(int(v) for v in re.findall(r"\d+", ints_and_more[10])),
        )
        actual = (
            label.name, label.id, label.csId, label.csTrainId, label.level4Id, label.level3Id,
            label.level2IdName, label.level2Id, label.level1Id, label.hasInstances, label.ignoreInEval,
            label.color,
        )
        assert actual == expected


def test_table_shape_and_quirks() -> None:
    assert [label.id for label in labels.LABELS] == list(range(40))
    assert len({label.name for label in labels.LABELS}) == 40
    assert labels.NAME_TO_LABEL["vehicle fallback"].csId == 355  # kept verbatim
    assert labels.NAME_TO_LABEL["pole"].color == labels.NAME_TO_LABEL["polegroup"].color


@pytest.mark.parametrize(("level", "count"), [("level1", 7), ("level2", 16), ("level3", 26)])
def test_level_class_counts_follow_table(level: str, count: int) -> None:
    encoding = labels.LEVEL_ENCODING[level]
    values = {label.value(encoding) for label in labels.LABELS} - {labels.VOID}
    assert values == set(range(count))
    assert labels.num_classes(level) == count == len(labels.LEVEL_CLASS_NAMES[level])
    assert labels.level_palette(level).shape == (count, 3)


@pytest.mark.parametrize(
    ("level", "train_id", "name", "members"),
    [
        ("level2", 4, "person", {"person", "animal"}),
        ("level2", 7, "small-vehicle", {"autorickshaw", "car"}),
        ("level2", 12, "structures-pole", {"pole", "polegroup", "obs-str-bar-fallback"}),
        ("level3", 12, "large-vehicle", {"caravan", "trailer", "train", "vehicle fallback"}),
        ("level3", 23, "bridge/tunnel", {"bridge", "tunnel"}),
        ("level1", 1, "non-drivable", {"sidewalk", "rail track", "non-drivable fallback"}),
        ("level1", 6, "sky", {"sky", "fallback background"}),
    ],
)
def test_class_names_describe_their_members(level: str, train_id: int, name: str, members: set[str]) -> None:
    encoding = labels.LEVEL_ENCODING[level]
    assert {l.name for l in labels.LABELS if l.value(encoding) == train_id} == members
    assert labels.LEVEL_CLASS_NAMES[level][train_id] == name


def test_group_normalisation() -> None:
    assert labels.lookup("cargroup").name == "car"
    assert labels.lookup("persongroup").name == "person"
    assert labels.lookup("polegroup").name == "polegroup"  # a real label, not a group of poles
    assert labels.is_group("cargroup") and not labels.is_group("polegroup")
    assert labels.lookup("spaceship") is None


@pytest.mark.parametrize(
    ("encoding", "background"),
    [("id", 35), ("csId", 0), ("csTrainId", 255), ("level4Id", 255), ("level3Id", 255),
     ("level2Id", 255), ("level1Id", 255)],
)
def test_background_per_encoding(encoding: str, background: int) -> None:
    assert labels.background_value(encoding) == background


def test_luts() -> None:
    lut = labels.id_to_encoding_lut("level3Id")
    assert lut[labels.NAME_TO_LABEL["tunnel"].id] == 23 and lut[200] == 255
    assert labels.id_to_encoding_lut("csId")[18] == 355
    ids = np.arange(40, dtype=np.uint8)
    via_level3 = labels.level_lut("level3Id", "level1")[labels.id_to_encoding_lut("level3Id")[ids]]
    direct = labels.level_lut("id", "level1")[ids]
    assert np.array_equal(via_level3, direct)
    with pytest.raises(ValueError, match="cannot be remapped"):
        labels.level_lut("level1Id", "level3")


def test_panoptic_categories_level3_match_official() -> None:
    things = labels.category_is_thing("level3Id")
    names = labels.category_names("level3Id")
    assert len(things) == 26
    assert {names[c] for c, is_thing in things.items() if is_thing} == {
        "person", "rider", "motorcycle", "bicycle", "autorickshaw", "car", "truck", "bus", "vehicle fallback",
    }
    assert labels.thing_classes("level2") == (4, 5, 6, 7, 8)


def test_unknown_encoding_and_level_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        labels.background_value("level5Id")
    with pytest.raises(ValueError, match="unknown label level"):
        labels.num_classes("level9")
