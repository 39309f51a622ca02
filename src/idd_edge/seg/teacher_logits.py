"""`idd-edge teacher-logits`: the teacher's logits of every training image, computed once for logit KD.

Why: online KD runs the teacher forward on every student step, so a KD run costs epochs x images teacher
passes on top of the student's training. With the cache the teacher sees each training image once; a KD
step is then the student's step plus the KL term (`benchmarks/train_step.py` measures both modes).

How the cache follows the augmentation: the teacher sees each whole training image resized to
`input_size` (pick it so that the image scale matches the average training crop: with crops of 25-100 %
of the image area resized to the training size, about half the image's linear size), and its logits are
stored at 1/`stride` of that resolution as float16. The training dataset draws the random resized crop
and flip for the image (`augment.Augment.sample`) and cuts the same region, in image-relative coordinates,
out of the cached logits, resampled as the image is (bilinear, antialiased; `logit_cache.TeacherLogits.region`,
the cache's reader and format) and mirrored alike.
What the cache cannot follow: colour jitter (the teacher saw the plain image) and context (it saw the
whole frame at one scale, not the crop at the crop's scale). The stage measures what that costs
(`fidelity`): on seeded random training crops it runs the teacher on the augmented crop as online KD
would and compares with the cached region: argmax agreement, KL at the KD temperature, and both pixel
accuracies against the ground truth. Written to `metrics.json` (DVC metrics).

Outputs (`train.teacher_logits.out`, replaced as a whole): `logits.npy` (N, C, h, w) float16, one row
per training image in sorted-stem order (the dataset's), read memory-mapped; `index.json` (stems,
image sizes, the teacher weights' SHA-256 it was made from, geometry); `metrics.json`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from idd_edge import atomic, config
from idd_edge.errors import InputError
from idd_edge.seg.logit_cache import LOGITS_NAME, TeacherLogits, write_index

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"


@dataclass(frozen=True)
class CacheSettings:
    """`train.teacher_logits`: where the cache goes and at what geometry the teacher sees the images."""

    out: Path
    input_size: tuple[int, int]  # (H, W) the whole image is resized to for the teacher
    stride: int  # logits stored at input_size / stride
    batch_size: int
    fidelity_crops: int  # random training crops on which the cache is compared with online KD

    @classmethod
    def from_params(cls, cfg: dict[str, Any]) -> CacheSettings:
        from idd_edge.seg.models import check_input_size

        settings = cls(Path(cfg["out"]), check_input_size(tuple(cfg["input_size"])), int(cfg["stride"]),
                       int(cfg["batch_size"]), int(cfg["fidelity_crops"]))
        if settings.stride < 1 or settings.input_size[0] % settings.stride or settings.input_size[1] % settings.stride:
            raise ValueError(f"train.teacher_logits.stride {settings.stride} must divide input_size {settings.input_size}")
        return settings

    @property
    def stored_size(self) -> tuple[int, int]:
        return self.input_size[0] // self.stride, self.input_size[1] // self.stride


# ---------------------------------------------------------------------------------------------- build


def build_cache(teacher_dir: Path, train_dir: Path, level: str, settings: CacheSettings, image_size: tuple[int, int],
                augment: dict[str, Any], temperature: float, mask_mode: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Run the teacher over every image of `train_dir`, write the cache into `settings.out`, measure its
    fidelity against online KD on the training crops; returns the metrics."""
    import torch
    from torchvision.transforms.v2 import functional as TF
    from tqdm import tqdm

    from idd_edge.seg.augment import Augment
    from idd_edge.seg.data import IDDSegDataset, build_transform, find_pairs, image_tensor, read_image
    from idd_edge.seg.trained import WEIGHTS_NAME, load_trained
    from idd_edge_runtime.manifest import sha256_file

    teacher, info = load_trained(teacher_dir, input_size=settings.input_size)
    if info["label_level"] != level:
        raise InputError(teacher_dir / "model.json", f"teacher is for {info['label_level']}, the pipeline uses {level}")
    pairs = find_pairs(train_dir)
    num_classes, stored = int(info["num_classes"]), settings.stored_size
    normalise = build_transform(None)
    staging = settings.out.with_name(f".{settings.out.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)

    image_sizes: list[list[int]] = []
    shape = (len(pairs), num_classes, *stored)
    with atomic.atomic_open(staging / LOGITS_NAME, "wb") as handle, torch.inference_mode():
        # Streamed row by row: a real-IDD cache (GBs) never has to be in memory.
        np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                      "fortran_order": False, "shape": shape})
        for start in tqdm(range(0, len(pairs), settings.batch_size), desc="teacher logits", unit="batch"):
            batch = []
            for image_path, _mask in pairs[start:start + settings.batch_size]:
                image = read_image(image_path)
                image_sizes.append(list(image.shape[:2]))
                # Resized as the training crops are (`Crop.apply`: torchvision, antialiased), not by the
                # validation/device resize: the cache stands in for the teacher run on those crops.
                resized = TF.resize(image_tensor(image), list(settings.input_size), antialias=True)
                batch.append(normalise(resized))
            logits = teacher(torch.stack(batch))
            logits = torch.nn.functional.interpolate(logits, size=stored, mode="area") if settings.stride > 1 else logits
            handle.write(logits.to(torch.float16).contiguous().numpy().tobytes())
    write_index(staging, stems=[image.stem for image, _mask in pairs], image_sizes=image_sizes,
                num_classes=num_classes, stored_size=stored, label_level=level,
                teacher_weights_sha256=sha256_file(teacher_dir / WEIGHTS_NAME), teacher=str(teacher_dir),
                class_names=info.get("class_names"), input_size=list(settings.input_size), stride=settings.stride)
    cache = TeacherLogits(staging)
    train_set = IDDSegDataset(train_dir, level, image_size, Augment.from_params(augment), mask_mode, cache)
    teacher_at_crop, _ = load_trained(teacher_dir, input_size=image_size)
    metrics = {"images": len(pairs), "input_size": list(settings.input_size), "stride": settings.stride,
               "bytes": int((staging / LOGITS_NAME).stat().st_size),
               "fidelity": fidelity(teacher_at_crop, train_set, settings.fidelity_crops, temperature, seed)}
    atomic.write_json(staging / METRICS_NAME, metrics)
    atomic.replace_dir(staging, settings.out)
    return metrics


