"""Ultralytics YOLO26n-sem beside the students: the semantic bridge (class ids, ignore label, pairing, links),
a tiny offline Ultralytics training run saved as a project run, its evaluation with its own 0-1 input
normalization, and its ONNX export parity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from idd_edge import atomic, config
from idd_edge.errors import InputError
from idd_edge.labels import LEVEL_CLASS_NAMES, VOID
from idd_edge.seg.data import read_image, read_mask
from idd_edge.yolo.sem_bridge import bridge
from tests.test_seg_data import make_band_split
from tests.test_yolo_train import NETWORK_GUARD, RUN_CLI

LEVEL = "level2"


def test_bridge_links_pairs_keeps_train_ids_and_void_and_names_the_level(tmp_path):
    level_dir = make_band_split(tmp_path / "splits", {"train": 3, "val": 2})
    out = tmp_path / "sem"
    assert bridge(level_dir, out, LEVEL) == {"train": 3, "val": 2}

    import yaml

    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["masks_dir"] == "masks" and data["train"] == "images/train" and data["val"] == "images/val"
    assert list(data["names"].values()) == list(LEVEL_CLASS_NAMES[LEVEL]) and data["nc"] == 16
    for split in ("train", "val"):
        sources = sorted((level_dir / split / "images").iterdir())
        assert sorted(p.name for p in (out / "images" / split).iterdir()) == [p.name for p in sources]
        for source in sources:
            image, mask = out / "images" / split / source.name, out / "masks" / split / source.name
            assert image.stat().st_ino == source.stat().st_ino  # hard links, no copies
            assert mask.stat().st_ino == (level_dir / split / "masks" / source.name).stat().st_ino
    assert not list(tmp_path.glob("**/.sem.staging"))


def test_ultralytics_reads_the_bridge_with_our_class_ids_and_void_as_ignore(tmp_path):
    """Ultralytics' own SemanticDataset over the bridged split: same pairs, same ids, 255 kept as its ignore."""
    level_dir = make_band_split(tmp_path / "splits", {"train": 2, "val": 2}, size_hw=(64, 96))
    out = tmp_path / "sem"
    bridge(level_dir, out, LEVEL)
    from idd_edge.yolo.offline import import_ultralytics

    import_ultralytics(tmp_path / "ucfg")
    from ultralytics.data.dataset import SemanticDataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(out / "data.yaml"))
    dataset = SemanticDataset(img_path=str(out / "images" / "val"), imgsz=96, augment=False, data=data, task="semantic")
    assert [Path(f).name for f in dataset.im_files] == sorted(p.name for p in (level_dir / "val" / "images").iterdir())
    for index, im_file in enumerate(dataset.im_files):
        expected = read_mask(level_dir / "val" / "masks" / Path(im_file).name)
        loaded = dataset.load_mask(index)
        np.testing.assert_array_equal(loaded, expected)
        assert VOID in np.unique(loaded) and set(np.unique(loaded)) <= {0, 2, 14, 15, VOID}


def test_bridge_refuses_foreign_mask_values_and_unpaired_files_naming_them(tmp_path):
    level_dir = make_band_split(tmp_path / "splits", {"train": 2, "val": 1})
    bad = level_dir / "train" / "masks" / "drive0_train000.png"
    mask = read_mask(bad)
    mask[5, 5] = 20  # neither a level2 train id (0-15) nor void
    atomic.write_png(bad, mask)
    with pytest.raises(InputError, match=r"drive0_train000\.png.*values \[20\]"):
        bridge(level_dir, tmp_path / "sem", LEVEL)

    mask[5, 5] = 0
    atomic.write_png(bad, mask)
    (level_dir / "val" / "masks" / "drive0_val000.png").unlink()
    with pytest.raises(InputError, match=r"drive0_val000\.png.*no mask"):
        bridge(level_dir, tmp_path / "sem", LEVEL)
    assert not (tmp_path / "sem").exists()  # nothing half-written


def test_wrapped_model_gives_logits_at_any_input_size():
    from idd_edge.seg.models import build_model, set_export_mode

    model = set_export_mode(build_model({"arch": "ultralytics_sem", "yaml": "yolo26n-sem.yaml"}, 16, (64, 96))).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 16, 64, 96)
        assert model(torch.zeros(2, 3, 128, 224)).shape == (2, 16, 128, 224)
    with pytest.raises(ValueError, match="needs `yaml`"):
        build_model({"arch": "ultralytics_sem"}, 16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """bridge -> yolo-sem-train (1 epoch at 64, through the CLI, network guarded) -> (root, params, level_dir)."""
    root = tmp_path_factory.mktemp("yolo_sem")
    level_dir = make_band_split(root / "splits", {"train": 4, "val": 2}, size_hw=(64, 96))
    overrides = ["yolo.semantic.train.epochs=1", "yolo.semantic.train.imgsz=64", "yolo.semantic.train.batch=2",
                 "yolo.semantic.train.nbs=2", f"train.out={root / 'seg'}", f"split.out={root / 'splits'}",
                 "train.image_size=[64,96]", f"export.out={root / 'export'}"]
    params = root / "params.yaml"
    config.write_params(config.compose(overrides), params)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "YOLO_CONFIG_DIR", "YOLO_OFFLINE")}
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    for argv in (["yolo-sem-bridge", str(level_dir), str(root / "sem")],
                 ["yolo-sem-train", str(root / "sem")]):
        run = subprocess.run([sys.executable, "-c", NETWORK_GUARD + RUN_CLI, *argv, "--params", str(params)],
                             cwd=root, env=env, capture_output=True, text=True, timeout=600)
        log = run.stdout + run.stderr
        assert run.returncode == 0, log[-4000:]
        assert "NETWORK ATTEMPT" not in log
    return root, params, level_dir


