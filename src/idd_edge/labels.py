"""The IDD label table and the label spaces derived from it.

The table is the official one (AutoNUE/public-code `helpers/anue_labels.py`), kept verbatim, quirks
included: `vehicle fallback` has csId 355 (it does not fit in 8 bits), several labels share a level4Id,
and several share a colour, so colour -> label is not unique.

Every encoding the official toolkit writes is selectable by name (`id`, `csId`, `csTrainId`,
`level4Id`, `level3Id`, `level2Id`, `level1Id`). The training label spaces are `level1` (7 classes),
`level2` (16) and `level3` (26); void is 255 in all three.

Deliberate deviation from the seed report: its level-1 class names (road, sky, vegetation, building,
vehicle, person, background) do not match what the level1Id values contain (level1Id 1 holds sidewalk
and rail track, not sky). The names here are derived from the table so that a class name always
describes its pixels: drivable, non-drivable, living-thing, vehicle, roadside-object, far-object, sky
(the IDD paper's level-1 hierarchy).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

VOID = 255

ENCODINGS: tuple[str, ...] = ("id", "csId", "csTrainId", "level4Id", "level3Id", "level2Id", "level1Id")

#: Training label spaces: name -> the encoding whose values are the contiguous train ids.
LEVEL_ENCODING: dict[str, str] = {"level1": "level1Id", "level2": "level2Id", "level3": "level3Id"}
#: Folder of a level's split under `data/splits/` (the IDD toolkit's dataset names).
LEVEL_DIR_NAME: dict[str, str] = {level: f"IDDL{level.removeprefix('level')}" for level in LEVEL_ENCODING}


@dataclass(frozen=True)
class Label:
    name: str
    id: int
    csId: int
    csTrainId: int
    level4Id: int
    level3Id: int
    level2IdName: str
    level2Id: int
    level1Id: int
    hasInstances: bool
    ignoreInEval: bool
    color: tuple[int, int, int]

    def value(self, encoding: str) -> int:
        """This label's value under `encoding` (one of ENCODINGS)."""
        check_encoding(encoding)
        return int(getattr(self, encoding))


