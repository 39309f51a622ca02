"""The synthetic IDD-format dataset (synth, synth_scene, synth_paint): layout, JSON schema, quirks,
determinism, image/annotation consistency, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from idd_edge import config
from idd_edge.cli import main
from idd_edge.data import synth, synth_paint, synth_scene
from idd_edge.errors import InputError
from idd_edge.labels import LABELS, UNLABELED, is_group, lookup

TINY = (96, 54)
TINY_COUNTS = {"train": 3, "val": 2, "test": 1}
THING_CLASSES = [label.name for label in LABELS if label.hasInstances and label.name in synth_paint.PALETTE]
OBJECT_KEYS = {"label", "polygon", "deleted", "draw", "id", "user", "verified", "date"}


@pytest.fixture(scope="module")
def scenes() -> list[tuple[dict, np.ndarray]]:
    """A dozen small scenes shared by the content tests."""
    return [synth.make_scene(np.random.default_rng(seed), 160, 90) for seed in range(12)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "synthetic"
    synth.generate_dataset(root, TINY_COUNTS, TINY, seed=7)
    return root


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _object_index_map(annotation: dict) -> tuple[list[dict], np.ndarray]:
    """Independent re-rasterisation, official style: PIL fills the non-deleted polygons in list order."""
    image = Image.new("I", (annotation["imgWidth"], annotation["imgHeight"]), 0)
    draw = ImageDraw.Draw(image)
    objects = [obj for obj in annotation["objects"] if not obj["deleted"]]
    for index, obj in enumerate(objects, start=1):
        draw.polygon([tuple(point) for point in obj["polygon"]], fill=index)
    return objects, np.asarray(image)


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_another_seed_differs(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synth.generate_dataset(again, TINY_COUNTS, TINY, seed=7)
    assert _tree_bytes(again) == _tree_bytes(dataset)

    other = tmp_path / "other"
    synth.generate_dataset(other, TINY_COUNTS, TINY, seed=8)
    other_images = [v for k, v in _tree_bytes(other).items() if k.endswith(".png")]
    assert not set(other_images) & {v for k, v in _tree_bytes(dataset).items() if k.endswith(".png")}


def test_an_image_depends_only_on_seed_split_and_index(tmp_path: Path) -> None:
    synth.generate_dataset(tmp_path / "a", {"train": 1, "val": 1}, TINY, seed=3)
    synth.generate_dataset(tmp_path / "b", {"train": 2, "val": 3, "test": 1}, TINY, seed=3)
    first_a = sorted((tmp_path / "a" / "leftImg8bit" / "train").rglob("*.png"))[0]
    first_b = sorted((tmp_path / "b" / "leftImg8bit" / "train").rglob("*.png"))[0]
    assert first_a.read_bytes() == first_b.read_bytes()


def test_make_scene_is_deterministic_per_generator_state() -> None:
    ann_a, img_a = synth.make_scene(np.random.default_rng(5), *TINY)
    ann_b, img_b = synth.make_scene(np.random.default_rng(5), *TINY)
    ann_c, img_c = synth.make_scene(np.random.default_rng(6), *TINY)
    assert json.dumps(ann_a) == json.dumps(ann_b) and np.array_equal(img_a, img_b)
    assert json.dumps(ann_a) != json.dumps(ann_c) and not np.array_equal(img_a, img_c)


# ---------------------------------------------------------------------------------------------- layout


def test_layout_follows_idd_naming(dataset: Path) -> None:
    summary = json.loads((dataset / synth.SUMMARY_NAME).read_text())
    for split, count in TINY_COUNTS.items():
        images = sorted((dataset / "leftImg8bit" / split).rglob("*"))
        images = [p for p in images if p.is_file()]
        assert len(images) == count == summary["splits"][split]["images"]
        for image_path in images:
            drive = image_path.parent.name
            assert image_path.parent.parent == dataset / "leftImg8bit" / split
            assert re.fullmatch(r"\d+", drive), drive
            match = re.fullmatch(r"(\d{6})_leftImg8bit\.png", image_path.name)
            assert match, image_path.name
            json_path = dataset / "gtFine" / split / drive / f"{match.group(1)}_gtFine_polygons.json"
            annotation = json.loads(json_path.read_text())
            with Image.open(image_path) as image:
                assert image.mode == "RGB"
                assert image.size == (annotation["imgWidth"], annotation["imgHeight"]) == TINY
        assert sorted({p.parent.name for p in images}, key=int) == summary["splits"][split]["drives"]
    all_drives = [d for s in summary["splits"].values() for d in s["drives"]]
    assert len(all_drives) == len(set(all_drives)), "drive folders are unique across splits"
    assert summary["image_format"] == "png" and summary["size"] == list(TINY)
    assert not list(dataset.parent.glob(".synthetic.*")), "staging directory left behind"


def test_summary_counts_match_the_annotations(dataset: Path) -> None:
    summary = json.loads((dataset / synth.SUMMARY_NAME).read_text())
    for split in TINY_COUNTS:
        labels: dict[str, int] = {}
        deleted = 0
        for path in (dataset / "gtFine" / split).rglob("*.json"):
            for obj in json.loads(path.read_text())["objects"]:
                if obj["deleted"]:
                    deleted += 1
                else:
                    labels[obj["label"]] = labels.get(obj["label"], 0) + 1
        assert summary["splits"][split]["labels"] == dict(sorted(labels.items()))
        assert summary["splits"][split]["deleted"] == deleted
        assert sum(summary["splits"][split]["pixel_share"].values()) == pytest.approx(1.0, abs=1e-4)


def test_the_drive_layout_spreads_images_over_a_few_drives() -> None:
    layout = synth.dataset_layout({"train": 48, "val": 16, "test": 8}, seed=0)
    assert [len({d for d, _ in layout[s]}) for s in ("train", "val", "test")] == [4, 2, 1]
    for names in layout.values():
        for (drive_a, id_a), (drive_b, id_b) in zip(names, names[1:]):
            assert drive_a != drive_b or int(id_b) > int(id_a), "frame numbers increase within a drive"


def test_regenerating_replaces_the_previous_dataset(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    synth.generate_dataset(root, {"train": 2}, TINY, seed=1)
    stale = root / "leftImg8bit" / "train" / "stale.png"
    stale.write_bytes(b"old")
    synth.generate_dataset(root, {"train": 1}, TINY, seed=1)
    assert not stale.exists()
    assert len(list((root / "leftImg8bit").rglob("*.png"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_refuses_to_replace_a_directory_it_did_not_write(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="refusing to replace"):
        synth.generate_dataset(precious, {"train": 1}, TINY, seed=1)
    assert (precious / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------- JSON content


def test_json_follows_the_idd_schema(dataset: Path) -> None:
    paths = sorted((dataset / "gtFine").rglob("*_gtFine_polygons.json"))
    assert len(paths) == sum(TINY_COUNTS.values())
    for path in paths:
        annotation = json.loads(path.read_text())
        assert set(annotation) == {"imgHeight", "imgWidth", "objects"}
        width, height = annotation["imgWidth"], annotation["imgHeight"]
        ids = [obj["id"] for obj in annotation["objects"]]
        assert len(ids) == len(set(ids))
        for obj in annotation["objects"]:
            assert set(obj) == OBJECT_KEYS
            assert lookup(obj["label"]) is not None, obj["label"]
            assert obj["deleted"] in (0, 1) and obj["verified"] in (0, 1) and obj["draw"] is True
            assert isinstance(obj["id"], int) and isinstance(obj["user"], str)
            assert re.fullmatch(r"\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d", obj["date"]), obj["date"]
            assert len(obj["polygon"]) >= 3
            for point in obj["polygon"]:
                assert len(point) == 2 and all(type(v) is float for v in point)
                assert -3 <= point[0] <= width + 2 and -3 <= point[1] <= height + 2


def test_realistic_quirks_are_present(scenes: list[tuple[dict, np.ndarray]]) -> None:
    objects = [obj for annotation, _ in scenes for obj in annotation["objects"]]
    deleted = sum(obj["deleted"] for obj in objects) / len(objects)
    assert 0.04 <= deleted <= 0.2
    assert any(is_group(obj["label"]) for obj in objects)
    points = np.array([p for obj in objects for p in obj["polygon"]])
    assert (points < 0).any() and (points[:, 0] > 159).any(), "some shapes reach slightly outside the frame"
    assert (points != np.round(points)).any(), "float coordinates"
    deleted_labels = {obj["label"] for obj in objects if obj["deleted"]}
    assert len(deleted_labels) > 3


def test_several_instances_of_every_thing_class() -> None:
    counts: dict[str, int] = {}
    for seed in range(16):
        annotation, _ = synth.make_scene(np.random.default_rng(seed), 128, 72)
        for obj in annotation["objects"]:
            if not obj["deleted"]:
                counts[obj["label"]] = counts.get(obj["label"], 0) + 1
    for name in THING_CLASSES:
        assert counts.get(name, 0) >= 2, (name, counts)
    for seed in range(4):
        objects = synth.make_scene(np.random.default_rng(seed), 128, 72)[0]["objects"]
        assert sum(lookup(obj["label"]).hasInstances for obj in objects) >= 3, "several instances per image"


@pytest.mark.parametrize("size", [(32, 32), (240, 32), (32, 240)])
def test_odd_frame_shapes_still_give_valid_scenes(size: tuple[int, int]) -> None:
    for seed in range(3):
        annotation, image = synth.make_scene(np.random.default_rng(seed), *size, density=2.0)
        assert image.shape == (size[1], size[0], 3)
        for obj in annotation["objects"]:
            points = np.asarray(obj["polygon"])
            assert len(points) >= 3 and np.isfinite(points).all()
            assert (points >= -3).all() and (points <= np.array(size) + 2).all()


@pytest.mark.parametrize("objects", [30, 200])
def test_density_for_gives_the_asked_object_count_on_average(objects: int) -> None:
    density = synth.density_for(objects)
    counts = []
    for seed in range(40):  # composition and JSON only: painting does not change the count
        rng = np.random.default_rng(seed)
        shapes = synth_scene.compose_scene(rng, 480, 270, density)
        counts.append(len(synth_scene.annotate(rng, shapes, 480, 270)[0]["objects"]))
    assert np.mean(counts) == pytest.approx(objects, rel=0.1)


# ---------------------------------------------------------------------------------------------- image vs JSON


def test_label_map_equals_the_official_rasterisation(scenes: list[tuple[dict, np.ndarray]]) -> None:
    for seed in range(3):
        annotation, decals, _, label_ids = synth.render_scene(np.random.default_rng(seed), 160, 90, 1.0)
        official = Image.new("L", (160, 90), UNLABELED.id)
        draw = ImageDraw.Draw(official)
        for obj in annotation["objects"]:
            if not obj["deleted"]:
                draw.polygon([tuple(p) for p in obj["polygon"]], fill=lookup(obj["label"]).id)
        assert np.array_equal(label_ids, np.asarray(official))


def _palette_matches(annotation: dict, image: np.ndarray) -> list[bool]:
    """Per visible object: is the median colour of its (eroded) pixels near a palette colour of its class?"""
    objects, index = _object_index_map(annotation)
    matches = []
    for k, obj in enumerate(objects, start=1):
        if is_group(obj["label"]):
            continue
        region = cv2.erode((index == k).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if region.sum() < 30:
            continue
        median = np.median(image[region].astype(float), axis=0)
        palette = np.asarray(synth_paint.PALETTE[obj["label"]], dtype=float)
        matches.append(bool(np.linalg.norm(palette - median, axis=1).min() <= 50))
    return matches


def test_painted_colours_match_the_polygons(scenes: list[tuple[dict, np.ndarray]]) -> None:
    matches = [m for annotation, image in scenes for m in _palette_matches(annotation, image)]
    assert len(matches) > 100
    assert np.mean(matches) >= 0.9
    # The check discriminates: the same images rotated by 180 degrees no longer fit their polygons.
    rotated = [m for annotation, image in scenes for m in _palette_matches(annotation, image[::-1, ::-1])]
    assert np.mean(rotated) <= 0.6


def test_deleted_objects_are_not_painted() -> None:
    checked = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        annotation = synth_scene.annotate(rng, synth_scene.compose_scene(rng, *TINY), *TINY)[0]
        if not any(obj["deleted"] for obj in annotation["objects"]):
            continue
        checked += 1
        kept = {**annotation, "objects": [obj for obj in annotation["objects"] if not obj["deleted"]]}
        painted = synth_paint.paint_scene(annotation, np.random.default_rng(99))
        assert np.array_equal(painted, synth_paint.paint_scene(kept, np.random.default_rng(99)))
        # Control: dropping a visible (non-deleted) object does change the image.
        visible = max(range(len(kept["objects"])), key=lambda i: len(kept["objects"][i]["polygon"]))
        dropped = {**kept, "objects": kept["objects"][:visible] + kept["objects"][visible + 1:]}
        assert not np.array_equal(painted, synth_paint.paint_scene(dropped, np.random.default_rng(99)))
    assert checked >= 3


def test_colour_alone_is_not_a_perfect_classifier() -> None:
    """Some classes share hues (white sky / whitewash / white cars): nearest-palette pixel labelling errs."""
    palette = [(label, np.asarray(c, float)) for label, colours in synth_paint.PALETTE.items() for c in colours]
    colours = np.stack([c for _, c in palette])
    names = [lookup(label).id for label, _ in palette]
    _, _, image, label_ids = synth.render_scene(np.random.default_rng(0), 160, 90, 1.0)
    nearest = np.argmin(((image.reshape(-1, 1, 3).astype(float) - colours[None]) ** 2).sum(-1), axis=1)
    accuracy = np.mean(np.asarray(names)[nearest] == label_ids.ravel())
    assert 0.2 < accuracy < 0.95


def test_clip_polygon_keeps_the_part_inside_the_box() -> None:
    square = np.array([[-10.0, -10.0], [10.0, -10.0], [10.0, 10.0], [-10.0, 10.0]])
    clipped = synth_scene.clip_polygon(square, (0.0, 0.0), (20.0, 20.0))
    assert sorted(map(tuple, clipped)) == [(0.0, 0.0), (0.0, 10.0), (10.0, 0.0), (10.0, 10.0)]
    assert len(synth_scene.clip_polygon(square + 100, (0.0, 0.0), (20.0, 20.0))) == 0
    assert np.array_equal(synth_scene.clip_polygon(square + 15, (0.0, 0.0), (30.0, 30.0)), square + 15)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_with_flags(tmp_path: Path) -> None:
    out = tmp_path / "flags"
    args = ["synth", str(out), "--train", "2", "--val", "1", "--test", "0", "--size", "64x36", "--seed", "4"]
    assert main([*args, "--params", str(tmp_path / "absent.yaml")]) == 0  # all flags given: params not read
    summary = json.loads((out / synth.SUMMARY_NAME).read_text())
    assert [summary["splits"][s]["images"] for s in ("train", "val", "test")] == [2, 1, 0]
    assert summary["size"] == [64, 36] and summary["seed"] == 4
    assert not (out / "leftImg8bit" / "test").exists()


def test_cli_defaults_come_from_the_composed_params(tmp_path: Path) -> None:
    out = tmp_path / "from_params"
    overrides = [f"synth.out={out}", "synth.train=1", "synth.val=1", "synth.test=1"]
    overrides += ["synth.width=64", "synth.height=48"]
    params_path = tmp_path / "params.yaml"
    config.write_params(config.compose(overrides), params_path)
    assert main(["synth", "--params", str(params_path), "--val", "2"]) == 0
    summary = json.loads((out / synth.SUMMARY_NAME).read_text())
    assert [summary["splits"][s]["images"] for s in ("train", "val", "test")] == [1, 2, 1]
    assert summary["size"] == [64, 48] and summary["seed"] == config.compose()["synth"]["seed"]


@pytest.mark.parametrize("size", ["480", "480x", "abcx270", "16x16", "480*270"])
def test_cli_rejects_a_bad_size(size: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(tmp_path / "out"), "--size", size])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--size" in error and ("WIDTHxHEIGHT" in error or "must be in" in error)
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_bad_params_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params_path = tmp_path / "params.yaml"
    config.write_params(config.compose(["synth.width=0"]), params_path)
    assert main(["synth", str(tmp_path / "out"), "--params", str(params_path)]) == 2
    error = capsys.readouterr().err
    assert str(params_path) in error and "width" in error
