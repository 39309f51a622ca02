"""Benchmark: one training step of a logit-KD student vs the same student's baseline step.

    .venv/bin/python benchmarks/train_step.py [--students mnv4s_lraspp ...] [--teacher NAME] [--batch 8]
        [--size 128] [--steps 7] [--device auto] [--threads 1]

Builds the real models of the composed config (`conf/`: the teacher and the students) and times, on the
same batch, three steps through `seg.task.compute_losses`, the function the Lightning module trains with:
- baseline: student forward + masked CE + backward + AdamW;
- KD online: plus the teacher's forward (eval, channels_last, inference mode) and the KL term;
- KD cached (`train.kd.teacher_logits: cached`, the default): plus the KL term against the batch's
  cached teacher logits (`seg/logit_cache.py`, written by `seg/teacher_logits.py`).
The batch comes from the real training dataset (`IDDSegDataset` with its augmentation) over a temporary
split of random frames of the synthetic data's size, with a real teacher-logit cache of the configured
geometry. Cutting each sample's crop out of that cache is data loading, like decoding and cropping the
image: it is timed separately against the image loading and shown as an all-in ratio as well (with
`train.workers > 0` DataLoader workers do it in parallel with the step).
Steps alternate so all see the same machine load; the median is reported. On CPU the time is the CPU time
of this process (robust on a shared machine; wall time shown too), on a GPU wall time after synchronising,
under bf16 autocast where supported (as `engine.precision: auto` trains). Target: KD step <= 1.5x the
baseline step. Online, the teacher's forward is a fixed cost added to every student step, so a small
student cannot meet it; the cache removes that cost (what the cache approximates: seg/teacher_logits.py).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from idd_edge import atomic, config
from idd_edge.seg.data import collate
from idd_edge.seg.kd import KDConfig
from idd_edge.seg.models import build_model
from idd_edge.seg.task import compute_losses

TARGET_RATIO = 1.5
ROLES = ("baseline", "kd_online", "kd_cached")


class StepTimer:
    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, step) -> tuple[float, float]:
        """(timed seconds, wall seconds) of one call: CPU time on CPU, wall time on GPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - wall
        return (wall if self.device.type == "cuda" else time.process_time() - cpu), wall


