"""Bundle manifest: schema validation, checksums, Hailo hw_arch / version compatibility."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from idd_edge_runtime import manifest as mf
from tests._runtime_bundle import (
    IMAGENET,
    INSTANCE_CLASSES,
    SEMANTIC_CLASSES,
    YOLO_NORMALIZATION,
    input_spec,
    manifest_dict,
    write_manifest,
)

SHA = "ab" * 32
HAILO = {"hw_arch": "hailo8", "dfc_version": "3.33.0", "hailort_version": "4.23.0"}


def _semantic(fmt: str = "onnx", name: str = "seg", file: str = "models/seg.onnx") -> dict:
    return {
        "name": name,
        "role": "semantic",
        "format": fmt,
        "file": file,
        "sha256": SHA,
        "input": input_spec(512, fmt, IMAGENET),
        "output": {"kind": "logits"},
        "classes": SEMANTIC_CLASSES,
        "gate": {"miou": 0.61, "passed": True},
    }


def _instance() -> dict:
    return {
        "name": "yolo",
        "role": "instance",
        "format": "onnx",
        "file": "models/yolo.onnx",
        "sha256": SHA,
        "input": input_spec(512, "onnx", YOLO_NORMALIZATION),
        "output": {"kind": "yolov8-seg"},
        "classes": INSTANCE_CLASSES,
        "postprocess": {"conf": 0.5, "iou": 0.5, "reg_max": 16, "mask_dim": 32},
        "gate": {"passed": True},
    }


def _valid() -> dict:
    return manifest_dict(
        [_semantic("hef", file="models/seg.hef"), _semantic("onnx"), _instance()], hailo=dict(HAILO)
    )


def test_valid_manifest_round_trips() -> None:
    data = _valid()
    manifest = mf.parse_manifest(data)
    assert manifest.model_names("semantic") == ["seg"] and manifest.model_names("instance") == ["yolo"]
    assert [e.format for e in manifest.entries("seg")] == ["hef", "onnx"]
    assert manifest.models[1].input.normalization.std == (58.395, 57.12, 57.375)
    assert manifest.has_hef
    assert mf.parse_manifest(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert manifest.to_dict() == data


def _break(mutate) -> str:
    data = copy.deepcopy(_valid())
    mutate(data)
    with pytest.raises(mf.ManifestError) as excinfo:
        mf.parse_manifest(data, "bundle/manifest.json")
    return str(excinfo.value)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.update(extra=1), "unknown field(s) ['extra']"),
        (lambda d: d.pop("label_level"), "missing field(s) ['label_level']"),
        (lambda d: d.update(format_version=2), "newer than this runtime reads"),
        (lambda d: d.update(version="../v1"), "version"),
        (lambda d: d.update(created="2025-01-31T12:00:00"), "no time zone"),
        (lambda d: d.update(label_level="level4"), "label_level"),
        (lambda d: d["source"].update(git_commit="not-a-commit"), "source.git_commit"),
        (lambda d: d["models"][1].update(sha256="ABC"), "models[1].sha256"),
        (lambda d: d["models"][1].update(file="../outside.onnx"), "under models/"),
        (lambda d: d["models"][1].update(file="/abs/models/x.onnx"), "under models/"),
        (lambda d: d["models"][1].update(role="panoptic"), "models[1].role"),
        (lambda d: d["models"][1]["output"].update(kind="yolov8-seg"), "models[1].output.kind"),
        (lambda d: d["models"][0]["input"].update(normalization={"mean": [0, 0, 0], "std": [1, 1, 1]}), "apply it twice"),
        (lambda d: d["models"][0]["input"].update(layout="NCHW"), "a HEF takes NHWC uint8"),
        (lambda d: d["models"][1]["input"]["normalization"].update(std=[1, 0, 1]), "std > 0"),
        (lambda d: d["models"][1]["classes"].append({"name": "road", "color": [1, 2, 3]}), "class names repeat"),
        (lambda d: d["models"][1]["classes"][0].update(color=[0, 0, 256]), "color"),
        (lambda d: d["models"][2].pop("postprocess"), "models[2].postprocess"),
        (lambda d: d["models"][2]["postprocess"].update(conf=0), "conf"),
        (lambda d: d["models"][1].update(postprocess={"conf": 0.5, "iou": 0.5, "reg_max": 16, "mask_dim": 32}), "only instance models"),
        (lambda d: d["models"][1]["gate"].pop("passed"), "gate.passed"),
        (lambda d: d["models"].append(_semantic("onnx")), "listed twice"),
        (lambda d: d["models"].append(_semantic("onnx-int8", file="models/seg.onnx")), "also used by"),
        (lambda d: d["models"][1].update(classes=SEMANTIC_CLASSES[:2]), "same role and classes"),
        (lambda d: d["hailo"].update(hw_arch=None), "must be set when the bundle contains HEF"),
        (lambda d: d["hailo"].update(hailort_version="4.17.0"), "does not pair with DFC 3.33"),
        (lambda d: d["hailo"].update(dfc_version="5.0.0", hailort_version="5.0.0"), "DFC 3.x"),
        (lambda d: d["hailo"].update(hw_arch="hailo15h"), "hailo.hw_arch"),
        (lambda d: d.update(models=[]), "non-empty list"),
    ],
)
def test_invalid_manifest_names_the_field(mutate, expected: str) -> None:
    message = _break(mutate)
    assert expected in message
    assert message.startswith("bundle/manifest.json: ")


def test_onnx_only_bundle_needs_no_hailo_versions() -> None:
    manifest = mf.parse_manifest(manifest_dict([_semantic("onnx"), _instance()]))
    assert not manifest.has_hef
    mf.check_hailo_compatibility(manifest, None, None)  # nothing to check without HEFs


def _bundle(tmp_path: Path, content: bytes = b"onnx bytes") -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "seg.onnx").write_bytes(content)
    entry = _semantic("onnx")
    entry["sha256"] = mf.sha256_file(tmp_path / "models" / "seg.onnx")
    write_manifest(tmp_path, manifest_dict([entry]))
    return tmp_path


def test_load_bundle_verifies_checksums(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    assert mf.load_bundle(bundle).models[0].name == "seg"
    (bundle / "models" / "seg.onnx").write_bytes(b"tampered")
    with pytest.raises(mf.ManifestError, match="seg.onnx does not match its sha256.*ship the bundle again"):
        mf.load_bundle(bundle)
    (bundle / "models" / "seg.onnx").unlink()
    with pytest.raises(mf.ManifestError, match="seg.onnx is missing"):
        mf.load_bundle(bundle)
    assert mf.load_bundle(bundle, verify=False).version == "v1"
    assert mf.bundle_file_list(bundle) == ["manifest.json"]


def test_load_manifest_reports_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(mf.ManifestError, match="not a bundle directory"):
        mf.load_manifest(tmp_path / "nope")
    with pytest.raises(mf.ManifestError, match="manifest.json: missing"):
        mf.load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(mf.ManifestError, match="not valid JSON"):
        mf.load_manifest(tmp_path)


def test_hailo_compatibility_refuses_with_what_to_do() -> None:
    manifest = mf.parse_manifest(_valid())
    mf.check_hailo_compatibility(manifest, "hailo8", "4.23.0")
    mf.check_hailo_compatibility(manifest, "hailo8", "4.24.1")  # newer runtime reads older HEFs
    with pytest.raises(mf.CompatibilityError, match=r"compiled for hailo8 but this device is a hailo8l.*hw_arch=hailo8l.*--backend onnx"):
        mf.check_hailo_compatibility(manifest, "hailo8l", "4.23.0")
    with pytest.raises(mf.CompatibilityError, match=r"needs HailoRT >= 4.23.*has HailoRT 4.17.0.*apt install hailo-all.*DFC 3.27"):
        mf.check_hailo_compatibility(manifest, "hailo8", "4.17.0")
    with pytest.raises(mf.CompatibilityError, match="no Hailo device found"):
        mf.check_hailo_compatibility(manifest, None, "4.23.0")
    with pytest.raises(mf.CompatibilityError, match="HailoRT is not installed"):
        mf.check_hailo_compatibility(manifest, "hailo8", None)


HAILO10H = {"hw_arch": "hailo10h", "dfc_version": "5.2.0", "hailort_version": "5.2.0"}


def test_hailo10h_bundle_round_trips_and_is_refused_where_it_cannot_run() -> None:
    """AI HAT+ 2: a Hailo-10H HEF comes from DFC 5.x and runs on HailoRT 5.x only, never beside 4.x."""
    data = manifest_dict([_semantic("hef", file="models/seg.hef"), _semantic("onnx")], hailo=dict(HAILO10H))
    manifest = mf.parse_manifest(data)
    assert manifest.hailo == mf.HailoInfo("hailo10h", "5.2.0", "5.2.0")
    assert mf.parse_manifest(json.loads(json.dumps(manifest.to_dict()))) == manifest
    mf.check_hailo_compatibility(manifest, "hailo10h", "5.2.0")
    with pytest.raises(mf.CompatibilityError, match=r"compiled for hailo10h but this device is a hailo8\b.*hw_arch=hailo8"):
        mf.check_hailo_compatibility(manifest, "hailo8", "4.23.0")
    with pytest.raises(mf.CompatibilityError, match=r"hailo10h needs HailoRT 5.x but HailoRT 4.23.0 is installed.*cannot be installed together"):
        mf.check_hailo_compatibility(manifest, "hailo10h", "4.23.0")
    with pytest.raises(mf.ManifestError, match=r"dfc_version.*hailo10h HEFs come from DFC 5.x"):
        mf.parse_manifest(manifest_dict([_semantic("hef", file="models/seg.hef")], hailo=dict(HAILO10H, dfc_version="3.33.0")))
    with pytest.raises(mf.ManifestError, match=r"dfc_version.*hailo8 HEFs come from DFC 3.x"):
        mf.parse_manifest(manifest_dict([_semantic("hef", file="models/seg.hef")], hailo=dict(HAILO, dfc_version="5.2.0")))
    with pytest.raises(mf.ManifestError, match=r"4.23.0 does not pair with DFC 5.2.0"):
        mf.parse_manifest(manifest_dict([_semantic("hef", file="models/seg.hef")], hailo=dict(HAILO10H, hailort_version="4.23.0")))
