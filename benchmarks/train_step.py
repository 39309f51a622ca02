"""Benchmark: one training step of a logit-KD student vs the same student's baseline step.

    .venv/bin/python benchmarks/train_step.py [--students mnv4s_lraspp ...] [--teacher NAME] [--batch 8]
        [--size 128] [--steps 6] [--device auto] [--threads 1]

Builds the real models of the composed config (`conf/`: the teacher and the students) and times, on the
same random batch, the baseline step (student forward + masked CE + backward + AdamW) and the KD step
(plus the teacher's forward under no_grad and the KL term), both through `seg.task.compute_losses`, the
function the Lightning module trains with. Steps alternate baseline/KD so both see the same machine
load; the median is reported. On CPU the time is the CPU time of this process (robust on a shared
machine; wall time shown too), on a GPU wall time after synchronising, under bf16 autocast where
supported (as `engine.precision: auto` trains). Target: KD step <= 1.5x the baseline step. The teacher
runs in eval mode, channels_last, without autograd; how close a student gets to the target depends on
the teacher/student compute ratio (the teacher's forward is a fixed cost added to every student step).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from idd_edge import config
from idd_edge.seg.kd import KDConfig
from idd_edge.seg.models import build_model
from idd_edge.seg.task import compute_losses

TARGET_RATIO = 1.5


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


def make_step(model, optimizer, images, masks, autocast, teacher=None, kd=None):
    def step() -> None:
        with autocast():
            losses = compute_losses(model, images, masks, teacher, kd)
        losses["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def benchmark_student(name: str, params: dict, teacher: torch.nn.Module, args, device, autocast) -> dict:
    classes = params["label_level"]["num_classes"]
    size = (args.size, args.size)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, *size, device=device).contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, classes, (args.batch, *size), device=device)
    steps = {}
    for role in ("baseline", "kd"):
        torch.manual_seed(0)
        student = build_model(dict(params["models"]["students"][name], pretrained=False), classes, size)
        student = student.to(device, memory_format=torch.channels_last).train()
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
        if role == "kd":
            steps[role] = make_step(student, optimizer, images, masks, autocast, teacher,
                                    KDConfig.from_params(params["train"]["kd"]))
        else:
            steps[role] = make_step(student, optimizer, images, masks, autocast)
    timer = StepTimer(device)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[tuple[float, float]]] = {"baseline": [], "kd": []}
    for _ in range(args.steps):
        for role, step in steps.items():
            times[role].append(timer(step))
    result = {role: (statistics.median(t for t, _ in ts), statistics.median(w for _, w in ts)) for role, ts in times.items()}
    return {"student": name, "baseline": result["baseline"], "kd": result["kd"],
            "ratio": result["kd"][0] / result["baseline"][0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="*", default=None, help="keys under models.students (default: all)")
    parser.add_argument("--teacher", default=None, help="conf/model name (default: the composed config's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="square input side, a multiple of 32")
    parser.add_argument("--steps", type=int, default=6)
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

    unit = "GPU wall" if device.type == "cuda" else "CPU"
    print(f"teacher {teacher_cfg['name']}, batch {args.batch}, {args.size}x{args.size}, "
          f"{params['label_level']['name']}, {device.type}{' bf16' if bf16 else ' fp32'}, median of {args.steps} steps")
    print(f"{'student':22s} {'baseline ms':>12s} {'KD ms':>10s} {'KD/baseline':>12s}  (ms = {unit} time per step; wall in brackets)")
    worst = 0.0
    for name in args.students or list(params["models"]["students"]):
        r = benchmark_student(name, params, teacher, args, device, autocast)
        worst = max(worst, r["ratio"])
        verdict = "ok" if r["ratio"] <= TARGET_RATIO else f"above the {TARGET_RATIO}x target"
        print(f"{name:22s} {1e3 * r['baseline'][0]:8.1f} [{1e3 * r['baseline'][1]:5.0f}] "
              f"{1e3 * r['kd'][0]:7.1f} [{1e3 * r['kd'][1]:5.0f}] {r['ratio']:10.2f}x  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