def median_times(timer: StepTimer, steps: dict, repeats: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Median (timed, wall) seconds of each step, the steps interleaved."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(timer(step))
    return {name: (statistics.median(t for t, _ in ts), statistics.median(w for _, w in ts)) for name, ts in times.items()}


def make_step(model, optimizer, images, masks, autocast, teacher=None, kd=None, teacher_logits=None):
    def step() -> None:
        with autocast():
            losses = compute_losses(model, images, masks, teacher, kd, teacher_logits)
        losses["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_data(params: dict, root: Path, size: tuple[int, int]):
    """The training dataset over `root` (random frames of the synthetic size) without and with a real
    teacher-logit cache of the configured geometry (random logits)."""
    from idd_edge.seg.augment import Augment
    from idd_edge.seg.data import IDDSegDataset
    from idd_edge.seg.logit_cache import LOGITS_NAME, TeacherLogits, write_index
    from idd_edge.seg.teacher_logits import CacheSettings

    level, classes, frames = params["label_level"]["name"], params["label_level"]["num_classes"], 16
    height, width = int(params["synth"]["height"]), int(params["synth"]["width"])
    rng = np.random.default_rng(0)
    stems = [f"drive_{i:03d}" for i in range(frames)]
    for stem in stems:
        atomic.write_png(root / "train" / "images" / f"{stem}.png", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        atomic.write_png(root / "train" / "masks" / f"{stem}.png", rng.integers(0, classes, (height, width), dtype=np.uint8))
    settings = CacheSettings.from_params(dict(params["train"]["teacher_logits"], out=str(root / "cache")))
    settings.out.mkdir()
    np.save(settings.out / LOGITS_NAME, rng.normal(0, 3, (frames, classes, *settings.stored_size)).astype(np.float16))
    write_index(settings.out, stems=stems, image_sizes=[(height, width)] * frames, num_classes=classes,
                stored_size=settings.stored_size, label_level=level, teacher_weights_sha256=None)
    augment = Augment.from_params(params["train"]["augment"])
    plain = IDDSegDataset(root / "train", level, size, augment)
    cached = IDDSegDataset(root / "train", level, size, augment, teacher_logits=TeacherLogits(settings.out))
    return plain, cached


def loader(dataset, batch: int):
    """A function that assembles one random batch from `dataset` (what a DataLoader worker does)."""
    rng = np.random.default_rng(1)

    def load() -> list[torch.Tensor]:
        return collate([dataset[int(i)] for i in rng.integers(0, len(dataset), batch)])

    return load


def benchmark_student(name: str, params: dict, teacher: torch.nn.Module, batch: list[torch.Tensor], args, device,
                      autocast) -> dict:
    images, masks, teacher_logits = (t.to(device) for t in batch)
    images = images.contiguous(memory_format=torch.channels_last)
    classes, size = params["label_level"]["num_classes"], (args.size, args.size)
    kd = KDConfig.from_params(params["train"]["kd"])
    steps = {}
    for role in ROLES:
        torch.manual_seed(0)
        student = build_model(dict(params["models"]["students"][name], pretrained=False), classes, size)
        student = student.to(device, memory_format=torch.channels_last).train()
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
        if role == "kd_online":
            steps[role] = make_step(student, optimizer, images, masks, autocast, teacher, kd)
        elif role == "kd_cached":
            steps[role] = make_step(student, optimizer, images, masks, autocast, None, kd, teacher_logits)
        else:
            steps[role] = make_step(student, optimizer, images, masks, autocast)
    return median_times(StepTimer(device), steps, args.steps, args.warmup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="*", default=None, help="keys under models.students (default: all)")
    parser.add_argument("--teacher", default=None, help="conf/model name (default: the composed config's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="square input side, a multiple of 32")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable CPU-time ratios)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. label_level=level3")
    args = parser.parse_args()

    overrides = list(args.overrides) + ([f"model@models.teacher={args.teacher}"] if args.teacher else [])
    params = config.compose(overrides)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else nullcontext
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    teacher_cfg = params["models"]["teacher"]
    teacher = build_model(dict(teacher_cfg, pretrained=False), params["label_level"]["num_classes"])
    teacher = teacher.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)

    size = (args.size, args.size)
    with tempfile.TemporaryDirectory(prefix="train-step-") as root:
        plain, cached = training_data(params, Path(root), size)
        loads = median_times(StepTimer(torch.device("cpu")), {"images": loader(plain, args.batch),
                                                             "with_logits": loader(cached, args.batch)}, args.steps, 1)
        batch = loader(cached, args.batch)()
    crop_cost = loads["with_logits"][0] - loads["images"][0]

    unit = "GPU wall" if device.type == "cuda" else "CPU"
    print(f"teacher {teacher_cfg['name']}, batch {args.batch}, {args.size}x{args.size}, {params['label_level']['name']}, "
          f"{device.type}{' bf16' if bf16 else ' fp32'}, median of {args.steps}; the pipeline trains KD with "
          f"train.kd.teacher_logits={params['train']['kd']['teacher_logits']}")
    print(f"data loading per batch (CPU): images {1e3 * loads['images'][0]:.1f} ms; with the cached logits' crops "
          f"{1e3 * loads['with_logits'][0]:.1f} ms (+{1e3 * crop_cost:.1f} ms)")
    print(f"{'student':22s} {'baseline ms':>13s} {'KD online ms':>13s} {'ratio':>6s}  {'KD cached ms':>13s} {'ratio':>6s}"
          f" {'all-in':>7s}  ({unit} time per step, wall in brackets; all-in: + the logit crops' loading)")
    for name in args.students or list(params["models"]["students"]):
        r = benchmark_student(name, params, teacher, batch, args, device, autocast)
        base = r["baseline"][0]
        ratios = {role: r[role][0] / base for role in ROLES[1:]}
        all_in = (r["kd_cached"][0] + crop_cost) / base

        def mark(ratio: float) -> str:
            return f"{ratio:5.2f}x" + ("!" if ratio > TARGET_RATIO else " ")

        print(f"{name:22s} {1e3 * base:7.1f} [{1e3 * r['baseline'][1]:4.0f}] "
              f"{1e3 * r['kd_online'][0]:7.1f} [{1e3 * r['kd_online'][1]:4.0f}] {mark(ratios['kd_online'])} "
              f"{1e3 * r['kd_cached'][0]:7.1f} [{1e3 * r['kd_cached'][1]:4.0f}] {mark(ratios['kd_cached'])} {mark(all_in)}")
    print(f"! = above the {TARGET_RATIO}x target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
