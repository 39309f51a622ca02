"""`idd-edge evaluate RUN`: score a trained run on the validation split.

Same protocol as validation during training (the seed's): images resized to the model input, masks
resized nearest, void ignored; scores from `idd_edge.seg.metrics`. Writes `<train.out>/<RUN>/eval/`:
- `metrics.json` (DVC metrics): mIoU, pixel accuracy, per-class IoU, the model's parameters and GFLOPs
  at its input size (`idd-edge compare` shows them); for a level3 run also the level2
  and level1 scores derived by merging its confusion matrix (no retraining per level needed);
- `confusion.json` and the plots `confusion.png` (row-normalised) and `per_class_iou.png`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from idd_edge import atomic, config
from idd_edge.errors import InputError

log = logging.getLogger(__name__)

DERIVED_LEVELS = {"level3": ("level2", "level1")}


def evaluate_run(run_dir: Path, split_dir: Path, label_level: str, batch_size: int = 8, workers: int = 0,
                 mask_mode: str = "auto") -> dict[str, Any]:
    """Evaluate `run_dir`'s model.pt on `split_dir/val`, write `run_dir/eval/`, return the metrics."""
    import torch
    from tqdm import tqdm

    from idd_edge.labels import LEVEL_CLASS_NAMES
    from idd_edge.seg.data import IDDSegDataset, make_loader
    from idd_edge.seg.metrics import merge_confusion, segmentation_scores, update_confusion
    from idd_edge.seg.plots import plot_confusion, plot_per_class_iou
    from idd_edge.seg.trained import INFO_NAME, load_trained

    model, info = load_trained(run_dir)
    profile = model_profile(model, tuple(info["input_size"]))
    if info["label_level"] != label_level:
        raise InputError(run_dir / INFO_NAME, f"model trained on {info['label_level']}, but label_level is "
                                              f"{label_level}; re-run its training stage")
    class_names = LEVEL_CLASS_NAMES[label_level]
    dataset = IDDSegDataset(split_dir / "val", label_level, tuple(info["input_size"]), None, mask_mode,
                            normalization=info["normalization"])  # each model's own input scaling
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    confusion = torch.zeros((len(class_names),) * 2, dtype=torch.int64, device=device)
    with torch.inference_mode():
        for images, masks in tqdm(make_loader(dataset, batch_size, workers, train=False), desc=f"evaluate {run_dir.name}"):
            logits = model(images.to(device))
            update_confusion(confusion, logits.argmax(dim=1), masks.to(device))
    confusion = confusion.cpu().numpy()

    scores = segmentation_scores(confusion, class_names)
    metrics: dict[str, Any] = {"run": run_dir.name, "label_level": label_level, "miou": scores["miou"],
                               "pixel_accuracy": scores["pixel_accuracy"], "num_images": len(dataset),
                               "per_class_iou": scores["per_class_iou"], **profile}
    derived = {}
    for coarser in DERIVED_LEVELS.get(label_level, ()):
        merged = segmentation_scores(merge_confusion(confusion, label_level, coarser), LEVEL_CLASS_NAMES[coarser])
        derived[coarser] = {"miou": merged["miou"], "per_class_iou": merged["per_class_iou"]}
    if derived:
        metrics["derived"] = derived

    eval_dir = run_dir / "eval"
    atomic.write_json(eval_dir / "confusion.json", {"class_names": list(class_names), "matrix": confusion.tolist()})
    plot_confusion(confusion, class_names, eval_dir / "confusion.png", normalize=True)
    plot_per_class_iou(scores["per_class_iou"], eval_dir / "per_class_iou.png",
                       title=f"{run_dir.name} ({label_level}, validation)")
    atomic.write_json(eval_dir / "metrics.json", metrics)
    log.info("%s: val mIoU %.2f%%, pixel accuracy %.2f%% on %d images", run_dir.name, 100 * (scores["miou"] or 0),
             100 * (scores["pixel_accuracy"] or 0), len(dataset))
    return metrics


def model_profile(model: Any, input_hw: tuple[int, int]) -> dict[str, Any]:
    """Parameters and GFLOPs of one forward pass at batch 1 and the model's input size, counted by torch's
    FLOP counter (convolutions and matrix products, 2 FLOPs per multiply-add), the same way for every run."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *input_hw))
    return {"params": sum(p.numel() for p in model.parameters()), "gflops": round(counter.get_total_flops() / 1e9, 4)}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="score a trained semantic run on the validation split")
    parser.add_argument("run", help="run name under train.out: teacher, baseline_<student>, kd_<student>")
    parser.add_argument("--params", default=str(config.PARAMS_FILE))
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    params = config.load_params(args.params)
    train_cfg = config.section(params, "train", args.params)
    level = config.section(params, "label_level", args.params)
    evaluate_run(
        Path(train_cfg["out"]) / args.run,
        Path(config.section(params, "split.out", args.params)) / level["dir_name"],
        level["name"],
        batch_size=int(train_cfg["eval_batch_size"]),
        workers=int(train_cfg["workers"]),
        mask_mode=train_cfg["mask_mode"],
    )
    return 0
