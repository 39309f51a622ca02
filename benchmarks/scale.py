"""Benchmark: an IDD-scale dry run of the data stages on this machine, extrapolated to real IDD.

    .venv/bin/python benchmarks/scale.py [--frames 10] [--workers 2] [--out DIR] [--keep]

Generates a full-resolution synthetic IDD tree (1920x1080, ~200 objects per frame like IDD:
`synth.density_for(200)`) of N frames (80 % train, 20 % val, one test frame), then runs every data stage
through its real pure function, each in a fresh child process (spawned, so one stage's memory never
counts for the next):

    convert (level2, semantic + instance + colour + panoptic as the default params, N workers),
    convert_instances (encoding id, instances only), split (`idd_full`'s: training pairs at half size, N
    workers; val / test hard links), yolo_bridge (N workers),
    calibrate (semantic 512x512 + YOLO letterbox 512x512, every training frame), teacher_logits (a tiny
    random ConvNeXt-Atto UPerNet at IDD's cache geometry 544x960 / stride 4), and three epochs of the KD
    training loader (512x512 crops with the cached teacher logits, N workers; extrapolated per epoch).

Per stage it prints wall and CPU time per frame (the stage process's own plus its workers', sampled with
psutil; imports not timed), peak RSS (the stage process's, and the sum over it and its workers), bytes
written (new inodes only: hard links to existing files are no new disk), then the bytes of all outputs
and the raw frames in a temporary DVC repo after `dvc add`, cache alone and cache + workspace, with DVC's
default `cache.type` (reflink,copy: copies on ext4) and this project's (hardlink,copy), and finally the
costs extrapolated to IDD's 12,872 train + 1,995 val frames (linear in frames; calibration: 1024 images).
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

IDD_TRAIN, IDD_VAL = 12_872, 1_995  # seed report, dataset table
CALIBRATION_IMAGES = 1024  # calibrate.num_images (the DFC's recommendation)
WIDTH, HEIGHT = 1920, 1080
LEVEL = "level2"
CROP = (512, 512)  # train.image_size of experiment/idd_full
TEACHER_INPUT, TEACHER_STRIDE = (544, 960), 4  # train.teacher_logits of experiment/idd_full
YOLO_IMGSZ = 512  # yolo.train.imgsz of experiment/idd_full
LOADER_EPOCHS = 3  # the loader's worker start-up is paid once per training run, not per epoch


# ---------------------------------------------------------------------------------------------- stages
# Each takes the work directory and the worker count and returns (frames it processed, output paths).


def stage_synth(work: Path, workers: int, frames: int) -> tuple[int, list[Path]]:
    from idd_edge.data.synth import density_for, generate_dataset

    train = max(1, round(frames * 0.8))
    generate_dataset(work / "idd", {"train": train, "val": max(1, frames - train), "test": 1}, (WIDTH, HEIGHT),
                     seed=0, density=density_for(200))
    return frames + 1, [work / "idd"]


def stage_convert(work: Path, workers: int, frames: int) -> tuple[int, list[Path]]:
    from idd_edge import config
    from idd_edge.data.convert import run_pipeline

    cfg = config.compose()["convert"]
    run_pipeline(work / "idd", work / "converted", "level2Id", True, bool(cfg["instance"]), bool(cfg["color"]),
                 bool(cfg["panoptic"]), workers=workers)
    return frames + 1, [work / "converted"]


def stage_convert_instances(work: Path, workers: int, frames: int) -> tuple[int, list[Path]]:
    from idd_edge.data.convert import run_pipeline

    run_pipeline(work / "idd", work / "converted_instances", "id", do_semantic=False, do_instance=True, workers=workers)
    return frames + 1, [work / "converted_instances"]


def stage_split(work: Path, workers: int, frames: int) -> tuple[int, list[Path]]:
    from idd_edge.data.split import organize_splits

    from idd_edge import config

    # As the full-scale recipe stores them: training pairs resized (x0.5), val / test hard-linked.
    train_scale = float(config.compose(["+experiment=idd_full"])["split"]["train_scale"])
    organize_splits(work / "idd", work / "converted", work / "splits", LEVEL, train_scale, workers)
    return frames + 1, [work / "splits"]


def stage_yolo_bridge(work: Path, workers: int, frames: int) -> tuple[int, list[Path]]:
    from idd_edge import config
    from idd_edge.yolo.bridge import bridge, resolve_classes

    yolo = config.compose()["yolo"]
    class_map = resolve_classes(yolo["classes"], yolo["instances"]["encoding"])
    bridge(work / "converted_instances", work / "idd", work / "yolo", class_map,
           simplify_px=float(yolo["bridge"]["simplify_px"]), min_area=int(yolo["bridge"]["min_area"]), workers=workers)
    return frames, [work / "yolo"]


def stage_calibrate(work: Path, workers: int, frames: int) -> tuple[int, list[Path]]:
    from idd_edge.export import preprocessing
    from idd_edge.export.calibrate import build_calibration_set

    split = work / "splits" / "IDDL2"
    records = [{"preprocess": "resize", "input": {"shape": [1, 3, *CROP]}},
               {"preprocess": "letterbox", "input": {"shape": [1, 3, YOLO_IMGSZ, YOLO_IMGSZ]}}]
    record = build_calibration_set(split / "train", split / "val", [split / "val", split / "test"],
                                   preprocessing.calibration_targets(records), work / "calib",
                                   num_images=CALIBRATION_IMAGES, seed=0, level=LEVEL, workers=workers)
    return record["num_images"], [work / "calib"]


def _tiny_teacher(run_dir: Path) -> None:
    import torch

    from idd_edge import config
    from idd_edge.labels import LEVEL_CLASS_NAMES
    from idd_edge.seg.models import build_model
    from idd_edge.seg.trained import save_trained

    model_cfg = {**config.compose()["models"]["teacher"], "pretrained": False, "decoder_channels": 32}
    torch.manual_seed(0)
    classes = len(LEVEL_CLASS_NAMES[LEVEL])
    save_trained(run_dir, build_model(model_cfg, classes, CROP).state_dict(),
                 {"run": "teacher", "model": model_cfg, "num_classes": classes, "input_size": list(CROP),
                  "label_level": LEVEL, "class_names": list(LEVEL_CLASS_NAMES[LEVEL])})


def stage_teacher_logits(work: Path, workers: int, frames: int) -> tuple[int, list[Path]]:
    import torch

    from idd_edge import config
    from idd_edge.seg.teacher_logits import CacheSettings, build_cache

    torch.set_num_threads(workers)
    _tiny_teacher(work / "teacher")
    settings = CacheSettings(work / "teacher_logits", TEACHER_INPUT, TEACHER_STRIDE, batch_size=4, fidelity_crops=4)
    train_cfg = config.compose()["train"]
    metrics = build_cache(work / "teacher", work / "splits" / "IDDL2" / "train", LEVEL, settings, CROP,
                          train_cfg["augment"], float(train_cfg["kd"]["temperature"]))
    return metrics["images"], [work / "teacher_logits"]


def stage_loader(work: Path, workers: int, frames: int) -> tuple[int, list[Path]]:
    from idd_edge import config
    from idd_edge.seg.augment import Augment
    from idd_edge.seg.data import IDDSegDataset, make_loader
    from idd_edge.seg.logit_cache import TeacherLogits

    augment = Augment.from_params(config.compose()["train"]["augment"])
    dataset = IDDSegDataset(work / "splits" / "IDDL2" / "train", LEVEL, CROP, augment, "auto",
                            TeacherLogits(work / "teacher_logits"))
    loader = make_loader(dataset, batch_size=2, workers=workers, train=True)
    seen = 0
    for _epoch in range(LOADER_EPOCHS):
        for batch in loader:
            seen += len(batch[0])
    return seen, []


STAGES = {
    "synth": stage_synth, "convert": stage_convert, "convert_instances": stage_convert_instances,
    "split": stage_split, "yolo_bridge": stage_yolo_bridge, "calibrate": stage_calibrate,
    "teacher_logits": stage_teacher_logits, "loader": stage_loader,
}
#: What each stage's frame count becomes at IDD scale.
IDD_FRAMES = {
    "synth": None, "convert": IDD_TRAIN + IDD_VAL, "convert_instances": IDD_TRAIN + IDD_VAL,
    "split": IDD_TRAIN + IDD_VAL, "yolo_bridge": IDD_TRAIN + IDD_VAL, "calibrate": CALIBRATION_IMAGES,
    "teacher_logits": IDD_TRAIN, "loader": IDD_TRAIN,  # one epoch
}


# ---------------------------------------------------------------------------------------------- measurement

#: DVC's default (copies on ext4, which has no reflinks) and this project's `.dvc/config`.
CACHE_TYPES = ("reflink,copy", "hardlink,copy")

#: Modules each stage imports, loaded before its clock starts (its memory counts, its start-up time not).
PREIMPORT = {
    "synth": ("idd_edge.data.synth",), "convert": ("idd_edge.config", "idd_edge.data.convert"),
    "convert_instances": ("idd_edge.data.convert",), "split": ("idd_edge.data.split",),
    "yolo_bridge": ("idd_edge.config", "idd_edge.yolo.bridge"),
    "calibrate": ("idd_edge.export.calibrate", "idd_edge.export.preprocessing", "idd_edge.seg.data"),
    "teacher_logits": ("idd_edge.config", "idd_edge.seg.teacher_logits", "idd_edge.seg.models", "idd_edge.seg.data",
                       "idd_edge.seg.trained", "torchvision.transforms.v2"),
    "loader": ("idd_edge.config", "idd_edge.seg.data", "idd_edge.seg.logit_cache", "torchvision.transforms.v2"),
}


def _files(*paths: Path) -> list[Path]:
    files: list[Path] = []
    for root in paths:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files += [Path(d) / f for d, _dirs, names in os.walk(root) for f in names]
    return files


def inodes(*paths: Path) -> set[tuple[int, int]]:
    return {(info.st_dev, info.st_ino) for info in (file.lstat() for file in _files(*paths))}


def disk_bytes(*paths: Path, existing: set[tuple[int, int]] = frozenset()) -> int:
    """Bytes of the regular files under `paths`, each inode once and none of `existing` (hard links to
    files that were already there are no extra disk)."""
    seen: set[tuple[int, int]] = set(existing)
    total = 0
    for file in _files(*paths):
        info = file.lstat()
        if file.is_symlink() or (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        total += info.st_size
    return total


class ProcessTree:
    """Peak summed RSS of this process and all its descendants, and the CPU time of the descendants,
    sampled every 50 ms in a thread (psutil, a dependency of Ultralytics). Descendants are sampled because
    not all of them are ever reaped into this process's rusage: forkserver pool workers are children of
    the forkserver, which is not waited for. A worker's last < 50 ms before it ends can be missed."""

    def __init__(self) -> None:
        import psutil

        self.process, self.peak_rss, self._stop = psutil.Process(), 0, threading.Event()
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU seconds last seen
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.05):
            total = self.process.memory_info().rss
            for child in self.process.children(recursive=True):
                try:
                    with child.oneshot():
                        total += child.memory_info().rss
                        times = child.cpu_times()
                        self._cpu[(child.pid, child.create_time())] = times.user + times.system
                except psutil.Error:  # ended between listing and reading
                    pass
            self.peak_rss = max(self.peak_rss, total)

    @property
    def descendants_cpu_s(self) -> float:
        return sum(self._cpu.values())

    def __enter__(self) -> ProcessTree:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _child(connection: Any, name: str, work: str, workers: int, frames: int) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    for module in PREIMPORT[name]:
        importlib.import_module(module)
    before = inodes(Path(work))
    own = resource.getrusage(resource.RUSAGE_SELF)
    with ProcessTree() as tree:
        wall = time.perf_counter()
        processed, outputs = STAGES[name](Path(work), workers, frames)
        wall = time.perf_counter() - wall
    end = resource.getrusage(resource.RUSAGE_SELF)
    connection.send({
        "frames": processed, "wall_s": wall,
        "cpu_s": (end.ru_utime + end.ru_stime - own.ru_utime - own.ru_stime) + tree.descendants_cpu_s,
        "rss_mb": end.ru_maxrss / 1024,  # Linux: KiB
        "tree_rss_mb": max(tree.peak_rss, end.ru_maxrss * 1024) / 2**20,
        "written": disk_bytes(*outputs, existing=before),
    })
    connection.close()


