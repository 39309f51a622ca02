"""`idd-edge weights fetch`, offline: a real Hugging Face hub cache written here, Ultralytics' downloader with
the network refused. Nothing here reaches the network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from idd_edge import config
from idd_edge.cli import main
from idd_edge.seg.models import build_model
from idd_edge.weights import fetch_yolo, timm_tags
from tests.test_yolo_train import NETWORK_GUARD, RUN_CLI

TAG = "mobilenetv4_conv_small.e2400_r224_in1k"  # the tag of conf/model/mnv4s_lraspp.yaml
STUDENT = {"name": "mnv4s_lraspp", "arch": "lraspp", "backbone": "mobilenetv4_conv_small", "pretrained": True,
           "pretrained_tag": TAG}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory (params.yaml with one student, a DVC repo) and an empty offline hub cache."""
    params = config.compose()
    params["models"] = {"teacher": {}, "students": {"mnv4s_lraspp": STUDENT}}
    params["yolo"]["train"]["pretrained"] = "models/pretrained/yolo/yolov8n-seg.pt"
    config.write_params(params, tmp_path / "params.yaml")
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at its import otherwise
    return tmp_path


def _hub_snapshot(hub: Path, tag: str, tensors: dict[str, torch.Tensor]) -> Path:
    """Write `timm/<tag>`'s model.safetensors in huggingface_hub's cache layout (blob, snapshot link, ref)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / f"models--timm--{tag}"
    blob = repo / "blobs" / "weights-blob"
    blob.parent.mkdir(parents=True)
    save_file(tensors, str(blob))
    snapshot = repo / "snapshots" / commit / "model.safetensors"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(Path("../../blobs/weights-blob"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return blob


def test_timm_weights_come_from_the_hub_into_the_project_folder_and_dvc(project, capsys):
    import timm

    source = {k: v.contiguous() for k, v in timm.create_model("mobilenetv4_conv_small", pretrained=False).state_dict().items()}
    blob = _hub_snapshot(project / "hub", TAG, source)

    assert main(["weights", "fetch", "--only", "seg"]) == 0
    target = project / "models" / "pretrained" / "seg" / f"{TAG}.safetensors"
    assert target.read_bytes() == blob.read_bytes() and not target.is_symlink()
    assert (target.parent / f"{target.name}.dvc").is_file()  # tracked by `dvc add`
    out = capsys.readouterr().out
    assert f"fetched {TAG} -> models/pretrained/seg/{TAG}.safetensors" in out and "tracked with: dvc add" in out
    # The training code now starts the student's backbone from exactly these tensors.
    torch.manual_seed(1)
    model = build_model(STUDENT, num_classes=7, input_size=(64, 64))
    loaded = {k: v for k, v in model.state_dict().items() if k.endswith("conv_stem.weight")}
    assert loaded and all(torch.equal(v, source["conv_stem.weight"]) for v in loaded.values())


def test_offline_without_the_file_names_what_failed_and_where_to_put_it(project, capsys):
    assert main(["weights", "fetch", "--only", "seg", "--no-dvc-add"]) == 1
    captured = capsys.readouterr()
    assert f"could not fetch {TAG} from https://huggingface.co/timm/{TAG} (model.safetensors)" in captured.out
    assert f"place it at models/pretrained/seg/{TAG}.safetensors" in captured.out
    assert "Traceback" not in captured.out + captured.err
    assert not (project / "models" / "pretrained" / "seg").exists()


def test_yolo_weights_offline_fail_cleanly_with_the_network_refused(project):
    # Ultralytics' own downloader, in a process where every internet socket and DNS lookup is refused.
    done = subprocess.run([sys.executable, "-c", NETWORK_GUARD + RUN_CLI, "weights", "fetch", "--only", "yolo"],
                          cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "could not fetch yolov8n-seg.pt from Ultralytics release asset yolov8n-seg.pt" in done.stdout
    assert "place it at models/pretrained/yolo/yolov8n-seg.pt" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not (project / "models" / "pretrained" / "yolo" / "yolov8n-seg.pt").exists()
    assert not list((project / "models" / "pretrained" / "yolo").glob(".*"))  # no partial download left


def test_yolo_weights_already_in_place_are_kept_and_unknown_assets_refused(tmp_path):
    target = tmp_path / "yolov8n-seg.pt"
    target.write_bytes(b"checkpoint")
    assert fetch_yolo("yolov8n-seg.pt", target).error is None and target.read_bytes() == b"checkpoint"
    assert "not one of Ultralytics' release assets" in fetch_yolo("mystery.pt", tmp_path / "mystery.pt").error


def test_tags_are_the_model_configs_pretrained_tags_once_each():
    params = config.compose()
    models = [params["models"]["teacher"], *params["models"]["students"].values()]
    assert timm_tags(models) == ["convnext_atto.d2_in1k", TAG, "mobilenetv4_conv_large.e600_r384_in1k"]
