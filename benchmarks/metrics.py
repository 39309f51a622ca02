"""Benchmark: vectorised confusion matrix vs the official evaluator's per-pixel Python loop.

    .venv/bin/python benchmarks/metrics.py [--frames 4] [--height 1080] [--width 1920] [--loop-pixels 200000]

Random level3 frames (10% void ground truth, 26 classes). The reference is the official loop (misc bin
for void, one pixel at a time), timed on the first `--loop-pixels` pixels and scaled per pixel (the full
frame would take seconds). Ours: `confusion_matrix` on uint8 numpy arrays and on torch CPU tensors
(zero-copy through numpy; the torch-only path runs for CUDA tensors, timed when present). Checks that
all agree, prints ms per frame and the speed-up ratios. CPU times are this process's CPU time, robust
on a shared machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from idd_edge.labels import VOID
from idd_edge.seg.metrics import confusion_matrix

CLASSES = 26


def official_loop(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    matrix = np.zeros((CLASSES + 1, CLASSES + 1), dtype=np.int64)
    for gt, p in zip(target.ravel(), pred.ravel()):
        if gt == VOID or gt > CLASSES:
            gt = CLASSES
        if p == VOID or p > CLASSES:
            p = CLASSES
        matrix[gt, p] += 1
    return matrix


def cpu_ms(function, repeats: int) -> float:
    function()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        function()
    return (time.process_time() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--loop-pixels", type=int, default=200_000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.frames, args.height, args.width)
    target = rng.integers(0, CLASSES, size=shape, dtype=np.uint8)
    target[rng.random(shape) < 0.1] = VOID
    pred = np.where(rng.random(shape) < 0.7, np.where(target == VOID, 0, target),
                    rng.integers(0, CLASSES, size=shape)).astype(np.uint8)
    frame_pixels = args.height * args.width

    sub = min(args.loop_pixels, frame_pixels)
    start = time.process_time()
    reference = official_loop(pred.ravel()[:sub], target.ravel()[:sub])
    loop_ms = (time.process_time() - start) * 1e3 * frame_pixels / sub
    np.testing.assert_array_equal(confusion_matrix(pred.ravel()[:sub], target.ravel()[:sub], CLASSES),
                                  reference[:CLASSES, :CLASSES])

    expected = confusion_matrix(pred, target, CLASSES)
    numpy_ms = cpu_ms(lambda: confusion_matrix(pred, target, CLASSES), 3) / args.frames
    pred_t, target_t = torch.from_numpy(pred), torch.from_numpy(target)
    np.testing.assert_array_equal(confusion_matrix(pred_t, target_t, CLASSES), expected)
    torch_ms = cpu_ms(lambda: confusion_matrix(pred_t, target_t, CLASSES), 3) / args.frames

    print(f"{args.frames} frames of {args.width}x{args.height}, {CLASSES} classes, 10% void (CPU ms per frame)")
    print(f"  official per-pixel loop : {loop_ms:9.1f} ms (measured on {sub} pixels, scaled)")
    print(f"  numpy bincount          : {numpy_ms:9.2f} ms  x{loop_ms / numpy_ms:,.0f} vs loop")
    print(f"  torch bincount (CPU)    : {torch_ms:9.2f} ms  x{loop_ms / torch_ms:,.0f} vs loop")
    if torch.cuda.is_available():
        pred_c, target_c = pred_t.cuda(), target_t.cuda()
        np.testing.assert_array_equal(confusion_matrix(pred_c, target_c, CLASSES), expected)
        cm = torch.zeros((CLASSES, CLASSES), dtype=torch.int64, device="cuda")
        from idd_edge.seg.metrics import update_confusion

        update_confusion(cm, pred_c, target_c)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            update_confusion(cm, pred_c, target_c)
        torch.cuda.synchronize()
        cuda_ms = (time.perf_counter() - start) / 10 * 1e3 / args.frames
        print(f"  torch CUDA accumulate   : {cuda_ms:9.3f} ms wall  x{loop_ms / cuda_ms:,.0f} vs loop")


if __name__ == "__main__":
    main()
