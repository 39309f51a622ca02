"""Pixel parity of the one-pass rasteriser with the official per-output PIL rendering (`data.official`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idd_edge.data import official
from idd_edge.data.annotation import parse_annotation
from idd_edge.data.rasterize import class_value, draw_object_index, instance_ids, rasterize
from idd_edge.labels import ENCODINGS, LABELS, NAME_TO_LABEL, background_value

LABEL_NAMES = [label.name for label in LABELS] + [f"{label.name}group" for label in LABELS if label.hasInstances]

# Coordinates as real annotations have them (floats, on pixel centres and halves, slightly outside the
# frame) plus far-out values; PIL's rounding of x.5 and its clipping are what parity must survive.
coordinate = st.one_of(
    st.floats(-12, 52, allow_nan=False).map(lambda v: round(v, 2)),
    st.integers(-5, 45),
    st.integers(-20, 90).map(lambda v: v / 2),
    st.floats(-1e6, 1e6, allow_nan=False),
)
point = st.lists(coordinate, min_size=2, max_size=2)


@st.composite
def polygon(draw: st.DrawFn) -> list[list[float]]:
    kind = draw(st.sampled_from(["random", "degenerate", "line"]))
    if kind == "line":  # 2 points: a line in instance images, skipped in label images
        return draw(st.lists(point, min_size=2, max_size=2))
    if kind == "degenerate":  # repeated / collinear points
        p = draw(point)
        q = draw(point)
        return [p, q, p] if draw(st.booleans()) else [p, p, p, q]
    return draw(st.lists(point, min_size=3, max_size=9))  # often self-intersecting


@st.composite
def document(draw: st.DrawFn) -> dict:
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 30))
    objects = draw(
        st.lists(
            st.fixed_dictionaries(
                {"label": st.sampled_from(LABEL_NAMES), "polygon": polygon(), "deleted": st.sampled_from([0, 0, 0, 1])}
            ),
            max_size=12,
        )
    )
    return {"imgWidth": width, "imgHeight": height, "objects": objects}


def _ours(doc: dict, encoding: str):
    annotation, _ = parse_annotation(json.dumps(doc))
    return rasterize(annotation, encoding, label=True, color=True, instance=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=document(), encoding=st.sampled_from(ENCODINGS))
def test_label_color_instance_match_official_pil_rendering(doc: dict, encoding: str) -> None:
    masks = _ours(doc, encoding)
    assert np.array_equal(masks.label, np.asarray(official.label_image(doc, encoding)))
    reference_color = np.asarray(official.color_image(doc))
    assert (reference_color[..., 3] == 255).all()
    assert np.array_equal(masks.color, reference_color[..., :3])
    reference_instance = np.asarray(official.instance_image(doc, encoding))
    assert reference_instance.max() <= 65535
    assert masks.instance.dtype == np.uint16
    assert np.array_equal(masks.instance, reference_instance)


def test_more_than_255_objects_use_a_wide_canvas_and_still_match() -> None:
    rng = np.random.default_rng(0)
    objects = [
        {"label": str(rng.choice(LABEL_NAMES)), "polygon": rng.uniform(-5, 70, (int(rng.integers(2, 7)), 2)).round(1).tolist()}
        for _ in range(300)
    ]
    doc = {"imgWidth": 64, "imgHeight": 48, "objects": objects}
    annotation, _ = parse_annotation(json.dumps(doc))
    assert draw_object_index(annotation.objects, 64, 48).dtype == np.int32
    for encoding in ("level3Id", "id"):
        masks = rasterize(annotation, encoding, label=True, color=True, instance=True)
        assert np.array_equal(masks.label, np.asarray(official.label_image(doc, encoding)))
        assert np.array_equal(masks.color, np.asarray(official.color_image(doc))[..., :3])
        assert np.array_equal(masks.instance, np.asarray(official.instance_image(doc, encoding)))


def test_official_oracle_fills_a_square_including_its_edges() -> None:
    # Guards the oracle itself: PIL fills both boundary rows/columns of an axis-aligned polygon.
    doc = {"imgWidth": 6, "imgHeight": 5, "objects": [{"label": "car", "polygon": [[1, 1], [3, 1], [3, 3], [1, 3]]}]}
    expected = np.full((5, 6), 255, np.uint8)
    expected[1:4, 1:4] = 9
    assert np.array_equal(np.asarray(official.label_image(doc, "level3Id")), expected)
    assert np.array_equal(_ours(doc, "level3Id").label, expected)


def test_two_point_polygon_is_a_line_in_instance_images_only() -> None:
    doc = {
        "imgWidth": 12, "imgHeight": 8,
        "objects": [
            {"label": "road", "polygon": [[0, 0], [11, 0], [11, 7], [0, 7]]},
            {"label": "pole", "polygon": [[2, 1], [9, 6]]},
        ],
    }
    masks = _ours(doc, "level3Id")
    assert (masks.label == 0).all()  # the line is not drawn in the label image
    line = masks.instance == 20
    assert 0 < line.sum() < 12 and (masks.instance[~line] == 0).all()


def test_later_objects_overwrite_earlier_and_deleted_ones_are_skipped() -> None:
    square = [[0, 0], [9, 0], [9, 9], [0, 9]]
    doc = {
        "imgWidth": 10, "imgHeight": 10,
        "objects": [
            {"label": "road", "polygon": square},
            {"label": "car", "polygon": [[2, 2], [7, 2], [7, 7], [2, 7]]},
            {"label": "sky", "polygon": square, "deleted": 1},
        ],
    }
    masks = _ours(doc, "level3Id")
    assert masks.label[0, 0] == 0 and masks.label[5, 5] == 9
    assert tuple(masks.color[5, 5]) == NAME_TO_LABEL["car"].color and tuple(masks.color[0, 0]) == (128, 64, 128)


@pytest.mark.parametrize(("encoding", "expected"), [("id", 35), ("csId", 0), ("csTrainId", 255), ("level4Id", 255),
                                                    ("level3Id", 255), ("level2Id", 255), ("level1Id", 255)])
def test_background_per_encoding(encoding: str, expected: int) -> None:
    assert background_value(encoding) == expected
    masks = _ours({"imgWidth": 4, "imgHeight": 3, "objects": []}, encoding)
    assert (masks.label == expected).all() and (masks.instance == expected).all() and not masks.color.any()


def test_csid_355_is_clipped_like_pil_does_on_mode_l() -> None:
    assert NAME_TO_LABEL["vehicle fallback"].csId == 355
    assert class_value(NAME_TO_LABEL["vehicle fallback"], "csId") == 255
    doc = {"imgWidth": 5, "imgHeight": 5, "objects": [{"label": "vehicle fallback", "polygon": [[0, 0], [4, 0], [4, 4]]}]}
    assert np.asarray(official.label_image(doc, "csId"))[0, 4] == 255  # what PIL itself writes
    masks = _ours(doc, "csId")
    assert masks.label[0, 4] == 255 and masks.instance[0, 4] == 255  # void: no instance id


def _objects(*names: str):
    doc = {"imgWidth": 2, "imgHeight": 2, "objects": [{"label": n, "polygon": [[0, 0], [1, 0], [1, 1]]} for n in names]}
    return parse_annotation(json.dumps(doc))[0].objects


def test_instance_counter_is_keyed_by_the_encoded_class_value() -> None:
    objects = _objects("car", "truck", "cargroup", "person", "animal", "road", "car")
    # level3: car 9, truck 10, person and animal share level3Id 4 (one counter), road stuff, group plain.
    assert instance_ids(objects, "level3Id").values == (9000, 10000, 9, 4000, 4001, 0, 9001)
    # level1: car and truck are both vehicle (3): one counter, so no collision (the official key,
    # level3Id, would give both 3000).
    assert instance_ids(objects, "level1Id").values == (3000, 3001, 3, 2000, 2001, 0, 3002)
    # id: person and animal are different classes.
    assert instance_ids(objects, "id").values == (12000, 13000, 12, 6000, 7000, 0, 12001)


def test_void_class_values_never_become_instance_ids() -> None:
    objects = _objects("animal", "autorickshaw", "person", "vehicle fallback")
    assert instance_ids(objects, "csTrainId").values == (255, 255, 11000, 255)
    assert instance_ids(objects, "csId").values == (255, 255, 24000, 255)


def test_more_than_1000_instances_of_a_class_is_reported_as_overflow() -> None:
    ids = instance_ids(_objects(*["car"] * 1001), "level3Id")
    assert ids.values[999] == 9999 and ids.overflow == (9,)
    assert instance_ids(_objects(*["car"] * 1000), "level3Id").overflow == ()
