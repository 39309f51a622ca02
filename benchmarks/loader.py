"""Benchmark: training-loader throughput at IDD resolution, ours vs a plain torchvision PIL pipeline.

    .venv/bin/python benchmarks/loader.py [--frames 12] [--rounds 3] [--batches 12] [--workers 1]

Makes N 1920x1080 synthetic IDD frames with ~200 objects (`synth.density_for(200)`), converts and splits
them (level2) twice: as linked full-size frames (`split.train_scale: 1`) and as the full-scale recipe
stores them (`conf/experiment/idd_full.yaml`: training pairs at half size). Then it measures training
samples (512x512 random resized crop + flip + colour jitter + ImageNet normalisation, masks nearest) per
second per loader worker process for
  - ours: `seg.data.IDDSegDataset` with the default augmentation (what `idd-edge train` loads) on the
    half-size split, and the same on the full-size split,
  - reference: an ImageFolder-style PIL pipeline (PIL open -> RandomResizedCrop -> hflip -> ColorJitter
    -> ToTensor -> Normalize; the mask cropped nearest), the usual torchvision recipe, on the full-size
    frames as IDD ships them,
all through a `DataLoader` with the same worker count and batch size, alternating round by round so all
see the same machine load, and the full-size PNG decode alone (image + mask, OpenCV): the ceiling of any
pipeline that decodes whole frames. Prints images/s per worker for each, the ratio ours / reference
(target >= 1.5x), and what the half-size store costs once per frame (the split stage's resize + write)
against what it saves per epoch.
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
from idd_edge.seg.augment import Augment, Crop
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


def store_fidelity(full: IDDSegDataset, scaled: IDDSegDataset, augment: Augment, crops: int) -> tuple[float, float]:
    """(mean |difference| in 0-255 grey levels, share of equal mask pixels) between the training crops of the
    full-size frames and the same crops (same share of the frame) of the stored frames, before colour jitter."""
    torch.manual_seed(0)
    differences, agreements = [], []
    for index in range(crops):
        stem = index % len(full)
        (image, mask), (small_image, small_mask) = full.load(stem), scaled.load(stem)
        box = v2.RandomResizedCrop.get_params(torch.empty(3, *image.shape[:2]), list(augment.scale), list(augment.ratio))
        top, left, height, width = (int(v) for v in box)
        ratio_y, ratio_x = small_image.shape[0] / image.shape[0], small_image.shape[1] / image.shape[1]
        small_box = Crop(round(top * ratio_y), round(left * ratio_x), round(height * ratio_y), round(width * ratio_x), False)
        outputs = []
        for (pixels, labels), crop in (((image, mask), Crop(top, left, height, width, False)), ((small_image, small_mask), small_box)):
            tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
            outputs.append(crop.apply(tensor, torch.from_numpy(labels), CROP))
        (a, mask_a), (b, mask_b) = outputs
        differences.append((a.float() - b.float()).abs().mean().item())
        agreements.append((mask_a == mask_b).float().mean().item())
    return statistics.mean(differences), statistics.mean(agreements)


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


def make_splits(work: Path, frames: int, train_scale: float) -> tuple[Path, Path, float]:
    """(full-size train split, train split stored at `train_scale`, seconds per frame that store cost)."""
    generate_dataset(work / "idd", {"train": frames, "val": 1}, (1920, 1080), seed=0, density=density_for(200))
    run_pipeline(work / "idd", work / "converted", "level2Id", workers=2)
    organize_splits(work / "idd", work / "converted", work / "full", "level2")
    started = time.perf_counter()
    organize_splits(work / "idd", work / "converted", work / "scaled", "level2", train_scale=train_scale)
    store_seconds = (time.perf_counter() - started) / frames
    return work / "full" / "IDDL2" / "train", work / "scaled" / "IDDL2" / "train", store_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=12, help=f"timed batches of {BATCH} per round")
    parser.add_argument("--workers", type=int, default=1, help="loader worker processes (throughput is per worker)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="idd-loader-"))
    try:
        full_recipe = config.compose(["+experiment=idd_full"])
        train_scale = float(full_recipe["split"]["train_scale"])
        train_dir, scaled_dir, store_seconds = make_splits(work, args.frames, train_scale)
        augment = Augment.from_params(config.compose()["train"]["augment"])
        datasets = {"ours": IDDSegDataset(scaled_dir, "level2", CROP, augment),
                    "ours, full-size frames": IDDSegDataset(train_dir, "level2", CROP, augment),
                    "reference": PILPairs(train_dir, augment), "decode only": DecodeOnly(train_dir)}
        rates: dict[str, list[float]] = {name: [] for name in datasets}
        for round_index in range(args.rounds):
            for name, dataset in datasets.items():
                rate = images_per_second(dataset, args.workers, args.batches) / max(args.workers, 1)
                rates[name].append(rate)
                print(f"round {round_index + 1} {name}: {rate:.2f} images/s per worker", flush=True)
        median = {name: statistics.median(values) for name, values in rates.items()}
        ours_rate, reference_rate = median["ours"], median["reference"]
        full_rate, decode_rate = median["ours, full-size frames"], median["decode only"]
        print(f"\n1920x1080 PNG -> {CROP[0]}x{CROP[1]} training samples, {args.workers} worker(s), batch {BATCH}:")
        print(f"  ours (IDDSegDataset, training pairs stored at x{train_scale:g}): {ours_rate:.2f} images/s per worker")
        print(f"  ours on the full-size frames:   {full_rate:.2f} images/s per worker ({full_rate / reference_rate:.2f}x)")
        print(f"  reference (torchvision PIL):    {reference_rate:.2f} images/s per worker")
        print(f"  ratio ours / reference:         {ours_rate / reference_rate:.2f}x (target >= 1.5x)")
        print(f"  full-size PNG decode alone (image + mask, cv2): {decode_rate:.2f} images/s per worker: the "
              f"ceiling of any pipeline decoding whole frames; ours exceeds it {ours_rate / decode_rate:.2f}x")
        saved = 1 / full_rate - 1 / ours_rate
        difference, agreement = store_fidelity(datasets["ours, full-size frames"], datasets["ours"], augment, 24)
        print(f"  the same crops of the stored and the full-size frames differ by {difference:.2f} grey levels on "
              f"average and their masks agree on {agreement:.1%} of the pixels")
        print(f"  the x{train_scale:g} store costs {store_seconds * 1000:.0f} ms per frame once (split stage, 1 process) "
              f"and saves {saved * 1000:.0f} ms per frame per epoch: paid back after "
              f"{store_seconds / saved:.1f} epochs" if saved > 0 else "  the store saves nothing here")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
