"""yolo-bridge: converted instance PNGs -> Ultralytics polygons (visible parts, multi-part, holes, remap)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from idd_edge import atomic, config
from idd_edge.cli import main
from idd_edge.errors import InputError, StageError
from idd_edge.yolo import bridge, polygons
from idd_edge.yolo.bridge import resolve_classes

# Instance values at encoding `id`: class id * 1000 + k.
PERSON, RIDER, MOTORCYCLE, CAR, BUS = 6, 8, 9, 12, 14
POLE, ROAD = 26, 0
SHAPE = (96, 160)


@functools.cache
def default_classes() -> dict:
    return config.compose()["yolo"]["classes"]


def write_frame(root: Path, split: str, name: str, instance_map: np.ndarray, ext: str = ".png") -> Path:
    """An IDD-style frame: raw image under leftImg8bit/, uint16 instance PNG under gtFine/ (encoding id)."""
    drive, image_id = name.split("_", 1)
    rng = np.random.default_rng(len(name))
    image = rng.integers(0, 255, (*instance_map.shape, 3), dtype=np.uint8)
    image_path = root / "leftImg8bit" / split / drive / f"{image_id}_leftImg8bit{ext}"
    if ext == ".png":
        atomic.write_png(image_path, image)
    else:
        atomic.write_bytes(image_path, cv2.imencode(ext, image)[1].tobytes())
    instance_png = root / "gtFine" / split / drive / f"{image_id}{bridge.instance_suffix('id')}"
    atomic.write_png(instance_png, instance_map.astype(np.uint16))
    return image_path


def background() -> np.ndarray:
    frame = np.full(SHAPE, ROAD, dtype=np.uint16)
    frame[:20] = 33  # sky
    return frame


def read_label(out: Path, split: str, name: str) -> list[tuple[int, np.ndarray]]:
    lines = (out / "labels" / split / f"{name}.txt").read_text().splitlines()
    return [(int(line.split()[0]), np.array(line.split()[1:], dtype=np.float64)) for line in lines]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, dict]:
    """Frames covering occlusion, a split instance with a hole, a crowd-only frame and an empty frame."""
    root = tmp_path / "idd"
    frames = {}

    occluded = background()
    cv2.rectangle(occluded, (20, 30), (100, 80), CAR * 1000, -1)  # car drawn first ...
    cv2.rectangle(occluded, (60, 20), (80, 90), PERSON * 1000, -1)  # ... a person in front hides part of it
    frames["d0_000001"] = occluded

    split_bus = background()
    cv2.rectangle(split_bus, (10, 25), (150, 85), BUS * 1000, -1)
    split_bus[:, 70:76] = POLE  # a pole cuts the bus in two
    cv2.rectangle(split_bus, (110, 45), (125, 60), RIDER * 1000, -1)  # a rider inside the outline: a hole
    frames["d0_000002"] = split_bus

    crowd = background()
    cv2.rectangle(crowd, (30, 30), (120, 70), CAR, -1)  # cargroup: the plain class value, not an instance
    frames["d1_000003"] = crowd

    frames["d1_000004"] = background()
    for name, frame in frames.items():
        write_frame(root, "train", name, frame)
    val = background()
    cv2.circle(val, (80, 50), 25, MOTORCYCLE * 1000 + 3, -1)
    frames["d2_000005"] = val
    write_frame(root, "val", "d2_000005", val, ext=".jpg")
    return root, frames


def run_bridge(root: Path, out: Path, classes: dict | None = None, **kwargs) -> dict:
    class_map = resolve_classes(classes or default_classes(), "id")
    return bridge.bridge(root, root, out, class_map, workers=1, **kwargs)


def test_occluded_instance_polygon_excludes_the_occluder(dataset, tmp_path):
    root, frames = dataset
    out = tmp_path / "yolo"
    run_bridge(root, out)
    (car_class, car), (person_class, person) = sorted(read_label(out, "train", "d0_000001"), key=lambda x: -x[0])
    assert (car_class, person_class) == (3, 0)  # autorickshaw_car, person_animal
    frame = frames["d0_000001"]
    car_mask = polygons.normalized_polygon_to_mask(car, SHAPE)
    visible_car = frame == CAR * 1000
    assert iou(car_mask, visible_car) >= 0.95
    # the person's pixels are not part of the car's label (beyond the one-pixel bridge line)
    assert (car_mask & (frame == PERSON * 1000)).sum() <= 2 * 20
    assert iou(polygons.normalized_polygon_to_mask(person, SHAPE), frame == PERSON * 1000) >= 0.95


def test_split_instance_keeps_all_parts_and_its_hole_in_one_line(dataset, tmp_path):
    root, frames = dataset
    out = tmp_path / "yolo"
    report = run_bridge(root, out)
    lines = read_label(out, "train", "d0_000002")
    bus_lines = [coords for cls, coords in lines if cls == 4]
    assert len(bus_lines) == 1 and sum(cls == 1 for cls, _ in lines) == 1  # one bus, one rider
    bus_visible = frames["d0_000002"] == BUS * 1000
    bus_mask = polygons.normalized_polygon_to_mask(bus_lines[0], SHAPE)
    assert iou(bus_mask, bus_visible) >= 0.95
    assert bus_mask[30:80, 15:65].all() and bus_mask[30:80, 80:105].all()  # both parts
    assert not bus_mask[48:58, 113:123].any()  # the rider's hole stays empty
    stats = report["splits"]["train"]
    # the bus here and the car of d0_000001 (the person cuts it in two) are split; only the bus has a hole
    assert stats["multi_part_instances"] == 2 and stats["instances_with_holes"] == 1


def test_groups_and_empty_frames_are_backgrounds(dataset, tmp_path):
    root, _ = dataset
    out = tmp_path / "yolo"
    report = run_bridge(root, out)
    for name in ("d1_000003", "d1_000004"):
        assert (out / "labels" / "train" / f"{name}.txt").read_text() == ""
    train = report["splits"]["train"]
    assert train["images"] == 4 and train["backgrounds"] == 2 and train["corrupt"] == 0
    assert train["instances"] == {
        "person_animal": 1, "rider": 1, "motorcycle_bicycle": 0, "autorickshaw_car": 1, "large_vehicle": 1
    }
    assert report["splits"]["val"]["instances"]["motorcycle_bicycle"] == 1


def test_dataset_layout_links_images_and_writes_data_yaml(dataset, tmp_path):
    root, _ = dataset
    out = tmp_path / "yolo"
    run_bridge(root, out)
    linked = out / "images" / "train" / "d0_000001.png"
    source = root / "leftImg8bit" / "train" / "d0" / "000001_leftImg8bit.png"
    assert os.stat(linked).st_ino == os.stat(source).st_ino  # a hard link, not a copy
    assert (out / "images" / "val" / "d2_000005.jpg").is_file()
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["train"] == "images/train" and data["val"] == "images/val" and "path" not in data
    assert data["names"] == dict(enumerate(default_classes())) and data["nc"] == 5
    assert not list(tmp_path.glob(".yolo.staging"))


def test_class_remap_from_config(dataset, tmp_path):
    root, _ = dataset
    out = tmp_path / "yolo"
    report = run_bridge(root, out, classes={"two_wheeler": ["motorcycle", "bicycle"], "bus": ["bus"]})
    assert read_label(out, "train", "d0_000001") == []  # car and person are not mapped: no label
    assert [cls for cls, _ in read_label(out, "train", "d0_000002")] == [1]
    assert [cls for cls, _ in read_label(out, "val", "d2_000005")] == [0]
    assert report["splits"]["train"]["backgrounds"] == 3


@pytest.mark.parametrize(
    ("classes", "encoding", "problem"),
    [
        ({"x": ["cargroup"]}, "id", "group label"),
        ({"x": ["road"]}, "id", "has no instances"),
        ({"x": ["spaceship"]}, "id", "unknown IDD label"),
        ({"x": ["car"], "y": ["car"]}, "id", "two YOLO classes"),
        ({"x": ["caravan"]}, "level3Id", "trailer"),  # level3Id 12 also holds trailer, train, vehicle fallback
        ({"x": ["person"], "y": ["rider"]}, "level1Id", "same value"),
        ({"x": []}, "id", "non-empty list"),
    ],
)
def test_class_mapping_errors_name_the_config(classes, encoding, problem):
    with pytest.raises(InputError, match=problem) as info:
        resolve_classes(classes, encoding, "params.yaml")
    assert info.value.path == "params.yaml"


def test_coarser_encoding_resolves_when_the_mapping_is_expressible():
    class_map = resolve_classes(default_classes(), "level3Id")
    assert class_map.value_to_class[12] == 4 and class_map.value_to_class[4] == 0  # large vehicles, person+animal


@pytest.mark.parametrize("simplify_px", [0.0, config.compose()["yolo"]["bridge"]["simplify_px"]])
def test_round_trip_polygon_matches_the_instance_mask(simplify_px):
    rng = np.random.default_rng(7)
    for _ in range(60):
        mask = np.zeros((120, 200), np.uint8)
        center = (int(rng.integers(30, 170)), int(rng.integers(30, 90)))
        axes = (int(rng.integers(10, 40)), int(rng.integers(10, 30)))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        if rng.random() < 0.5:  # an occluder cuts it or punches a hole
            x = int(rng.integers(center[0] - 10, center[0] + 10))
            mask[:, x : x + int(rng.integers(2, 6))] = 0
        mask = mask.astype(bool)
        if mask.sum() < 200:
            continue
        polygon = polygons.mask_to_polygon(mask, simplify_px)
        assert iou(polygons.polygon_to_mask(polygon, mask.shape), mask) >= 0.95


def test_polygon_convention_matches_ultralytics_rasterisation():
    from idd_edge.yolo.offline import import_ultralytics

    import_ultralytics()
    from ultralytics.data.utils import polygon2mask

    mask = np.zeros((64, 96), np.uint8)
    cv2.circle(mask, (40, 30), 18, 1, -1)
    mask[:, 38:41] = 0
    polygon = polygons.mask_to_polygon(mask.astype(bool), 0.0)
    normalized = polygon / (96, 64)
    theirs = polygon2mask((64, 96), [normalized * (96, 64)], color=1, downsample_ratio=1).astype(bool)
    assert iou(theirs, mask.astype(bool)) >= 0.97
    assert np.array_equal(theirs, polygons.normalized_polygon_to_mask(normalized.ravel(), (64, 96)))


def test_corrupt_frames_are_reported_or_fail_in_strict_mode(dataset, tmp_path):
    root, _ = dataset
    (root / "leftImg8bit" / "train" / "d1" / "000004_leftImg8bit.png").unlink()  # annotation without image
    write_frame(root, "train", "d3_000009", background())
    atomic.write_png(root / "leftImg8bit" / "train" / "d3" / "000009_leftImg8bit.png", np.zeros((10, 10, 3), np.uint8))
    report = run_bridge(root, tmp_path / "yolo")
    assert report["splits"]["train"]["corrupt"] == 2
    problems = " ".join(entry["problem"] for entry in report["corrupt_files"])
    assert "no leftImg8bit image" in problems and "differs from its instance PNG" in problems
    with pytest.raises(StageError, match="corrupt"):
        run_bridge(root, tmp_path / "yolo_strict", strict=True)


def test_missing_instances_name_the_folder_and_the_convert_command(tmp_path):
    with pytest.raises(InputError, match="--encoding id --instance") as info:
        run_bridge(tmp_path, tmp_path / "yolo")
    assert info.value.path.endswith("gtFine/train")


def test_instance_boxes_groups_values_in_one_pass():
    frame = np.zeros((10, 12), np.uint16)
    frame[2:4, 3:6] = 6000
    frame[7, 1] = 6000
    frame[5:9, 8:11] = 12001
    frame[0, 0] = 12  # a group value: not an instance
    assert bridge.instance_boxes(frame) == {6000: (2, 8, 1, 6), 12001: (5, 9, 8, 11)}


def test_cli_reads_the_composed_config(dataset, tmp_path, capsys):
    root, _ = dataset
    params = config.compose(["yolo.bridge.workers=2"])
    config.write_params(params, tmp_path / "params.yaml")
    out, report_path = tmp_path / "yolo", tmp_path / "report.json"
    params_file = str(tmp_path / "params.yaml")
    code = main(["yolo-bridge", str(root), str(root), str(out), "--report", str(report_path), "--params", params_file])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["splits"]["train"]["instances_total"] == 4 and report["encoding"] == "id"
    assert len(read_label(out, "train", "d0_000002")) == 2
