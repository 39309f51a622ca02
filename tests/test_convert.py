"""The convert stage on small hand-made IDD trees: outputs, report, bad input, workers, strict, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from idd_edge import cli
from idd_edge.data import official
from idd_edge.data.convert import StrictModeError, run_pipeline
from idd_edge.errors import InputError
from idd_edge.labels import LABELS

W, H = 24, 16
ROAD = {"label": "road", "polygon": [[0, 8], [23, 8], [23, 15], [0, 15]]}
CAR = {"label": "car", "polygon": [[2, 9], [8, 9], [8, 13], [2, 13]]}
TRUCK = {"label": "truck", "polygon": [[12.5, 9.2], [20.7, 9.2], [20.7, 14.9], [12.5, 14.9]]}
CARGROUP = {"label": "cargroup", "polygon": [[9, 2], [14, 2], [14, 6], [9, 6]]}
SKY_DELETED = {"label": "sky", "polygon": [[0, 0], [23, 0], [23, 15], [0, 15]], "deleted": 1}


def doc(*objects: dict, width: int = W, height: int = H) -> dict:
    return {"imgHeight": height, "imgWidth": width, "objects": list(objects)}


def add_sample(
    root: Path, name: str, annotation: dict | str | bytes | None, image: tuple[int, int] | None = (W, H),
    split: str = "train", drive: str = "0", image_suffix: str = ".png",
) -> str:
    """Write `<name>` into an IDD tree: polygon JSON (dict, or raw text/bytes) and/or an image of `image` size."""
    if annotation is not None:
        path = root / "gtFine" / split / drive / f"{name}_gtFine_polygons.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(annotation) if isinstance(annotation, dict) else annotation
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    if image is not None:
        path = root / "leftImg8bit" / split / drive / f"{name}_leftImg8bit{image_suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", image, (90, 90, 90)).save(path)
    return f"gtFine/{split}/{drive}/{name}_gtFine_polygons.json"


def read_png(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, path
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB) if array.ndim == 3 else array


def outputs(out: Path, name: str, encoding: str, split: str = "train", drive: str = "0") -> dict[str, Path]:
    folder = out / "gtFine" / split / drive
    return {
        "semantic": folder / f"{name}_gtFine_label{encoding}s.png",
        "instance": folder / f"{name}_gtFine_instance{encoding}s.png",
        "color": folder / f"{name}_gtFine_labelColors.png",
        "panoptic": out / "gtFine" / f"{split}_panoptic" / f"{drive}_{name}_gtFine_panoptic.png",
    }


def test_all_outputs_match_the_official_rendering_with_official_names(tmp_path: Path) -> None:
    document = doc(ROAD, CAR, SKY_DELETED, TRUCK, CARGROUP, {"label": "pole", "polygon": [[1, 1], [6, 5]]})
    add_sample(tmp_path / "idd", "000001", document)
    report = run_pipeline(tmp_path / "idd", tmp_path / "out", "level3Id", True, True, True, True,
                          report_path=tmp_path / "report.json")
    files = outputs(tmp_path / "out", "000001", "level3Id")
    assert all(path.is_file() for path in files.values())
    assert (tmp_path / "out" / "gtFine" / "train_panoptic.json").is_file()

    label, instance, color = (read_png(files[kind]) for kind in ("semantic", "instance", "color"))
    assert label.dtype == np.uint8 and instance.dtype == np.uint16 and color.shape == (H, W, 3)
    assert np.array_equal(label, np.asarray(official.label_image(document, "level3Id")))
    assert np.array_equal(color, np.asarray(official.color_image(document))[..., :3])
    assert np.array_equal(instance, np.asarray(official.instance_image(document, "level3Id")))
    assert label[10, 4] == 9 and instance[10, 4] == 9000 and label[0, 0] == 255  # car, background
    assert instance[4, 11] == 9 and instance[12, 15] == 10000  # cargroup plain, truck instance
    assert set(np.unique(instance[label == 255])) <= {255, 20}  # 2-point pole only in the instance image

    assert report["converted"] == 1 and report["objects"] == {"drawn": 5, "deleted": 1, "skipped": 0}
    assert report["findings_by_reason"] == {"short_polygon": 1}
    assert json.loads((tmp_path / "report.json").read_text()) == report


def test_seed_shaped_signature_and_instance_counters_per_encoding(tmp_path: Path) -> None:
    add_sample(tmp_path / "idd", "000001", doc(ROAD, CAR, TRUCK, CARGROUP))
    for encoding, car, truck in (("level3Id", 9000, 10000), ("level1Id", 3000, 3001)):
        report = run_pipeline(str(tmp_path / "idd"), str(tmp_path / "out"), encoding, True, True, False, False)
        assert report["converted"] == 1 and report["findings"] == []
        instance = read_png(outputs(tmp_path / "out", "000001", encoding)["instance"])
        assert instance[10, 4] == car and instance[12, 15] == truck  # level1: one vehicle counter, no collision
    assert not outputs(tmp_path / "out", "000001", "level1Id")["color"].exists()


@pytest.mark.parametrize(("encoding", "background"), [("id", 35), ("csId", 0), ("csTrainId", 255), ("level2Id", 255)])
def test_background_of_written_label_images(tmp_path: Path, encoding: str, background: int) -> None:
    add_sample(tmp_path / "idd", "000001", doc())
    run_pipeline(tmp_path / "idd", tmp_path / "out", encoding, do_color=True)
    files = outputs(tmp_path / "out", "000001", encoding)
    assert (read_png(files["semantic"]) == background).all() and not read_png(files["color"]).any()


def _random_document(rng: np.random.Generator, objects: int) -> dict:
    names = [label.name for label in LABELS] + ["cargroup", "persongroup"]
    return doc(*(
        {"label": str(rng.choice(names)), "deleted": int(rng.random() < 0.1),
         "polygon": rng.uniform(-4, 30, (int(rng.integers(2, 9)), 2)).round(2).tolist()}
        for _ in range(objects)
    ))


def _tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_workers_give_identical_outputs_and_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    for i in range(7):
        add_sample(tmp_path / "idd", f"{i:06d}", _random_document(rng, 40), split=("train", "val")[i % 2], drive=str(i % 3))
    add_sample(tmp_path / "idd", "000099", "{broken")
    reports = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        reports[workers] = run_pipeline(tmp_path / "idd", out, "level2Id", True, True, True, True, workers=workers)
    assert _tree_bytes(tmp_path / "out1") == _tree_bytes(tmp_path / "out2")
    for report in reports.values():
        del report["summary"], report["output"]
    assert reports[1] == reports[2] and reports[1]["converted"] == 7


def test_every_bad_input_is_reported_and_the_rest_converts(tmp_path: Path) -> None:
    root, out = tmp_path / "idd", tmp_path / "out"
    good = add_sample(root, "000000", doc(ROAD, CAR))
    malformed = add_sample(root, "000001", '{"imgWidth": 24, "imgHeight": 16, "objects": [')
    missing_key = add_sample(root, "000002", {"imgWidth": W, "objects": []})
    objects = add_sample(root, "000003", doc(
        ROAD,
        {"label": "spaceship", "polygon": CAR["polygon"]},
        {"label": "car", "polygon": []},
        {"label": "car", "polygon": [[1, 1], [float("nan"), 2], [3, 3]]},
        {"label": "car", "polygon": [[1, 1], [float("inf"), 2], [3, 3]]},
        {"polygon": CAR["polygon"]},
    ))
    no_image = add_sample(root, "000004", doc(ROAD), image=None)
    add_sample(root, "000005", None)  # image without annotation
    size_mismatch = add_sample(root, "000006", doc(ROAD), image=(W + 1, H))
    unreadable = add_sample(root, "000007", doc(ROAD), image=None)
    (root / "leftImg8bit/train/0/000007_leftImg8bit.png").write_bytes(b"not a png")
    add_sample(root, "000008", None, split="test")  # unannotated split (real IDD test): not a finding
    stale = outputs(out, "000001", "level3Id")["semantic"]
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old mask")

    report = run_pipeline(root, out, "level3Id", True, True, True, True, report_path=tmp_path / "r.json")

    found = {(f["file"], f["reason"]) for f in report["findings"]}
    assert found == {
        (malformed, "malformed_json"),
        (missing_key, "missing_key"),
        (objects, "unknown_label"),
        (objects, "empty_polygon"),
        (objects, "non_finite_coordinate"),
        (objects, "missing_key"),
        (no_image, "missing_image"),
        ("leftImg8bit/train/0/000005_leftImg8bit.png", "missing_annotation"),
        (size_mismatch, "size_mismatch"),
        ("leftImg8bit/train/0/000007_leftImg8bit.png", "unreadable_image"),
    }
    assert report["findings_by_reason"]["non_finite_coordinate"] == 2
    assert all(f["detail"] for f in report["findings"])
    assert report["annotation_files"] == 7 and report["converted"] == 4 and report["not_converted"] == 3
    for name, written in (("000000", True), ("000003", True), ("000004", True), ("000007", True),
                          ("000001", False), ("000002", False), ("000006", False)):
        assert all(path.exists() == written for path in outputs(out, name, "level3Id").values()), name
    assert good and not stale.exists()  # a stale mask of a now-broken file is removed
    label = read_png(outputs(out, "000003", "level3Id")["semantic"])
    assert (label[8:, :] == 0).all() and (label[:8, :] == 255).all()  # only the valid road was drawn
    panoptic = json.loads((out / "gtFine" / "train_panoptic.json").read_text())
    assert [a["image_id"] for a in panoptic["annotations"]] == ["0_000000", "0_000003", "0_000004", "0_000007"]
    assert not list(out.rglob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))  # atomic writes only


def test_instance_overflow_writes_no_instance_mask_but_the_rest(tmp_path: Path) -> None:
    path = add_sample(tmp_path / "idd", "000001", doc(*[CAR] * 1001))
    report = run_pipeline(tmp_path / "idd", tmp_path / "out", "level3Id", do_instance=True)
    assert [(f["file"], f["reason"]) for f in report["findings"]] == [(path, "instance_overflow")]
    files = outputs(tmp_path / "out", "000001", "level3Id")
    assert files["semantic"].exists() and not files["instance"].exists()


def test_jpg_images_are_found(tmp_path: Path) -> None:
    add_sample(tmp_path / "idd", "000001", doc(ROAD), image_suffix=".jpg")
    report = run_pipeline(tmp_path / "idd", tmp_path / "out", "level3Id", do_panoptic=True)
    assert report["findings"] == []
    coco = json.loads((tmp_path / "out/gtFine/train_panoptic.json").read_text())
    assert coco["images"][0]["file_name"] == "0/000001_leftImg8bit.jpg"


def test_strict_raises_after_converting_and_writing_the_report(tmp_path: Path) -> None:
    add_sample(tmp_path / "idd", "000001", doc(ROAD, {"label": "spaceship", "polygon": CAR["polygon"]}))
    with pytest.raises(StrictModeError) as caught:
        run_pipeline(tmp_path / "idd", tmp_path / "out", "level3Id", strict=True, report_path=tmp_path / "r.json")
    assert caught.value.report["findings_by_reason"] == {"unknown_label": 1}
    assert (tmp_path / "r.json").is_file() and outputs(tmp_path / "out", "000001", "level3Id")["semantic"].is_file()


def _cli(tmp_path: Path, *extra: str) -> list[str]:
    return ["convert", str(tmp_path / "idd"), str(tmp_path / "out"), "--encoding", "level3Id", "--no-instance",
            "--no-color", "--no-panoptic", "--no-strict", "--workers", "1", "--report", str(tmp_path / "r.json"),
            "--params", str(tmp_path / "absent.yaml"), *extra]


def test_cli_strict_exits_1_with_summary_and_needs_no_params_when_all_flags_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_sample(tmp_path / "idd", "000001", doc(ROAD, {"label": "car", "polygon": []}))
    assert cli.main(_cli(tmp_path)) == 0  # the params file does not exist: it is never read
    assert cli.main(_cli(tmp_path, "--strict")) == 1
    err = capsys.readouterr().err
    assert "strict" in err and "empty_polygon 1" in err and "converted 1/1" in err
    assert json.loads((tmp_path / "r.json").read_text())["findings_by_reason"] == {"empty_polygon": 1}


def test_cli_takes_missing_arguments_from_params(tmp_path: Path) -> None:
    add_sample(tmp_path / "idd", "000001", doc(ROAD, CAR))
    params = {
        "data": {"root": str(tmp_path / "idd")},
        "label_level": {"encoding": "level1Id"},
        "convert": {"out": str(tmp_path / "out"), "instance": True, "color": False, "panoptic": False,
                    "workers": 1, "strict": False, "report": str(tmp_path / "r.json")},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli.main(["convert", "--params", str(tmp_path / "params.yaml")]) == 0
    files = outputs(tmp_path / "out", "000001", "level1Id")
    assert files["semantic"].exists() and files["instance"].exists() and not files["color"].exists()
    assert (tmp_path / "r.json").is_file()


def test_cli_bad_roots_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(_cli(tmp_path)) == 2  # root does not exist
    (tmp_path / "idd").mkdir()
    assert cli.main(_cli(tmp_path)) == 2  # no gtFine/
    (tmp_path / "idd" / "gtFine" / "train").mkdir(parents=True)
    assert cli.main(_cli(tmp_path)) == 2  # no annotation files
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("idd-edge convert: error:") for line in lines)
    assert "does not exist" in lines[0] and "no gtFine" in lines[1] and "_gtFine_polygons.json" in lines[2]


def test_nothing_selected_is_an_input_error(tmp_path: Path) -> None:
    add_sample(tmp_path / "idd", "000001", doc(ROAD))
    with pytest.raises(InputError):
        run_pipeline(tmp_path / "idd", tmp_path / "out", "level3Id", do_semantic=False)
    with pytest.raises(InputError):
        run_pipeline(tmp_path / "idd", tmp_path / "out", "level9Id")


def test_converts_a_tiny_synthetic_dataset_exactly(tmp_path: Path) -> None:
    synth = pytest.importorskip("idd_edge.data.synth")
    synth.generate_dataset(tmp_path / "syn", {"train": 2, "val": 1, "test": 1}, (96, 54), seed=3)
    report = run_pipeline(tmp_path / "syn", tmp_path / "out", "level2Id", True, True, True, True)
    assert report["findings"] == [] and report["converted"] == report["annotation_files"] == 4
    for annotation in sorted((tmp_path / "syn" / "gtFine").glob("*/*/*_gtFine_polygons.json")):
        document = json.loads(annotation.read_text())
        split, drive, name = annotation.parent.parent.name, annotation.parent.name, annotation.name.split("_")[0]
        files = outputs(tmp_path / "out", name, "level2Id", split, drive)
        assert np.array_equal(read_png(files["semantic"]), np.asarray(official.label_image(document, "level2Id")))
        assert np.array_equal(read_png(files["instance"]), np.asarray(official.instance_image(document, "level2Id")))