def fidelity(teacher: torch.nn.Module, train_set: Any, crops: int, temperature: float, seed: int) -> dict[str, Any]:
    """Cached vs online teacher logits on `crops` seeded random training crops (colour jitter included):
    argmax agreement and mean KL(online || cached) at `temperature` over labelled pixels, and the pixel
    accuracy of either against the ground truth."""
    import torch
    import torch.nn.functional as F

    from idd_edge.labels import VOID

    if crops <= 0:
        return {"crops": 0}
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    agree = total = online_right = cached_right = 0
    kl_sum = 0.0
    with torch.inference_mode():
        for draw in range(crops):
            image, mask, cached = train_set[draw % len(train_set)]
            online = teacher(image[None])[0].float()
            cached = cached.float()
            valid = mask != VOID
            online_label, cached_label = online.argmax(0), cached.argmax(0)
            agree += int(((online_label == cached_label) & valid).sum())
            online_right += int(((online_label == mask) & valid).sum())
            cached_right += int(((cached_label == mask) & valid).sum())
            total += int(valid.sum())
            log_online = F.log_softmax(online / temperature, 0)
            log_cached = F.log_softmax(cached / temperature, 0)
            kl_sum += float(((log_online.exp() * (log_online - log_cached)).sum(0) * valid).sum())
    torch.set_rng_state(generator_state)
    total = max(total, 1)
    return {"crops": crops, "pixels": total, "argmax_agreement": agree / total, "mean_kl": kl_sum / total,
            "temperature": temperature, "online_pixel_accuracy": online_right / total,
            "cached_pixel_accuracy": cached_right / total}


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("teacher-logits", help="cache the teacher's logits of the training images for KD")
    parser.add_argument("--params", default=str(config.PARAMS_FILE))
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    params = config.load_params(args.params)
    train_cfg = config.section(params, "train", args.params)
    level = config.section(params, "label_level", args.params)
    settings = CacheSettings.from_params(config.section(params, "train.teacher_logits", args.params))
    metrics = build_cache(
        teacher_dir=Path(train_cfg["out"]) / "teacher",
        train_dir=Path(config.section(params, "split.out", args.params)) / level["dir_name"] / "train",
        level=level["name"], settings=settings, image_size=tuple(train_cfg["image_size"]),
        augment=dict(train_cfg["augment"]), temperature=float(train_cfg["kd"]["temperature"]),
        mask_mode=train_cfg["mask_mode"], seed=int(config.section(params, "seed", args.params)),
    )
    quality = metrics["fidelity"]
    if quality.get("crops"):
        log.info("teacher logits of %d images cached (%.1f MB); vs online KD on %d crops: argmax agreement %.1f%%, "
                 "KL %.4f, pixel accuracy cached %.1f%% / online %.1f%%", metrics["images"], metrics["bytes"] / 1e6,
                 quality["crops"], 100 * quality["argmax_agreement"], quality["mean_kl"],
                 100 * quality["cached_pixel_accuracy"], 100 * quality["online_pixel_accuracy"])
    return 0
