"""Training augmentation of the seed: random resized crop, horizontal flip, colour jitter; and ClassMix.

ClassMix (Olsson et al. 2021, as DACS and DAFormer use it): every pixel of some classes in another random
training image is pasted into the image at the same place, before the crop (`Augment.mix_source` draws the
other image, `data.IDDSegDataset` pastes). The default students get it for the level's rarest thing class
(conf/label_level: `mix_classes`); see conf/train/default.yaml for why and what it measured.

The geometric part is drawn explicitly (`Augment.sample` -> `Crop`) and applied by `Crop.apply`, so that
the teacher-logit cache (`logit_cache.TeacherLogits.region`) can cut the very region the image was cut
to; the photometric part is in the dataset's transform (`data.build_transform`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Augment:
    """Training augmentation of the seed: random resized crop, horizontal flip, colour jitter."""

    scale: tuple[float, float] = (0.25, 1.0)  # crop area as a share of the image
    ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0
    class_mix: float = 0.0  # probability that a sample gets another image's `mix_classes` pixels pasted in
    mix_classes: tuple[int, ...] = ()  # train ids

    def __post_init__(self) -> None:
        if not 0.0 <= self.class_mix <= 1.0:
            raise ValueError(f"class_mix is a probability, got {self.class_mix}")

    @classmethod
    def from_params(cls, cfg: dict[str, Any]) -> Augment:
        """From `train.augment`; `class_mix` and `mix_classes` (train ids) are added per run by
        `train.job_from_params` (absent: no ClassMix, as for the teacher-logit fidelity check)."""
        return cls(
            scale=tuple(cfg["scale"]), ratio=tuple(cfg["ratio"]), hflip=float(cfg["hflip"]),
            brightness=float(cfg["brightness"]), contrast=float(cfg["contrast"]),
            saturation=float(cfg["saturation"]), hue=float(cfg["hue"]),
            class_mix=float(cfg.get("class_mix", 0.0)), mix_classes=tuple(int(c) for c in cfg.get("mix_classes", ())),
        )

    def mix_source(self, index: int, count: int) -> int | None:
        """ClassMix: the training image (of `count`) whose `mix_classes` pixels go into image `index`, or None.
        Without ClassMix no random number is drawn, so such a run trains exactly as it did before it existed."""
        if self.class_mix <= 0.0 or not self.mix_classes or count < 2:
            return None
        if float(torch.rand(())) >= self.class_mix:
            return None
        other = int(torch.randint(count - 1, ()))
        return other + int(other >= index)  # any image but this one

    def sample(self, image: torch.Tensor) -> Crop:
        """Draw the crop box (torchvision's RandomResizedCrop sampling) and the flip for a (C, H, W) image."""
        from torchvision.transforms import v2

        top, left, height, width = v2.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        return Crop(int(top), int(left), int(height), int(width), bool(torch.rand(()) < self.hflip))


@dataclass(frozen=True)
class Crop:
    """A random resized crop: the box in source-image pixels, and whether the result is mirrored."""

    top: int
    left: int
    height: int
    width: int
    flip: bool

    def apply(self, image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut, resize (bilinear with antialiasing for the image, nearest for the mask) and mirror."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        box = (self.top, self.left, self.height, self.width)
        image = TF.resized_crop(image, *box, list(size), antialias=True)
        mask = TF.resized_crop(mask[None], *box, list(size), interpolation=InterpolationMode.NEAREST)[0]
        if self.flip:
            image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
        return image, mask
