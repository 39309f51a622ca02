"""COCO panoptic output: internal consistency of PNG and segments_info, and agreement with the official
derivation from the instance image (one segment per instance value, groups of thing classes crowd)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idd_edge.data.annotation import parse_annotation
from idd_edge.data.convert import run_pipeline
from idd_edge.data.panoptic import categories, panoptic_image, rgb_to_id
from idd_edge.data.rasterize import rasterize
from idd_edge.labels import LABELS, category_is_thing

LABEL_NAMES = [label.name for label in LABELS] + [f"{label.name}group" for label in LABELS if label.hasInstances]
# Encodings where every thing label falls in a thing category: there the official derivation from the
# instance image is well defined and must give the same segments.
OFFICIAL_LIKE = ("level3Id", "level2Id", "level1Id", "level4Id", "id")


def assert_consistent(rgb: np.ndarray, segments_info: list[dict], encoding: str) -> None:
    """Every segment is in the PNG and vice versa, with its true area and bbox, a known category, no id 0."""
    ids = rgb_to_id(rgb)
    listed = [segment["id"] for segment in segments_info]
    assert len(set(listed)) == len(listed) and 0 not in listed
    assert set(np.unique(ids)) - {0} == set(listed)
    is_thing = category_is_thing(encoding)
    for segment in segments_info:
        mask = ids == segment["id"]
        ys, xs = np.nonzero(mask)
        assert segment["area"] == mask.sum() > 0
        assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert segment["category_id"] in is_thing
        assert segment["iscrowd"] in (0, 1) and (not segment["iscrowd"] or is_thing[segment["category_id"]])
    stuff = [s["category_id"] for s in segments_info if not is_thing[s["category_id"]]]
    assert len(stuff) == len(set(stuff))  # one segment per stuff category


def official_segments(instance: np.ndarray, encoding: str) -> dict[frozenset, tuple[int, int]]:
    """The official converter's segments (pixel set -> category, iscrowd) from an instance image."""
    is_thing = category_is_thing(encoding)
    segments = {}
    for value in np.unique(instance):
        category, crowd = (value // 1000, 0) if value >= 1000 else (value, 1)
        if category not in is_thing:
            continue
        pixels = frozenset(np.flatnonzero(instance == value).tolist())
        segments[pixels] = (int(category), crowd if is_thing[category] else 0)
    return segments


coordinate = st.one_of(st.floats(-8, 40, allow_nan=False).map(lambda v: round(v, 1)), st.integers(-3, 35))
document = st.fixed_dictionaries({
    "imgWidth": st.integers(1, 32),
    "imgHeight": st.integers(1, 24),
    "objects": st.lists(
        st.fixed_dictionaries({
            "label": st.sampled_from(LABEL_NAMES),
            "polygon": st.lists(st.lists(coordinate, min_size=2, max_size=2), min_size=2, max_size=7),
            "deleted": st.sampled_from([0, 0, 0, 1]),
        }),
        max_size=14,
    ),
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=document, encoding=st.sampled_from(("level3Id", "level2Id", "level1Id", "level4Id", "id", "csId", "csTrainId")))
def test_panoptic_is_consistent_and_matches_the_official_derivation(doc: dict, encoding: str) -> None:
    annotation, _ = parse_annotation(json.dumps(doc))
    masks = rasterize(annotation, encoding, label=False, instance=True, instance_canvas=True)
    result = panoptic_image(masks.instance_canvas, masks.instance_objects, encoding)
    assert_consistent(result.rgb, result.segments_info, encoding)
    if encoding in OFFICIAL_LIKE:
        ids = rgb_to_id(result.rgb)
        ours = {frozenset(np.flatnonzero(ids == s["id"]).tolist()): (s["category_id"], s["iscrowd"])
                for s in result.segments_info}
        assert ours == official_segments(masks.instance, encoding)


def test_level3_categories_are_the_official_26_with_9_things() -> None:
    cats = categories("level3Id")
    assert [c["id"] for c in cats] == list(range(26))
    assert {c["name"] for c in cats if c["isthing"]} == {
        "person", "rider", "motorcycle", "bicycle", "autorickshaw", "car", "truck", "bus", "vehicle fallback"
    }
    assert cats[0] == {"id": 0, "name": "road", "supercategory": "drivable", "isthing": 0, "color": [128, 64, 128]}


def test_road_gets_a_nonzero_id_groups_are_crowd_and_ids_beyond_255_use_green() -> None:
    cars = [{"label": "car", "polygon": [[x % 40, x // 40 * 2], [x % 40, x // 40 * 2 + 1], [x % 40 + 0.9, x // 40 * 2]]}
            for x in range(300)]
    doc = {"imgWidth": 40, "imgHeight": 20, "objects": [
        {"label": "road", "polygon": [[0, 0], [39, 0], [39, 19], [0, 19]]},
        *cars,
        {"label": "cargroup", "polygon": [[30, 15], [39, 15], [39, 19], [30, 19]]},
    ]}
    annotation, _ = parse_annotation(json.dumps(doc))
    masks = rasterize(annotation, "level3Id", label=False, instance_canvas=True)
    result = panoptic_image(masks.instance_canvas, masks.instance_objects, "level3Id")
    assert_consistent(result.rgb, result.segments_info, "level3Id")
    road, *_, group = result.segments_info
    assert road["category_id"] == 0 and road["id"] == 1 and road["iscrowd"] == 0
    assert group["category_id"] == 9 and group["iscrowd"] == 1 and group["id"] > 255
    assert result.rgb[..., 1].max() > 0  # ids above 255 spill into G


def test_split_json_matches_the_written_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    root = tmp_path / "idd"
    for i in range(3):
        objects = [{"label": str(rng.choice(LABEL_NAMES)), "polygon": rng.uniform(-3, 30, (5, 2)).round(1).tolist()}
                   for _ in range(25)]
        path = root / "gtFine" / "val" / "7" / f"{i:06d}_gtFine_polygons.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"imgWidth": 28, "imgHeight": 20, "objects": objects}))
    report = run_pipeline(root, tmp_path / "out", "level3Id", do_semantic=False, do_panoptic=True)
    assert report["converted"] == 3 and {f["reason"] for f in report["findings"]} == {"missing_image"}

    coco = json.loads((tmp_path / "out" / "gtFine" / "val_panoptic.json").read_text())
    assert coco["categories"] == categories("level3Id") and coco["info"]["encoding"] == "level3Id"
    assert [image["id"] for image in coco["images"]] == [a["image_id"] for a in coco["annotations"]]
    assert [image["id"] for image in coco["images"]] == ["7_000000", "7_000001", "7_000002"]
    for image, annotation in zip(coco["images"], coco["annotations"]):
        png = cv2.imread(str(tmp_path / "out" / "gtFine" / "val_panoptic" / annotation["file_name"]), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(png, cv2.COLOR_BGR2RGB)
        assert rgb.shape == (image["height"], image["width"], 3)
        assert_consistent(rgb, annotation["segments_info"], "level3Id")