# fmt: off
LABELS: tuple[Label, ...] = (
    #     name                     id  csId csTrainId lvl4 lvl3 level2IdName      lvl2 lvl1 hasInst ignore  color
    Label("road",                   0,   7,   0,   0,   0, "drivable",          0,   0, False, False, (128,  64, 128)),
    Label("parking",                1,   9, 255,   1,   1, "drivable",          1,   0, False, False, (250, 170, 160)),
    Label("drivable fallback",      2, 255, 255,   2,   1, "drivable",          1,   0, False, False, ( 81,   0,  81)),
    Label("sidewalk",               3,   8,   1,   3,   2, "non-drivable",      2,   1, False, False, (244,  35, 232)),
    Label("rail track",             4,  10, 255,   3,   3, "non-drivable",      3,   1, False, False, (230, 150, 140)),
    Label("non-drivable fallback",  5, 255,   9,   4,   3, "non-drivable",      3,   1, False, False, (152, 251, 152)),
    Label("person",                 6,  24,  11,   5,   4, "living-thing",      4,   2, True,  False, (220,  20,  60)),
    Label("animal",                 7, 255, 255,   6,   4, "living-thing",      4,   2, True,  True,  (246, 198, 145)),
    Label("rider",                  8,  25,  12,   7,   5, "living-thing",      5,   2, True,  False, (255,   0,   0)),
    Label("motorcycle",             9,  32,  17,   8,   6, "2-wheeler",         6,   3, True,  False, (  0,   0, 230)),
    Label("bicycle",               10,  33,  18,   9,   7, "2-wheeler",         6,   3, True,  False, (119,  11,  32)),
    Label("autorickshaw",          11, 255, 255,  10,   8, "autorickshaw",      7,   3, True,  False, (255, 204,  54)),
    Label("car",                   12,  26,  13,  11,   9, "car",               7,   3, True,  False, (  0,   0, 142)),
    Label("truck",                 13,  27,  14,  12,  10, "large-vehicle",     8,   3, True,  False, (  0,   0,  70)),
    Label("bus",                   14,  28,  15,  13,  11, "large-vehicle",     8,   3, True,  False, (  0,  60, 100)),
    Label("caravan",               15,  29, 255,  14,  12, "large-vehicle",     8,   3, True,  True,  (  0,   0,  90)),
    Label("trailer",               16,  30, 255,  15,  12, "large-vehicle",     8,   3, True,  True,  (  0,   0, 110)),
    Label("train",                 17,  31,  16,  15,  12, "large-vehicle",     8,   3, True,  True,  (  0,  80, 100)),
    Label("vehicle fallback",      18, 355, 255,  15,  12, "large-vehicle",     8,   3, True,  False, (136, 143, 153)),
    Label("curb",                  19, 255, 255,  16,  13, "barrier",           9,   4, False, False, (220, 190,  40)),
    Label("wall",                  20,  12,   3,  17,  14, "barrier",           9,   4, False, False, (102, 102, 156)),
    Label("fence",                 21,  13,   4,  18,  15, "barrier",          10,   4, False, False, (190, 153, 153)),
    Label("guard rail",            22,  14, 255,  19,  16, "barrier",          10,   4, False, False, (180, 165, 180)),
    Label("billboard",             23, 255, 255,  20,  17, "structures",       11,   4, False, False, (174,  64,  67)),
    Label("traffic sign",          24,  20,   7,  21,  18, "structures",       11,   4, False, False, (220, 220,   0)),
    Label("traffic light",         25,  19,   6,  22,  19, "structures",       11,   4, False, False, (250, 170,  30)),
    Label("pole",                  26,  17,   5,  23,  20, "structures",       12,   4, False, False, (153, 153, 153)),
    Label("polegroup",             27,  18, 255,  23,  20, "structures",       12,   4, False, False, (153, 153, 153)),
    Label("obs-str-bar-fallback",  28, 255, 255,  24,  21, "structures",       12,   4, False, False, (169, 187, 214)),
    Label("building",              29,  11,   2,  25,  22, "construction",     13,   5, False, False, ( 70,  70,  70)),
    Label("bridge",                30,  15, 255,  26,  23, "construction",     13,   5, False, False, (150, 100, 100)),
    Label("tunnel",                31,  16, 255,  26,  23, "construction",     13,   5, False, False, (150, 120,  90)),
    Label("vegetation",            32,  21,   8,  27,  24, "vegetation",       14,   5, False, False, (107, 142,  35)),
    Label("sky",                   33,  23,  10,  28,  25, "sky",              15,   6, False, False, ( 70, 130, 180)),
    Label("fallback background",   34, 255, 255,  29,  25, "object fallback",  15,   6, False, False, (169, 187, 214)),
    Label("unlabeled",             35,   0, 255, 255, 255, "void",            255, 255, False, True,  (  0,   0,   0)),
    Label("ego vehicle",           36,   1, 255, 255, 255, "void",            255, 255, False, True,  (  0,   0,   0)),
    Label("rectification border",  37,   2, 255, 255, 255, "void",            255, 255, False, True,  (  0,   0,   0)),
    Label("out of roi",            38,   3, 255, 255, 255, "void",            255, 255, False, True,  (  0,   0,   0)),
    Label("license plate",         39, 255, 255, 255, 255, "vehicle",         255, 255, False, True,  (  0,   0, 142)),
)
# fmt: on

#: Class names of the training label spaces, indexed by train id (seed report section 4; level1 see above).
LEVEL_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "level1": (
        "drivable", "non-drivable", "living-thing", "vehicle", "roadside-object", "far-object", "sky",
    ),
    "level2": (
        "road", "drivable-other", "sidewalk", "non-drivable-other", "person", "rider", "2-wheeler",
        "small-vehicle", "large-vehicle", "barrier-solid", "barrier-open", "structures-sign",
        "structures-pole", "construction", "vegetation", "sky",
    ),
    "level3": (
        "road", "parking", "sidewalk", "rail track", "person", "rider", "motorcycle", "bicycle",
        "autorickshaw", "car", "truck", "bus", "large-vehicle", "curb", "wall", "fence", "guard rail",
        "billboard", "traffic sign", "traffic light", "pole", "obs-str-bar-fallback", "building",
        "bridge/tunnel", "vegetation", "sky",
    ),
}

NAME_TO_LABEL: dict[str, Label] = {label.name: label for label in LABELS}
ID_TO_LABEL: dict[int, Label] = {label.id: label for label in LABELS}
UNLABELED = NAME_TO_LABEL["unlabeled"]


def check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")


