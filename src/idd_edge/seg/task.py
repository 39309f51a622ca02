"""The Lightning module of all three training roles: teacher, baseline student, logit-KD student.

One module, the role decides the loss: plain masked CE (teacher, baseline) or CE + alpha * KL against a
frozen teacher (kd), run on each batch or read from its cached logits (`logit_cache.py`). The teacher is not a registered submodule: it stays out of checkpoints, out of DDP
and in eval mode (Lightning's `model.train()` per epoch would otherwise switch its BatchNorm back), and
runs under `torch.no_grad()` in channels_last. Validation accumulates a confusion matrix on the device
and reduces it across processes, so val mIoU is exact under DDP (up to the sampler's padding).

Checkpoints hold only tensors and primitives (they load with `weights_only=True`), plus the per-epoch
history and the RNG states, so a resumed run continues the same random stream and reports the same
best epoch as an uninterrupted one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from idd_edge.errors import StageError
from idd_edge.seg.kd import KDConfig, masked_cross_entropy
from idd_edge.seg.metrics import segmentation_scores, update_confusion
from idd_edge.seg.models import as_logits

SCHEDULES = ("cosine", "poly")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a per-step learning-rate schedule: linear warmup, then cosine or poly decay."""

    lr: float
    weight_decay: float
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.01  # final lr = lr * min_lr_ratio
    poly_power: float = 0.9

    def lr_factor(self, total_steps: int, steps_per_epoch: float) -> Callable[[int], float]:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        warmup = min(int(self.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
            if self.schedule == "cosine":
                decay = 0.5 * (1.0 + math.cos(math.pi * progress))
            else:
                decay = (1.0 - progress) ** self.poly_power
            return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay

        return factor


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and primitives (safe for weights_only loading)."""
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    rng = {
        "python": [version, list(state), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = rng["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def compute_losses(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, teacher: nn.Module | None = None,
    kd: KDConfig | None = None, teacher_logits: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """{"ce", "kl", "total"} of one batch: masked CE (class-weighted by `class_weights` when given), plus the
    KD terms when KD settings are given, against the cached `teacher_logits` of the batch or else the
    `teacher` run now (in inference mode: its logits are targets, nothing flows back into it; only tensors
    derived from them, never the inference tensors themselves, are saved for the student's backward)."""
    logits = as_logits(model(images))
    if kd is None:
        ce = masked_cross_entropy(logits, masks, class_weights=class_weights)
        return {"ce": ce, "kl": torch.zeros_like(ce), "total": ce}
    if teacher_logits is None:
        if teacher is None:
            raise ValueError("KD needs a teacher or the batch's cached teacher logits")
        with torch.inference_mode():
            teacher_logits = as_logits(teacher(images))
    return kd.loss(logits, teacher_logits, masks, class_weights)


class SegmentationTask(L.LightningModule):
    """Trains `model` on masked CE, or on the KD loss when `kd` settings are given: against a `teacher`
    run on every batch (online), or, without one, against cached teacher logits that every training
    batch carries as its third element (`logit_cache.py`).

    Args:
        model: the network to train (teacher or student).
        class_names: class names of the label level (index = train id).
        optim: optimizer and schedule.
        teacher: frozen teacher for online KD, else None.
        kd: distillation settings (required with a teacher; alone: KD from cached logits).
        channels_last: run model and teacher in channels_last memory format.
        on_epoch_end: called on global rank zero after each validated training epoch with the epoch's
            record (DVCLive logging).
        class_weights: (C,) weights of the training CE term (`kd.class_weights_from_counts`), or None;
            validation CE stays unweighted, comparable across runs.
    """

    def __init__(
        self,
        model: nn.Module,
        class_names: Sequence[str],
        optim: OptimConfig,
        teacher: nn.Module | None = None,
        kd: KDConfig | None = None,
        channels_last: bool = True,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        class_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        if teacher is not None and kd is None:
            raise ValueError("a teacher needs KD settings")
        self.model = model
        self.class_names = tuple(class_names)
        self.optim = optim
        self.kd = kd
        self.channels_last = channels_last
        self.on_epoch_end = on_epoch_end
        self.class_weights = class_weights
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None else []
        self.history: list[dict[str, Any]] = []
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return as_logits(self.model(images))

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # ---- training ----
    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)
            if self.channels_last:
                self.teacher.to(memory_format=torch.channels_last)

    def on_train_epoch_start(self) -> None:
        self._train_sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # ce, kl, total
        self._train_batches = 0

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images, masks, *cached = batch
        if self.kd is not None and self.teacher is None and not cached:
            raise ValueError("KD without a teacher needs cached teacher logits in every training batch")
        losses = compute_losses(self.model, self._prepare(images), masks, self.teacher, self.kd,
                                cached[0] if cached else None, self.class_weights)
        self._stop_if_not_finite(losses)
        stacked = torch.stack([losses["ce"], losses["kl"], losses["total"]]).detach().double()
        self._train_sums += stacked
        self._train_batches += 1
        self.log("train/loss", losses["total"].detach(), prog_bar=True, on_step=True, on_epoch=False)
        return losses["total"]

    def _stop_if_not_finite(self, losses: dict[str, torch.Tensor]) -> None:
        finite = bool(torch.isfinite(losses["total"]).item())
        # Every process decides together, so none is left waiting in the gradient all-reduce.
        if self.trainer.strategy.reduce_boolean_decision(not finite, all=False):
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise StageError(
                f"non-finite training loss ({values}) at epoch {self.current_epoch + 1}, step "
                f"{self.global_step}; stopped, the last good checkpoint is kept (lower the learning rate, "
                f"check the data, or use 32-bit precision)"
            )

    # ---- validation ----
    def on_validation_epoch_start(self) -> None:
        n = len(self.class_names)
        self._confusion = torch.zeros((n, n), dtype=torch.int64, device=self.device)
        self._val_sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # ce sum, batches

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, masks = batch
        logits = self(self._prepare(images))
        self._val_sums += torch.stack([masked_cross_entropy(logits, masks).detach().double(),
                                       torch.ones((), dtype=torch.float64, device=self.device)])
        update_confusion(self._confusion, logits.argmax(dim=1), masks)

    def on_validation_epoch_end(self) -> None:
        confusion = self.trainer.strategy.reduce(self._confusion, reduce_op="sum")
        val_sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        scores = segmentation_scores(confusion, self.class_names)
        miou = float(scores["miou"] or 0.0)
        self.log("val/miou", miou, prog_bar=True, sync_dist=False)  # already reduced
        if self.trainer.sanity_checking:
            return
        train = self.trainer.strategy.reduce(self._train_sums, reduce_op="sum") / max(self._train_batches, 1)
        train = (train / self.trainer.world_size).tolist()
        record = {
            "epoch": self.current_epoch + 1,
            "train_ce": train[0],
            "train_kl": train[1] if self.kd is not None else None,
            "train_total": train[2],
            "val_ce": float(val_sums[0] / val_sums[1].clamp(min=1)),
            "val_miou": miou,
            "val_pixel_accuracy": float(scores["pixel_accuracy"] or 0.0),
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
        }
        self.history.append(record)
        if self.on_epoch_end is not None and self.trainer.is_global_zero:
            self.on_epoch_end(record)

    # ---- optimisation ----
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        total_steps = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = total_steps / max(int(self.trainer.max_epochs or 1), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.optim.lr_factor(total_steps, steps_per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoint extras (tensors and primitives only) ----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["idd_edge"] = {"history": list(self.history), "rng": capture_rng()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("idd_edge", {})
        self.history = list(extra.get("history", []))
        if "rng" in extra:
            # Now, before Lightning creates the resumed epoch's DataLoader iterator (which draws seeds).
            restore_rng(extra["rng"])
