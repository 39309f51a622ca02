"""IDDSegDataset: pairing, augmentation, mask encodings and bad input (errors naming the file)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from idd_edge import atomic
from idd_edge.errors import InputError
from idd_edge.labels import level_lut
from idd_edge.seg.augment import Augment
from idd_edge.seg.data import IMAGENET_MEAN, IMAGENET_STD, IDDSegDataset, make_loader

#: Colours of the band classes in `make_band_split` (distinct, so a small net can learn them fast).
BAND_COLORS = np.array([[200, 60, 60], [60, 180, 60], [60, 60, 200], [220, 220, 80]], dtype=np.int16)
BAND_CLASSES = (0, 2, 14, 15)  # level2 road, sidewalk, vegetation, sky


def make_band_split(root: Path, counts: dict[str, int] | None = None, size_hw: tuple[int, int] = (72, 96),
                    seed: int = 0, noise: float = 20.0, level_dir: str = "IDDL2",
                    classes: tuple[int, ...] = BAND_CLASSES) -> Path:
    """A learnable split under `root/<level_dir>`: vertical bands of classes in shuffled order, each with
    its own colour plus noise, the top rows void. Returns `root/<level_dir>`."""
    counts = counts or {"train": 8, "val": 4}
    rng = np.random.default_rng(seed)
    height, width = size_hw
    for split, count in counts.items():
        for index in range(count):
            cuts = np.sort(rng.choice(np.arange(8, width - 8), size=len(classes) - 1, replace=False))
            order = rng.permutation(len(classes))
            edges = [0, *cuts.tolist(), width]
            mask = np.zeros((height, width), np.uint8)
            image = np.zeros((height, width, 3), np.float64)
            for band, slot in enumerate(order):
                mask[:, edges[band]:edges[band + 1]] = classes[slot]
                image[:, edges[band]:edges[band + 1]] = BAND_COLORS[slot]
            mask[: height // 8] = 255
            image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
            stem = f"drive0_{split}{index:03d}"
            atomic.write_png(root / level_dir / split / "images" / f"{stem}.png", image)
            atomic.write_png(root / level_dir / split / "masks" / f"{stem}.png", mask)
    return root / level_dir


def _write_pair(split_dir: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    atomic.write_png(split_dir / "images" / f"{stem}.png", image)
    atomic.write_png(split_dir / "masks" / f"{stem}.png", mask)


def test_validation_sample_is_resized_normalised_and_train_ids_kept(tmp_path):
    split = make_band_split(tmp_path, {"val": 2}) / "val"
    dataset = IDDSegDataset(split, "level2", (64, 64))
    image, mask = dataset[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (64, 64) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {*BAND_CLASSES, 255}
    raw_image, raw_mask = dataset.load(0)
    assert raw_image.shape == (72, 96, 3) and raw_mask.shape == (72, 96)
    # ImageNet normalisation: undoing it gives pixel values back in 0..1.
    restored = image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    assert restored.min() >= -1e-4 and restored.max() <= 1 + 1e-4


def test_training_augmentation_moves_image_and_mask_together(tmp_path):
    split = make_band_split(tmp_path, {"train": 4}, noise=0.0) / "train"
    augment = Augment(scale=(0.3, 1.0), hflip=0.5, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    dataset = IDDSegDataset(split, "level2", (64, 64), augment)
    torch.manual_seed(0)
    for _ in range(6):  # random crops and flips; every labelled pixel keeps its band colour
        image, mask = dataset[int(torch.randint(0, 4, ()))]
        rgb = (image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]) * 255
        for slot, cls in enumerate(BAND_CLASSES):
            inside = mask == cls
            # Bilinear resizing blends colours at band edges only; compare away from them.
            inner = inside & torch.roll(inside, 2, 1) & torch.roll(inside, -2, 1)
            if inner.any():
                colour = rgb[:, inner].median(dim=1).values
                assert torch.allclose(colour, torch.tensor(BAND_COLORS[slot], dtype=torch.float32), atol=3)


def test_class_mix_pastes_the_other_images_class_pixels_in_place(tmp_path):
    split = make_band_split(tmp_path, {"train": 3}, noise=0.0) / "train"
    sky = BAND_CLASSES[3]
    dataset = IDDSegDataset(split, "level2", (64, 64), Augment(class_mix=1.0, mix_classes=(sky,)))
    image, mask = dataset.load(0)
    source_image, source_mask = dataset.load(2)
    mixed_image, mixed_mask, where = dataset.paste_classes(image, mask, 2)
    assert where.any() and np.array_equal(where, source_mask == sky)
    assert np.array_equal(mixed_mask[where], source_mask[where]) and np.array_equal(mixed_image[where], source_image[where])
    assert np.array_equal(mixed_mask[~where], mask[~where]) and np.array_equal(mixed_image[~where], image[~where])
    assert np.array_equal(dataset.load(0)[1], mask)  # the loaded arrays are not changed in place

    # A source of another size is resized to the image's first (IDD mixes 1920x1080 and 1280x720 frames).
    big_image = cv2.resize(source_image, (192, 144), interpolation=cv2.INTER_NEAREST)
    big_mask = cv2.resize(source_mask, (192, 144), interpolation=cv2.INTER_NEAREST)
    _write_pair(split, "drive0_train002", big_image, big_mask)
    _mixed_image, resized_mask, resized_where = dataset.paste_classes(image, mask, 2)
    assert resized_mask.shape == mask.shape and (resized_where == (source_mask == sky)).mean() > 0.97


def test_class_mix_draws_another_image_and_draws_nothing_when_off():
    mixing = Augment(class_mix=1.0, mix_classes=(4,))
    torch.manual_seed(0)
    assert {mixing.mix_source(1, 4) for _ in range(60)} == {0, 2, 3}  # never the image itself
    assert {mixing.mix_source(3, 4) for _ in range(60)} == {0, 1, 2}
    assert Augment(class_mix=0.5, mix_classes=(4,)).mix_source(0, 2) in (None, 1)
    # Without ClassMix no random number is drawn: the teacher and the seed's recipe train as before.
    state = torch.get_rng_state()
    for off, count in ((Augment(), 5), (Augment(class_mix=1.0), 5), (mixing, 1)):
        assert off.mix_source(0, count) is None
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="probability"):
        Augment(class_mix=1.5)


def test_raw_idd_ids_are_remapped_to_the_level(tmp_path):
    split = tmp_path / "val"
    raw = np.array([[0, 20, 29, 33], [35, 12, 3, 255]], dtype=np.uint8)  # road, wall, building, sky, ...
    _write_pair(split, "a", np.zeros((2, 4, 3), np.uint8), raw)
    dataset = IDDSegDataset(split, "level2", (32, 32))
    _, mask = dataset.load(0)
    np.testing.assert_array_equal(mask, level_lut("id", "level2")[raw])
    assert mask[0].tolist() == [0, 9, 13, 15] and mask[1, 0] == 255  # unlabeled -> void


def test_explicit_mask_modes(tmp_path):
    split = tmp_path / "val"
    _write_pair(split, "a", np.zeros((2, 2, 3), np.uint8), np.array([[0, 1], [3, 255]], np.uint8))
    as_ids = IDDSegDataset(split, "level2", (32, 32), mask_mode="id").load(0)[1]
    assert as_ids.tolist() == [[0, 1], [2, 255]]  # ids 0,1,3 = road, parking, sidewalk
    as_train = IDDSegDataset(split, "level2", (32, 32), mask_mode="train_id").load(0)[1]
    assert as_train.tolist() == [[0, 1], [3, 255]]
    _write_pair(split, "a", np.zeros((2, 2, 3), np.uint8), np.array([[0, 20], [3, 255]], np.uint8))
    with pytest.raises(InputError, match=r"values \[20\] outside level2 train ids") as error:
        IDDSegDataset(split, "level2", (32, 32), mask_mode="train_id").load(0)
    assert error.value.path.endswith("masks/a.png")


def test_values_outside_every_label_space_name_the_mask(tmp_path):
    split = tmp_path / "val"
    _write_pair(split, "bad", np.zeros((2, 2, 3), np.uint8), np.array([[0, 77], [3, 255]], np.uint8))
    with pytest.raises(InputError, match=r"values \[77\] are neither level2 train ids") as error:
        IDDSegDataset(split, "level2", (32, 32)).load(0)
    assert error.value.path == str(split / "masks" / "bad.png")


def test_missing_partner_files_are_named(tmp_path):
    split = tmp_path / "train"
    _write_pair(split, "a", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    atomic.write_png(split / "images" / "lonely.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="no mask") as error:
        IDDSegDataset(split, "level1", (32, 32))
    assert error.value.path == str(split / "images" / "lonely.png")
    (split / "images" / "lonely.png").unlink()
    atomic.write_png(split / "masks" / "orphan.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="no image") as error:
        IDDSegDataset(split, "level1", (32, 32))
    assert error.value.path == str(split / "masks" / "orphan.png")
    with pytest.raises(InputError, match="split"):
        IDDSegDataset(tmp_path / "nowhere", "level1", (32, 32))


def test_size_mismatch_and_unreadable_files_are_named(tmp_path):
    split = tmp_path / "val"
    _write_pair(split, "a", np.zeros((4, 6, 3), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(InputError, match="mask is 5x4 but image a.png is 6x4") as error:
        IDDSegDataset(split, "level2", (32, 32)).load(0)
    assert error.value.path == str(split / "masks" / "a.png")
    (split / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image") as error:
        IDDSegDataset(split, "level2", (32, 32)).load(0)
    assert error.value.path == str(split / "images" / "a.png")
    _write_pair(split, "a", np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(InputError, match="single-channel 8-bit"):
        IDDSegDataset(split, "level2", (32, 32)).load(0)


def test_a_bad_mask_in_a_loader_worker_stays_an_input_error_naming_the_file(tmp_path):
    split = tmp_path / "val"
    _write_pair(split, "good", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    _write_pair(split, "worse", np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 99, np.uint8))
    loader = make_loader(IDDSegDataset(split, "level2", (32, 32)), batch_size=1, workers=1, train=False)
    with pytest.raises(InputError) as error:
        list(loader)
    assert error.value.path == str(split / "masks" / "worse.png")
    assert error.value.problem.startswith("values [99] are neither")


def test_training_loader_drops_the_last_partial_batch_and_needs_a_full_one(tmp_path):
    split = make_band_split(tmp_path, {"train": 5}) / "train"
    dataset = IDDSegDataset(split, "level2", (32, 32), Augment())
    assert [len(images) for images, _ in make_loader(dataset, 2, 0, train=True)] == [2, 2]
    with pytest.raises(InputError, match="5 training images, fewer than the batch size 8"):
        make_loader(dataset, 8, 0, train=True)