@pytest.mark.slow
def test_training_writes_a_run_the_students_chain_reads(trained):
    root, _params, _level_dir = trained
    run_dir = root / "seg" / "ultralytics_sem"
    info = json.loads((run_dir / "model.json").read_text())
    assert info["model"]["arch"] == "ultralytics_sem" and info["model"]["yaml"] == "yolo26n-sem.yaml"
    assert info["normalization"] == {"color": "RGB", "mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]}
    assert info["input_size"] == [64, 96] and info["class_names"] == list(LEVEL_CLASS_NAMES[LEVEL])
    metrics = json.loads((run_dir / "train_metrics.json").read_text())
    assert metrics["role"] == "ultralytics" and metrics["epochs"] == 1 and 0 <= metrics["best_miou"] <= 1
    assert (run_dir / "ultralytics" / "results.csv").is_file()
    assert not (run_dir / "ultralytics" / "weights").exists()  # no pickles next to model.pt
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    assert all(value.dtype != torch.float16 for value in state.values())  # the fp32 EMA, not the half checkpoint


@pytest.mark.slow
def test_evaluation_feeds_the_model_its_own_0_1_input(trained):
    """The evaluate stage's confusion equals the model run by hand on RGB / 255, and the validation samples
    built with the run's normalization are exactly that input (not ImageNet-normalised)."""
    from idd_edge.seg.data import IDDSegDataset
    from idd_edge.seg.evaluate import evaluate_run
    from idd_edge.seg.metrics import update_confusion
    from idd_edge.seg.trained import load_trained
    from idd_edge_runtime.preprocess import resize_semantic

    root, _params, level_dir = trained
    run_dir = root / "seg" / "ultralytics_sem"
    metrics = evaluate_run(run_dir, level_dir, LEVEL)
    assert metrics["params"] > 1_000_000 and metrics["gflops"] > 0
    assert (run_dir / "eval" / "confusion.png").is_file() and (run_dir / "eval" / "per_class_iou.png").is_file()

    model, info = load_trained(run_dir)
    samples = IDDSegDataset(level_dir / "val", LEVEL, (64, 96), normalization=info["normalization"])
    expected = np.zeros((16, 16), np.int64)
    for index, image_path in enumerate(sorted((level_dir / "val" / "images").iterdir())):
        image = resize_semantic(read_image(image_path), 96, 64)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        torch.testing.assert_close(samples[index][0], x[0], atol=1e-6, rtol=0)
        mask = read_mask(level_dir / "val" / "masks" / image_path.name)
        with torch.no_grad():
            update_confusion(expected, model(x).argmax(1)[0].numpy(), mask)
    confusion = np.array(json.loads((run_dir / "eval" / "confusion.json").read_text())["matrix"])
    np.testing.assert_array_equal(confusion, expected)


@pytest.mark.slow
def test_export_is_static_parity_checked_and_records_the_0_1_normalization(trained):
    from idd_edge.export.onnx_export import export_semantic_run
    from idd_edge.export.onnx_io import onnx_session, run_single
    from idd_edge.seg.trained import load_trained

    root, _params, level_dir = trained
    run_dir = root / "seg" / "ultralytics_sem"
    record = export_semantic_run(run_dir, root / "export" / "ultralytics_sem", level_dir / "val", LEVEL, opset=13,
                                 argmax=False, simplify=True, parity_images=2, min_argmax_agreement=0.999,
                                 hailo_compat_mode="error")
    assert record["input"]["shape"] == [1, 3, 64, 96] and record["output"]["shape"] == [1, 16, 64, 96]
    assert record["normalization"] == {"mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]}
    assert record["parity"]["argmax_agreement"] >= 0.999 and record["parity"]["max_abs_logit_diff"] < 1e-3
    # ONNX Runtime on a real frame scaled to 0-1 answers as PyTorch does
    model, _info = load_trained(run_dir)
    from idd_edge_runtime.preprocess import resize_semantic

    frame = resize_semantic(read_image(next((level_dir / "val" / "images").iterdir())), 96, 64)
    x = (frame.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    onnx_logits = run_single(onnx_session(root / "export" / "ultralytics_sem" / "model.onnx"), np.ascontiguousarray(x))
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-3)


def test_settings_are_the_default_config_and_bad_values_name_the_params_file(tmp_path):
    from idd_edge.yolo.sem_train import SemTrainSettings

    node = config.compose()["yolo"]["semantic"]["train"]
    settings = SemTrainSettings.from_params(node, "params.yaml")
    assert (settings.model, settings.imgsz, settings.workers, settings.device) == ("yolo26n-sem.yaml", 128, 0, "cpu")
    for change, problem in (({"cls_pw": 2.0}, "cls_pw must be in 0-1"), ({"imgsz": 100}, "multiple of 32"),
                            ({"epochs": "many"}, "wrong type")):
        with pytest.raises(InputError, match=f"params.yaml.*{problem}"):
            SemTrainSettings.from_params(node | change, "params.yaml")
    with pytest.raises(InputError, match="params.yaml.*missing 'lr0'"):
        SemTrainSettings.from_params({k: v for k, v in node.items() if k != "lr0"}, "params.yaml")


def test_training_without_a_bridged_dataset_names_the_missing_file(tmp_path):
    from idd_edge.yolo.sem_train import SemTrainSettings, train

    settings = SemTrainSettings.from_params(config.compose()["yolo"]["semantic"]["train"], "params.yaml")
    with pytest.raises(InputError, match=r"data\.yaml.*yolo-sem-bridge"):
        train(tmp_path / "nowhere", tmp_path / "run", settings, LEVEL, (64, 96))
