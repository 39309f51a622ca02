"""`IDDSegDataset`: image/mask pairs of `data/splits/<IDDLx>/<split>/{images,masks}` for training.

As the seed (report section 5): ImageNet normalisation; training = random resized crop to the training
size, horizontal flip, colour jitter; validation = resize to the training size; void = 255. The validation
resize of the image is the device runtime's (`idd_edge_runtime.preprocess.resize_semantic`), so validation
scores, the accuracy gate and the device see the same pixels; masks are resized nearest. The crop
and flip are drawn explicitly (`augment.py`: `Augment.sample`) so that cached teacher logits
(`logit_cache.py`) can be cut to the very region the image was cut to: with a cache the dataset yields (image, mask, logits). Masks are
read in "automatic" mode: a mask whose values are all train ids of the level (or void) is used as is,
otherwise it is taken as raw IDD label ids (0-39) and remapped with `labels.level_lut("id", level)`.
The choice is per mask; a raw-id mask that happens to hold only values below the class count is
indistinguishable from a train-id mask, so set `mask_mode: train_id` or `id` when the data is known.

ClassMix (`Augment.class_mix`): before the crop, the pixels of the mix classes in another training image
are pasted into the image and its mask at the same place (a source of another size is resized to the
image's first); with a logit cache the teacher's logits are mixed alike (`TeacherLogits.region`).

Bad data is an InputError naming the file: an image without mask or the reverse, unreadable files, a
size mismatch between image and mask, values outside the label space.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from idd_edge.errors import InputError
from idd_edge.images import IMAGE_SUFFIXES, is_image
from idd_edge.labels import VOID, level_lut, num_classes
from idd_edge.seg.augment import Augment
from idd_edge_runtime.preprocess import resize_semantic

if TYPE_CHECKING:
    from idd_edge.seg.logit_cache import TeacherLogits

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_MODES = ("auto", "train_id", "id")
NUM_IDD_IDS = 40  # official label ids 0-39 (labels.LABELS)


class SampleError(InputError):
    """An InputError raised while loading one sample, intact across DataLoader workers.

    torch re-creates a worker's exception in the main process from one string (the formatted traceback),
    so the single-argument form recovers `path` and `problem` from its last line."""

    def __init__(self, path: Any, problem: str | None = None):
        if problem is None:
            last_line = str(path).rstrip().splitlines()[-1]
            message = last_line.split(": ", 1)[1] if ": " in last_line else last_line
            path, _, problem = message.partition(": ")
        super().__init__(path, problem)


def find_pairs(split_dir: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of `split_dir/{images,masks}` matched by file stem, sorted by stem."""
    image_dir, mask_dir = split_dir / "images", split_dir / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise InputError(folder, "folder not found; run the `split` stage (idd-edge split) first")
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if not is_image(path):
            continue
        if path.stem in images:
            raise InputError(path, f"two images with stem {path.stem!r} ({images[path.stem].name})")
        images[path.stem] = path
    masks = {path.stem: path for path in sorted(mask_dir.glob("*.png"))}
    for stem, image in images.items():
        if stem not in masks:
            raise InputError(image, f"no mask {mask_dir / (stem + '.png')} for this image")
    for stem, mask in masks.items():
        if stem not in images:
            raise InputError(mask, f"no image {stem}.<png|jpg> in {image_dir} for this mask")
    if not images:
        raise InputError(image_dir, f"no images ({'/'.join(IMAGE_SUFFIXES)}) found")
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SampleError(path, "cannot read image (missing, empty or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 mask as stored."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise SampleError(path, "cannot read mask (missing, empty or not an image)")
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise SampleError(path, f"mask must be a single-channel 8-bit PNG, got shape {mask.shape} {mask.dtype}")
    return mask


def encode_mask(mask: np.ndarray, level: str, mode: str, path: Path) -> np.ndarray:
    """Train ids of `level` (void 255) for a mask in train ids or raw IDD ids (see module docstring)."""
    classes = num_classes(level)
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    not_train_ids = present[(present >= classes) & (present != VOID)]
    if mode == "train_id" or (mode == "auto" and not_train_ids.size == 0):
        if not_train_ids.size:
            raise SampleError(path, f"values {not_train_ids.tolist()} outside {level} train ids 0-{classes - 1} and void {VOID}")
        return mask
    not_ids = present[(present >= NUM_IDD_IDS) & (present != VOID)]
    if not_ids.size:
        raise SampleError(
            path, f"values {not_ids.tolist()} are neither {level} train ids (0-{classes - 1}, {VOID}) nor IDD label ids (0-{NUM_IDD_IDS - 1})"
        )
    return level_lut("id", level)[mask]


class IDDSegDataset(Dataset):
    """Normalised (3, H, W) float images and (H, W) int64 train-id masks of one split (and, given a
    teacher-logit cache, the teacher's (C, H, W) float16 logits of the same crop).

    Args:
        split_dir: `data/splits/<IDDLx>/<split>` with `images/` and `masks/`.
        level: label level (`level1`, `level2`, `level3`).
        size: (H, W) output size: the training crop and the validation resize.
        augment: training augmentation, or None for validation (plain resize).
        mask_mode: `auto`, `train_id` or `id` (see module docstring).
        teacher_logits: cached teacher logits of this split (`logit_cache.TeacherLogits`), training only.
        normalization: the model's input normalization, `{mean, std}` on the 0-255 scale as `model.json`
            records it (None: ImageNet, what the students and the teacher train with).
    """

    def __init__(self, split_dir: Path, level: str, size: tuple[int, int], augment: Augment | None = None,
                 mask_mode: str = "auto", teacher_logits: TeacherLogits | None = None,
                 normalization: Mapping[str, Any] | None = None):
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode {mask_mode!r}; choose one of {', '.join(MASK_MODES)}")
        if teacher_logits is not None and augment is None:
            raise ValueError("cached teacher logits are for the training split (with augmentation)")
        self.split_dir = Path(split_dir)
        self.pairs = find_pairs(self.split_dir)
        self.level, self.size, self.augment, self.mask_mode = level, (int(size[0]), int(size[1])), augment, mask_mode
        self.teacher_logits = teacher_logits
        if teacher_logits is not None:
            teacher_logits.check_covers(self.stems)
        self.transform = build_transform(augment, normalization)

    @property
    def stems(self) -> list[str]:
        return [image.stem for image, _mask in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw (H, W, 3) RGB image and (H, W) train-id mask of sample `index`, checked."""
        image_path, mask_path = self.pairs[index]
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise SampleError(
                mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but image {image_path.name} is {image.shape[1]}x{image.shape[0]}"
            )
        return image, encode_mask(mask, self.level, self.mask_mode, mask_path)

    def class_pixel_counts(self) -> torch.Tensor:
        """(C,) int64 pixels of each train id over the whole split, at the stored resolution (void left out)."""
        classes = num_classes(self.level)
        counts = np.zeros(classes, dtype=np.int64)
        for _image, mask_path in self.pairs:
            mask = encode_mask(read_mask(mask_path), self.level, self.mask_mode, mask_path)
            counts += np.bincount(mask.ravel(), minlength=256)[:classes]
        return torch.from_numpy(counts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        from torchvision import tv_tensors

        image, mask = self.load(index)
        if self.augment is None:
            image = resize_semantic(image, self.size[1], self.size[0])
            image_t = self.transform(image_tensor(np.ascontiguousarray(image)))
            return image_t.as_subclass(torch.Tensor), torch.from_numpy(resize_mask(mask, self.size)).long()
        source = self.augment.mix_source(index, len(self))
        pasted = None
        if source is not None:
            image, mask, pasted = self.paste_classes(image, mask, source)
        image_t, mask_t = image_tensor(image), tv_tensors.Mask(torch.from_numpy(mask))
        crop = self.augment.sample(image_t)
        image_t, mask_t = crop.apply(image_t, mask_t, self.size)
        sample = (self.transform(image_t).as_subclass(torch.Tensor), mask_t.as_subclass(torch.Tensor).long())
        if self.teacher_logits is None:
            return sample
        paste = None if pasted is None else (self.pairs[source][0].stem, pasted)
        return (*sample, self.teacher_logits.region(self.pairs[index][0].stem, crop, image.shape[:2], self.size, paste))

    def paste_classes(self, image: np.ndarray, mask: np.ndarray, source: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ClassMix: `image` and `mask` (new arrays) with every pixel of the augmentation's mix classes in
        training image `source` pasted in at the same place, and the (H, W) bool map of where. A source of
        another size is resized to the image's (image bilinear, mask nearest): IDD mixes 1920x1080 and
        1280x720 frames of the same 16:9 view."""
        source_image, source_mask = self.load(source)
        height, width = mask.shape
        if source_mask.shape != mask.shape:
            source_image = cv2.resize(source_image, (width, height), interpolation=cv2.INTER_LINEAR)
            source_mask = resize_mask(source_mask, (height, width))
        where = np.isin(source_mask, self.augment.mix_classes)
        image, mask = image.copy(), mask.copy()
        image[where], mask[where] = source_image[where], source_mask[where]
        return image, mask, where


def image_tensor(image: np.ndarray) -> Any:
    """A (H, W, 3) uint8 RGB array as the (3, H, W) torchvision image `build_transform` expects (no copy)."""
    from torchvision import tv_tensors

    return tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A label mask resized to `size_hw` (H, W) nearest (torchvision's), as the validation transform does."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    if mask.shape == tuple(size_hw):
        return mask
    resized = v2.Resize(list(size_hw))(tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask))))
    return resized.as_subclass(torch.Tensor).numpy()