def check_level(level: str) -> None:
    if level not in LEVEL_ENCODING:
        raise ValueError(f"unknown label level {level!r}; choose one of {', '.join(LEVEL_ENCODING)}")


def normalize_label_name(name: str) -> str:
    """Official rule: a name not in the table that ends in `group` is looked up without the suffix."""
    if name not in NAME_TO_LABEL and name.endswith("group"):
        return name[: -len("group")]
    return name


def is_group(name: str) -> bool:
    """True for crowd annotations such as `cargroup` (their pixels get the plain class id, no instance)."""
    return name not in NAME_TO_LABEL and name.endswith("group")


def lookup(name: str) -> Label | None:
    """The table row for an annotation's label name (group suffix normalised), or None if unknown."""
    return NAME_TO_LABEL.get(normalize_label_name(name))


def background_value(encoding: str) -> int:
    """Value of unannotated pixels: the `unlabeled` row's value (id 35, csId 0, the others 255)."""
    return UNLABELED.value(encoding)


def num_classes(level: str) -> int:
    check_level(level)
    return len(LEVEL_CLASS_NAMES[level])


@lru_cache(maxsize=None)
def id_to_encoding_lut(encoding: str) -> np.ndarray:
    """uint16 table mapping official label id (0-39) to its value in `encoding`; 256 entries so that
    any uint8 mask indexes it. Unused entries map to the encoding's background. uint16 because csId
    of `vehicle fallback` is 355."""
    lut = np.full(256, background_value(encoding), dtype=np.uint16)
    for label in LABELS:
        lut[label.id] = label.value(encoding)
    lut.setflags(write=False)
    return lut


@lru_cache(maxsize=None)
def level_lut(encoding: str, level: str) -> np.ndarray:
    """uint8 table remapping values of `encoding` to train ids of `level` (void 255).

    Only defined when the remap is a function: every value of `encoding` must fall in one class of
    `level` (true for id and for any finer level, e.g. level3Id -> level1). Raises ValueError otherwise
    (e.g. csTrainId -> level3, where 255 holds labels of many classes)."""
    check_encoding(encoding)
    check_level(level)
    target = LEVEL_ENCODING[level]
    lut = np.full(256, VOID, dtype=np.uint8)
    seen: dict[int, int] = {}
    for label in LABELS:
        source_value, target_value = label.value(encoding), label.value(target)
        if source_value == background_value(encoding) and encoding != "id":
            continue  # void of the source stays void
        previous = seen.setdefault(source_value, target_value)
        if previous != target_value:
            raise ValueError(
                f"{encoding} value {source_value} spans {level} classes {previous} and {target_value}: "
                f"masks in {encoding} cannot be remapped to {level}"
            )
        if source_value < 256:
            lut[source_value] = target_value
    lut.setflags(write=False)
    return lut


def level_palette(level: str) -> np.ndarray:
    """(num_classes, 3) uint8 RGB colours per train id: the colour of the first table row of each class."""
    check_level(level)
    encoding = LEVEL_ENCODING[level]
    palette = np.zeros((num_classes(level), 3), dtype=np.uint8)
    filled = set()
    for label in LABELS:
        value = label.value(encoding)
        if value != VOID and value not in filled:
            palette[value] = label.color
            filled.add(value)
    return palette


def thing_classes(level: str) -> tuple[int, ...]:
    """Train ids of `level` whose first non-ignored table row has instances (the panoptic 'things')."""
    check_level(level)
    return tuple(c for c, is_thing in category_is_thing(LEVEL_ENCODING[level]).items() if is_thing)


def category_labels(encoding: str) -> dict[int, Label]:
    """Categories of `encoding` as the official panoptic converter builds them: one per value, named by
    the first table row with that value, skipping ignoreInEval rows and void. Value -> that row."""
    check_encoding(encoding)
    categories: dict[int, Label] = {}
    for label in LABELS:
        value = label.value(encoding)
        if not (label.ignoreInEval or value == background_value(encoding) or value in categories):
            categories[value] = label
    return categories


def category_is_thing(encoding: str) -> dict[int, bool]:
    """Category value -> isthing (the first row's hasInstances), see category_labels."""
    return {value: label.hasInstances for value, label in category_labels(encoding).items()}


def category_names(encoding: str) -> dict[int, str]:
    """Category value -> name (the first non-ignored table row), see category_labels."""
    return {value: label.name for value, label in category_labels(encoding).items()}
