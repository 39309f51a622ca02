"""Teacher-logit cache (`seg/logit_cache.py`, stage `seg/teacher_logits.py`): resampling, crop geometry,
what the stage writes, and refusing stale caches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from idd_edge import cli, config
from idd_edge.errors import InputError
from idd_edge.labels import LEVEL_CLASS_NAMES
from idd_edge.seg.augment import Augment, Crop
from idd_edge.seg.data import IDDSegDataset, build_transform, collate, image_tensor, read_image
from idd_edge.seg.logit_cache import INDEX_NAME, LOGITS_NAME, TeacherLogits, resample_weights, write_index
from idd_edge.seg.models import build_model
from idd_edge.seg.teacher_logits import CacheSettings
from idd_edge.seg.trained import load_trained, save_trained
from tests.test_seg_data import BAND_CLASSES, make_band_split

IMAGE_HW = (90, 160)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_cache(directory: Path, logits: np.ndarray, stems: list[str], image_hw=IMAGE_HW, **index) -> TeacherLogits:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / LOGITS_NAME, logits.astype(np.float16))
    write_index(directory, stems=stems, image_sizes=[image_hw] * len(stems), num_classes=logits.shape[1],
                stored_size=logits.shape[2:], label_level="level2", teacher_weights_sha256="abc", **index)
    return TeacherLogits(directory)


@pytest.mark.parametrize("source,target", [(40, 128), (70, 33), (64, 64), (13, 97)])
def test_resampling_the_whole_axis_is_torch_antialiased_bilinear(source, target):
    values = torch.randn(3, source, 9)
    expected = F.interpolate(values[None], size=(target, 9), mode="bilinear", align_corners=False, antialias=True)[0]
    assert torch.allclose(resample_weights(0, source, source, target) @ values, expected, atol=1e-5)


@pytest.mark.parametrize("crop", [Crop(10, 20, 60, 100, False), Crop(0, 0, 90, 160, True), Crop(45, 100, 30, 40, True),
                                  Crop(5, 7, 80, 45, False)])
def test_a_region_is_the_crop_box_of_the_cached_grid_mirrored_with_the_image(tmp_path, crop):
    # Channels hold each cached pixel's image x and y (pixel centres), so the cut-out region must hold the
    # image coordinates of the output pixels: any error in box mapping, axis order or flip shows.
    height, width = 45, 80  # the cache stores the 90x160 frame at half size
    ys = (np.arange(height) + 0.5) * IMAGE_HW[0] / height
    xs = (np.arange(width) + 0.5) * IMAGE_HW[1] / width
    grid = np.stack([np.broadcast_to(xs, (height, width)), np.broadcast_to(ys[:, None], (height, width))])
    cache = write_cache(tmp_path, grid[None], ["a"])
    out = cache.region("a", crop, IMAGE_HW, (32, 48)).float().numpy()
    expected_x = crop.left + (np.arange(48) + 0.5) * crop.width / 48
    expected_y = crop.top + (np.arange(32) + 0.5) * crop.height / 32
    if crop.flip:
        expected_x = expected_x[::-1]
    # Linear ramps resample to within a tenth of a cached pixel (exactly when enlarging; the widened
    # antialiasing filter of a shrink samples a ramp slightly off-centre), except within one cached pixel
    # of the frame's edge (edge repeat); float16 rounds values near 160 by up to 0.06. A geometry error
    # (box, axis, flip, half-pixel offset) is at least half a cached pixel: 1.
    inner_x = (expected_x > 2) & (expected_x < IMAGE_HW[1] - 2)
    inner_y = (expected_y > 2) & (expected_y < IMAGE_HW[0] - 2)
    assert np.abs(out[0][:, inner_x] - expected_x[inner_x]).max() < 0.3
    assert np.abs(out[1][inner_y] - expected_y[inner_y, None]).max() < 0.3


def test_the_training_dataset_yields_the_cached_logits_of_its_own_crop(tmp_path):
    # Cached "logits" = the image's own colours (a pointwise teacher): the region the dataset yields must
    # look like the augmented image it yields next to it.
    split = make_band_split(tmp_path, {"train": 3}, size_hw=IMAGE_HW, noise=0.0) / "train"
    pairs = sorted((split / "images").iterdir())
    colours = np.stack([read_image(path).transpose(2, 0, 1) / 255.0 for path in pairs])
    cache = write_cache(tmp_path / "cache", colours, [path.stem for path in pairs])
    augment = Augment(scale=(0.3, 1.0), hflip=0.5, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    dataset = IDDSegDataset(split, "level2", (64, 64), augment, teacher_logits=cache)
    torch.manual_seed(0)
    for index in (0, 1, 2, 0, 1):
        image, _mask, logits = dataset[index]
        rgb = image * torch.tensor([0.229, 0.224, 0.225])[:, None, None] + torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        assert logits.dtype == torch.float16 and logits.shape == (3, 64, 64)
        assert (logits.float() - rgb).abs().mean() < 0.01
    batch = collate([dataset[0], dataset[1]])
    assert [tuple(t.shape) for t in batch] == [(2, 3, 64, 64), (2, 64, 64), (2, 3, 64, 64)]
    assert batch[2].is_contiguous(memory_format=torch.channels_last)  # what the KD loss reads without a copy


def test_class_mix_mixes_the_cached_logits_with_the_image(tmp_path):
    # The pointwise teacher of the test above: with ClassMix, the pasted pixels must take the cached logits
    # of the image they came from, so the region still looks like the (mixed) image.
    split = make_band_split(tmp_path, {"train": 3}, size_hw=IMAGE_HW, noise=0.0) / "train"
    pairs = sorted((split / "images").iterdir())
    colours = np.stack([read_image(path).transpose(2, 0, 1) / 255.0 for path in pairs])
    cache = write_cache(tmp_path / "cache", colours, [path.stem for path in pairs])
    augment = Augment(scale=(0.3, 1.0), hflip=0.5, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                      class_mix=1.0, mix_classes=(BAND_CLASSES[1], BAND_CLASSES[3]))
    dataset = IDDSegDataset(split, "level2", (64, 64), augment, teacher_logits=cache)
    torch.manual_seed(0)
    for index in (0, 1, 2, 0, 1):
        image, _mask, logits = dataset[index]
        rgb = image * torch.tensor([0.229, 0.224, 0.225])[:, None, None] + torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        assert (logits.float() - rgb).abs().mean() < 0.01
    # The blend goes by the share of each cached cell the pasted pixels cover.
    whole = Crop(0, 0, *IMAGE_HW, False)
    where = np.zeros(IMAGE_HW, bool)
    where[:, : IMAGE_HW[1] // 2] = True
    mixed = cache.region(pairs[0].stem, whole, IMAGE_HW, IMAGE_HW, (pairs[1].stem, where)).float().numpy()
    left, right = slice(None, IMAGE_HW[1] // 2 - 1), slice(IMAGE_HW[1] // 2 + 1, None)
    assert np.abs(mixed[:, :, left] - colours[1][:, :, left]).max() < 0.01
    assert np.abs(mixed[:, :, right] - colours[0][:, :, right]).max() < 0.01
    with pytest.raises(ValueError, match="must be \\(H, W\\)"):
        cache.region(pairs[0].stem, whole, IMAGE_HW, (8, 8), (pairs[1].stem, where[None]))


def test_a_foreign_or_stale_cache_is_refused_naming_its_index(tmp_path):
    cache = write_cache(tmp_path / "c", np.zeros((2, 16, 8, 8)), ["a", "b"])
    with pytest.raises(InputError, match="index.json.*other teacher weights"):
        cache.check_matches("def", "level2", 16)
    with pytest.raises(InputError, match="index.json.*16 level2 classes.*7 level1"):
        cache.check_matches("abc", "level1", 7)
    cache.check_matches("abc", "level2", 16)
    with pytest.raises(InputError, match="index.json.*1 training image.*'c'"):
        cache.check_covers(["a", "c"])
    with pytest.raises(InputError, match="a: cached for a 160x90 image, the image is 100x50"):
        cache.region("a", Crop(0, 0, 10, 10, False), (50, 100), (8, 8))
    (tmp_path / "c" / INDEX_NAME).write_text(json.dumps({**json.loads((tmp_path / "c" / INDEX_NAME).read_text()),
                                                         "stored_size": [4, 4]}))
    with pytest.raises(InputError, match="logits.npy.*holds \\(2, 16, 8, 8\\) float16"):
        TeacherLogits(tmp_path / "c").array
    with pytest.raises(InputError, match="teacher logit cache not found"):
        TeacherLogits(tmp_path / "missing")


def test_the_stage_caches_the_teachers_logits_of_every_training_image(tmp_path):
    split_root = tmp_path / "splits"
    make_band_split(split_root, {"train": 5, "val": 1}, size_hw=IMAGE_HW)
    teacher_cfg = {"name": "convnext_atto_upernet", "arch": "upernet", "backbone": "convnext_atto",
                   "pretrained": False, "decoder_channels": 32}
    torch.manual_seed(0)
    save_trained(tmp_path / "seg" / "teacher", build_model(teacher_cfg, 16, (64, 64)).state_dict(),
                 {"run": "teacher", "model": teacher_cfg, "num_classes": 16, "input_size": [64, 64],
                  "label_level": "level2", "class_names": list(LEVEL_CLASS_NAMES["level2"])})
    params = config.compose([f"split.out={split_root}", f"train.out={tmp_path / 'seg'}", "train.image_size=[64,64]",
                             f"train.teacher_logits.out={tmp_path / 'cache'}", "train.teacher_logits.input_size=[64,96]",
                             "train.teacher_logits.stride=2", "train.teacher_logits.batch_size=2",
                             "train.teacher_logits.fidelity_crops=3"])
    config.write_params(params, tmp_path / "params.yaml")
    assert cli.main(["teacher-logits", "--params", str(tmp_path / "params.yaml")]) == 0

    cache = TeacherLogits(tmp_path / "cache")
    stems = sorted(path.stem for path in (split_root / "IDDL2" / "train" / "images").iterdir())
    assert cache.index["stems"] == stems and cache.index["image_sizes"] == [list(IMAGE_HW)] * 5
    assert cache.array.shape == (5, 16, 32, 48) and cache.array.dtype == np.float16
    # Row 3 is the teacher's output for image 3 resized to 64x96 as training crops are, at half resolution.
    teacher, _info = load_trained(tmp_path / "seg" / "teacher", input_size=(64, 96))
    image = read_image(split_root / "IDDL2" / "train" / "images" / f"{stems[3]}.png")
    with torch.no_grad():
        resized = TF.resize(image_tensor(image), [64, 96], antialias=True)
        expected = teacher(build_transform(None)(resized)[None])
    expected = F.interpolate(expected, size=(32, 48), mode="area")[0]
    assert np.abs(cache.array[3].astype(np.float32) - expected.numpy()).max() < 0.01 * float(expected.abs().max()) + 1e-3
    metrics = json.loads((tmp_path / "cache" / "metrics.json").read_text())
    assert metrics["images"] == 5 and metrics["bytes"] == (tmp_path / "cache" / LOGITS_NAME).stat().st_size
    fidelity = metrics["fidelity"]
    assert fidelity["crops"] == 3 and 0 <= fidelity["argmax_agreement"] <= 1 and fidelity["mean_kl"] >= 0
    assert not list(tmp_path.glob(".cache*"))  # no staging left behind


def test_cache_settings_must_divide_evenly():
    with pytest.raises(ValueError, match="stride 3 must divide"):
        CacheSettings.from_params({"out": "x", "input_size": [64, 96], "stride": 3, "batch_size": 1, "fidelity_crops": 0})
    with pytest.raises(ValueError, match="multiples of 32"):
        CacheSettings.from_params({"out": "x", "input_size": [60, 96], "stride": 2, "batch_size": 1, "fidelity_crops": 0})