def measure(name: str, work: Path, workers: int, frames: int) -> dict[str, Any]:
    """Run stage `name` in a fresh spawned process and return its measurements."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, name, str(work), workers, frames))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        process.join()
        raise SystemExit(f"stage {name} failed (exit code {process.exitcode}); see its traceback above") from None
    process.join()
    return result


def dvc_cache_bytes(work: Path, outputs: list[str], cache_type: str) -> dict[str, int]:
    """`dvc add` the outputs in a temporary DVC repo with `cache.type` = `cache_type`; bytes of the cache
    alone and of the whole repo (workspace + cache, each inode once)."""
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    repo = work / f"dvc_{cache_type}"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    # One `cp -a` keeps the hard links between the split and the raw images, as the pipeline has them.
    subprocess.run(["cp", "-a", *[str(work / name) for name in outputs], str(repo)], check=True)
    run = {"cwd": repo, "check": True, "capture_output": True}
    subprocess.run([dvc, "init", "--no-scm", "-q"], **run)
    subprocess.run([dvc, "config", "core.analytics", "false"], **run)
    subprocess.run([dvc, "config", "cache.type", cache_type], **run)
    subprocess.run([dvc, "add", "-q", *outputs], **run)
    sizes = {"cache": disk_bytes(repo / ".dvc" / "cache"), "total": disk_bytes(repo)}
    shutil.rmtree(repo)
    return sizes


# ---------------------------------------------------------------------------------------------- report


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f}"


def stage_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| stage | frames | wall s/frame | CPU s/frame | peak RSS MB (stage process / with workers) | MB written | MB/frame |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        n = max(r["frames"], 1)
        lines.append(f"| {name} | {r['frames']} | {r['wall_s'] / n:.3f} | {r['cpu_s'] / n:.3f} | "
                     f"{r['rss_mb']:,.0f} / {r['tree_rss_mb']:,.0f} | {_mb(r['written'])} | {_mb(r['written'] / n)} |")
    return "\n".join(lines)


def extrapolation_table(results: dict[str, dict[str, Any]], dvc: dict[str, dict[str, int]], frames_total: int) -> str:
    lines = ["| stage | IDD frames | wall h | CPU h | disk GB |", "|---|---|---|---|---|"]
    wall = cpu = disk = 0.0
    for name, r in results.items():
        target = IDD_FRAMES[name]
        if target is None:
            continue
        scale = target / max(r["frames"], 1)
        row = (r["wall_s"] * scale / 3600, r["cpu_s"] * scale / 3600, r["written"] * scale / 1e9)
        wall, cpu, disk = wall + row[0], cpu + row[1], disk + row[2]
        lines.append(f"| {name} | {target:,} | {row[0]:.2f} | {row[1]:.2f} | {row[2]:.1f} |")
    lines.append(f"| all data stages | | {wall:.2f} | {cpu:.2f} | {disk:.1f} |")
    idd_scale = (IDD_TRAIN + IDD_VAL) / frames_total  # DVC cache of everything: raw images dominate, per frame
    for cache_type, sizes in dvc.items():
        lines.append(f"| DVC `cache.type {cache_type}`: cache / cache + workspace | | | | "
                     f"{sizes['cache'] * idd_scale / 1e9:.1f} / {sizes['total'] * idd_scale / 1e9:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10, help="train + val frames (one test frame is added)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--stages", nargs="*", default=list(STAGES), help="run only these (in order)")
    args = parser.parse_args()
    if args.frames < 2:
        parser.error("--frames must be at least 2 (train and val)")
    work = Path(tempfile.mkdtemp(prefix="idd-scale-", dir=args.out))
    print(f"{args.frames} frames of {WIDTH}x{HEIGHT}, {args.workers} workers, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), work dir {work}", flush=True)
    try:
        results = {}
        for name in args.stages:
            results[name] = measure(name, work, args.workers, args.frames)
            r = results[name]
            print(f"  {name}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, {_mb(r['written'])} MB", flush=True)
        dvc = {}
        outputs = [name for name in ("idd", "converted", "converted_instances", "splits", "yolo", "calib",
                                     "teacher_logits") if (work / name).exists()]
        for cache_type in CACHE_TYPES:
            dvc[cache_type] = dvc_cache_bytes(work, outputs, cache_type)
        print("\nPer stage (measured):\n")
        print(stage_table(results))
        print(f"\nDVC cache of {', '.join(outputs)} (MB): " + "; ".join(
            f"cache.type {t}: cache {_mb(s['cache'])}, cache + workspace {_mb(s['total'])}" for t, s in dvc.items()))
        print(f"\nExtrapolated to IDD ({IDD_TRAIN:,} train + {IDD_VAL:,} val frames, calibration "
              f"{CALIBRATION_IMAGES} images), linear in frames:\n")
        print(extrapolation_table(results, dvc, args.frames + 1))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
