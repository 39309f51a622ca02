"""Parsing of polygon JSON: every kind of bad input becomes a named reason, never an exception."""

from __future__ import annotations

import json

import pytest

from idd_edge.data.annotation import REASONS, AnnotationError, parse_annotation

SQUARE = [[0, 0], [3, 0], [3, 3], [0, 3]]


def _doc(*objects: object, **top: object) -> str:
    return json.dumps({"imgWidth": 8, "imgHeight": 6, "objects": list(objects), **top})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe garbage", "malformed_json"),
        (b"[1, 2]", "malformed_json"),
        (json.dumps({"imgWidth": 8, "objects": []}), "missing_key"),
        (json.dumps({"imgWidth": 8, "imgHeight": 6}), "missing_key"),
        (json.dumps({"imgWidth": 8, "imgHeight": 6, "objects": {}}), "malformed_json"),
        (json.dumps({"imgWidth": 0, "imgHeight": 6, "objects": []}), "invalid_size"),
        (json.dumps({"imgWidth": 8.0, "imgHeight": 6, "objects": []}), "invalid_size"),
        (json.dumps({"imgWidth": True, "imgHeight": 6, "objects": []}), "invalid_size"),
        (json.dumps({"imgWidth": 100000, "imgHeight": 100000, "objects": []}), "invalid_size"),
    ],
)
def test_file_level_problems_raise_annotation_error(raw: bytes | str, reason: str) -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_annotation(raw)
    assert caught.value.issue.reason == reason


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ("car", "invalid_object"),
        ({"polygon": SQUARE}, "missing_key"),
        ({"label": "car"}, "missing_key"),
        ({"label": 12, "polygon": SQUARE}, "invalid_object"),
        ({"label": "spaceship", "polygon": SQUARE}, "unknown_label"),
        ({"label": "spaceshipgroup", "polygon": SQUARE}, "unknown_label"),
        ({"label": "car", "polygon": []}, "empty_polygon"),
        ({"label": "car", "polygon": [[1, 1]]}, "short_polygon"),
        ({"label": "car", "polygon": {"x": 1}}, "invalid_polygon"),
        ({"label": "car", "polygon": [[1, 1], [2, 2], [3]]}, "invalid_polygon"),
        ({"label": "car", "polygon": [[1, 1], [2, 2], [3, 3, 3]]}, "invalid_polygon"),
        ({"label": "car", "polygon": [[1, 1], [2, 2], ["3", 3]]}, "invalid_polygon"),
        ({"label": "car", "polygon": [[1, 1], [2, 2], [True, 3]]}, "invalid_polygon"),
        ({"label": "car", "polygon": [[1, 1], [2, 2], [None, 3]]}, "invalid_polygon"),
        ({"label": "car", "polygon": [[1, 1], [2, 2], [float("nan"), 3]]}, "non_finite_coordinate"),
        ({"label": "car", "polygon": [[1, 1], [2, 2], [float("inf"), 3]]}, "non_finite_coordinate"),
        ({"label": "car", "polygon": [[1, 1], [2, 2], [3, -2e6]]}, "coordinate_out_of_range"),
        ({"label": "car", "polygon": [[1, 1], [2, 2], [10**30, 3]]}, "coordinate_out_of_range"),
        ({"label": "car", "polygon": [[1, 1], [2, 2], [float("nan"), 10**400]]}, "coordinate_out_of_range"),
        ({"label": "car", "polygon": [[1, 1], [2, 2], [1e308, 1e308]]}, "coordinate_out_of_range"),
        ({"label": "car", "polygon": [[1, 1], [float("inf"), 2], [float("-inf"), 3]]}, "non_finite_coordinate"),
    ],
)
def test_object_level_problems_skip_the_object_only(obj: object, reason: str) -> None:
    good = {"label": "road", "polygon": SQUARE}
    annotation, issues = parse_annotation(_doc(good, obj, good))
    assert [issue.reason for issue in issues] == [reason]
    assert "object 1" in issues[0].detail
    assert [o.index for o in annotation.objects] == [0, 2]
    assert annotation.skipped == 1 and reason in REASONS


def test_two_point_polygons_are_kept_for_instance_images_but_reported() -> None:
    annotation, issues = parse_annotation(_doc({"label": "pole", "polygon": [[1, 1], [5, 4]]}))
    assert [issue.reason for issue in issues] == ["short_polygon"]
    assert annotation.objects[0].num_points == 2 and annotation.skipped == 0


def test_deleted_objects_are_skipped_before_any_check_and_missing_deleted_means_zero() -> None:
    annotation, issues = parse_annotation(
        _doc({"label": "spaceship", "polygon": "nonsense", "deleted": 1}, {"label": "cargroup", "polygon": SQUARE})
    )
    assert issues == [] and annotation.deleted == 1 and annotation.listed == 2
    (car,) = annotation.objects
    assert car.label.name == "car" and car.group and car.points == (0.0, 0.0, 3.0, 0.0, 3.0, 3.0, 0.0, 3.0)


def test_keys_the_official_reader_ignores_are_ignored() -> None:
    annotation, issues = parse_annotation(
        _doc({"label": "car", "polygon": SQUARE, "id": 7, "draw": False, "user": "x", "verified": 0, "date": "d"})
    )
    assert issues == [] and len(annotation.objects) == 1