def build_transform(augment: Augment | None, normalization: Mapping[str, Any] | None = None) -> Any:
    """torchvision v2 pipeline of the image after its resize (validation: `resize_semantic`; training:
    `Crop.apply`): colour jitter when training, then the normalisation (`{mean, std}` on the 0-255 scale;
    None: ImageNet)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if normalization is not None:  # on the 0-1 scale the tensors have after ToDtype(scale=True)
        mean = tuple(float(m) / 255 for m in normalization["mean"])
        std = tuple(float(s) / 255 for s in normalization["std"])

    steps: list[Any] = []
    if augment is not None:
        steps = [v2.ColorJitter(augment.brightness, augment.contrast, augment.saturation, augment.hue)]
    steps += [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean, std),
    ]
    return v2.Compose(steps)


def make_loader(dataset: IDDSegDataset, batch_size: int, workers: int, train: bool) -> DataLoader:
    """Shuffled, last-partial-batch-dropped loader for training (BatchNorm needs > 1 sample); plain for val."""
    if train and len(dataset) < batch_size:
        raise InputError(dataset.split_dir, f"{len(dataset)} training images, fewer than the batch size {batch_size}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate,
    )


def collate(samples: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """Stack (image, mask[, teacher logits]) samples; teacher logits stay channels-last (the layout the
    KD loss reads without a copy; torch's default collate would make them contiguous)."""
    images, masks, *teacher = zip(*samples)
    batch = [torch.stack(images), torch.stack(masks)]
    if teacher:
        batch.append(torch.stack([logits.permute(1, 2, 0) for logits in teacher[0]]).permute(0, 3, 1, 2))
    return batch

