"""Benchmark: training-loader throughput at IDD resolution, ours vs a plain torchvision PIL pipeline.

    .venv/bin/python benchmarks/loader.py [--frames 12] [--rounds 3] [--batches 12] [--workers 1]

Makes N 1920x1080 synthetic IDD frames with ~200 objects (`synth.density_for(200)`), converts and splits
them (level2), then measures training samples (512x512 random resized crop + flip + colour jitter +
ImageNet normalisation, masks nearest) per second per loader worker process for
  - ours: `seg.data.IDDSegDataset` with the default augmentation (what `idd-edge train` loads), and
  - reference: an ImageFolder-style PIL pipeline (PIL open -> RandomResizedCrop -> hflip -> ColorJitter
    -> ToTensor -> Normalize; the mask cropped nearest), the usual torchvision recipe,
both through a `DataLoader` with the same worker count and batch size, alternating round by round so both
see the same machine load, and the PNG decode alone (image + mask, OpenCV): the ceiling of any pipeline
that decodes whole frames. Prints images/s per worker for each and the ratio (target: ours >= 1.5x).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as F

from idd_edge import config
from idd_edge.data.convert import run_pipeline
from idd_edge.data.split import organize_splits
from idd_edge.data.synth import density_for, generate_dataset
from idd_edge.seg.augment import Augment
from idd_edge.seg.data import IMAGENET_MEAN, IMAGENET_STD, IDDSegDataset, collate, find_pairs, read_image, read_mask

CROP = (512, 512)
BATCH = 4


class PILPairs(Dataset):
    """The reference: torchvision's classic PIL recipe applied jointly to image and mask."""

    def __init__(self, split_dir: Path, augment: Augment):
        self.pairs, self.augment = find_pairs(split_dir), augment
        self.jitter = v2.ColorJitter(augment.brightness, augment.contrast, augment.saturation, augment.hue)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image, mask = Image.open(image_path).convert("RGB"), Image.open(mask_path)
        top, left, height, width = v2.RandomResizedCrop.get_params(image, list(self.augment.scale),
                                                                   list(self.augment.ratio))
        image = F.resized_crop(image, top, left, height, width, list(CROP), InterpolationMode.BILINEAR)
        mask = F.resized_crop(mask, top, left, height, width, list(CROP), InterpolationMode.NEAREST)
        if random.random() < self.augment.hflip:
            image, mask = F.hflip(image), F.hflip(mask)
        image = F.normalize(F.to_tensor(self.jitter(image)), IMAGENET_MEAN, IMAGENET_STD)
        return image, torch.from_numpy(np.array(mask, dtype=np.int64))


class DecodeOnly(Dataset):
    """The ceiling of any pipeline that decodes whole PNGs: our reader's image + mask decode, nothing else."""

    def __init__(self, split_dir: Path):
        self.pairs = find_pairs(split_dir)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image, mask = read_image(image_path), read_mask(mask_path)
        return torch.from_numpy(image[:CROP[0], :CROP[1]].copy()), torch.from_numpy(mask[:CROP[0], :CROP[1]].copy())


def images_per_second(dataset: Dataset, workers: int, batches: int) -> float:
    """Samples/s once the workers are up (the first batch, which includes their start, is not timed)."""
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, collate_fn=collate,
                        drop_last=True, persistent_workers=workers > 0)
    produced, start = 0, None
    while produced < batches:
        for _batch in loader:
            if start is None:
                start = time.perf_counter()
                continue
            produced += 1
            if produced >= batches:
                break
    return batches * BATCH / (time.perf_counter() - start)


def make_split(work: Path, frames: int) -> Path:
    generate_dataset(work / "idd", {"train": frames, "val": 1}, (1920, 1080), seed=0, density=density_for(200))
    run_pipeline(work / "idd", work / "converted", "level2Id", workers=2)
    organize_splits(work / "idd", work / "converted", work / "splits", "level2")
    return work / "splits" / "IDDL2" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=12, help=f"timed batches of {BATCH} per round")
    parser.add_argument("--workers", type=int, default=1, help="loader worker processes (throughput is per worker)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="idd-loader-"))
    try:
        train_dir = make_split(work, args.frames)
        augment = Augment.from_params(config.compose()["train"]["augment"])
        datasets = {"ours": IDDSegDataset(train_dir, "level2", CROP, augment),
                    "reference": PILPairs(train_dir, augment), "decode only": DecodeOnly(train_dir)}
        rates: dict[str, list[float]] = {name: [] for name in datasets}
        for round_index in range(args.rounds):
            for name, dataset in datasets.items():
                rate = images_per_second(dataset, args.workers, args.batches) / max(args.workers, 1)
                rates[name].append(rate)
                print(f"round {round_index + 1} {name}: {rate:.2f} images/s per worker", flush=True)
        ours_rate, reference_rate = statistics.median(rates["ours"]), statistics.median(rates["reference"])
        decode_rate = statistics.median(rates["decode only"])
        print(f"\n1920x1080 PNG -> {CROP[0]}x{CROP[1]} training samples, {args.workers} worker(s), batch {BATCH}:")
        print(f"  ours (IDDSegDataset):           {ours_rate:.2f} images/s per worker")
        print(f"  reference (torchvision PIL):    {reference_rate:.2f} images/s per worker")
        print(f"  ratio ours / reference:         {ours_rate / reference_rate:.2f}x (target >= 1.5x)")
        print(f"  PNG decode alone (image + mask, cv2): {decode_rate:.2f} images/s per worker: the ceiling of any "
              f"pipeline decoding whole frames; ours reaches {ours_rate / decode_rate:.0%} of it, "
              f"the reference {reference_rate / decode_rate:.0%}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
