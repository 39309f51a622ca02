"""Losses: masked cross-entropy and logit knowledge distillation (seed report section 7).

    total = CE(student, target) + alpha * D(teacher logits, student logits)

D is `train.kd.loss`: `kl`, the seed's KL(softmax(teacher / T) || softmax(student / T)); `cwd`,
channel-wise distillation (Shu et al. 2021); `dist`, DIST (Huang et al. 2022), the default with T = 1 and
alpha = 3 (the seed's KL used T = 4 and alpha = 1). Both terms average over valid pixels only
(target != 255); KL is summed over classes per pixel. `temperature_squared: true` multiplies the KL term
by T^2 (Hinton et al. 2015: keeps the soft-target gradients at the scale of the hard-target ones when T
changes); the seed did not, so it is off by default and reported KL values are comparable with the
seed's logs.
The KL term is computed in float32 even under mixed precision (exp/log of T-scaled logits), with a
hand-written gradient (`_SoftTargetKL`). The teacher logits come from the teacher run on the batch or
from the teacher-logit cache (`logit_cache.py`), possibly float16 and at another resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from idd_edge.labels import VOID


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = VOID, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean CE over valid pixels; 0 (with a gradient path) for a batch without any, instead of NaN.
    With `class_weights` (C,), the weighted mean: sum_p w[t_p] * CE_p / sum_p w[t_p]."""
    valid_mask = target != ignore_index
    if class_weights is None:
        valid = valid_mask.sum()
    else:
        class_weights = class_weights.to(device=logits.device, dtype=torch.float32)
        valid = class_weights[target[valid_mask]].sum()
    loss = F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=ignore_index, reduction="sum")
    return loss / valid.clamp(min=1)


WEIGHTINGS = ("none", "inverse_frequency")


def class_weights_from_counts(counts: torch.Tensor, power: float, max_weight: float) -> torch.Tensor:
    """Per-class CE weights (1 / frequency) ** power from training pixel counts (C,), scaled so that the
    pixel-weighted mean weight is 1 (the loss keeps the scale of plain CE, and so do learning rates) and
    capped at `max_weight` (a class of a few pixels would otherwise dominate the batch). Classes absent
    from training get weight 1: they never occur as a target, the value only matters for other data.

    Why: on road scenes a handful of classes (road, sky, vegetation, buildings) cover ~90% of the pixels;
    under plain CE a small network learns those and predicts person / rider / pole nowhere (0 IoU).
    power 0.5 (inverse square root) is the usual compromise between plain CE (0) and full balance (1).
    """
    counts = counts.double()
    freq = counts / counts.sum().clamp(min=1)
    present = counts > 0
    weights = torch.ones_like(freq)
    raw = freq[present].pow(-power)
    weights[present] = raw / (raw * freq[present]).sum()
    return weights.clamp(max=max_weight).float()


def _at_student_size(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """The teacher logits resized (bilinear) to the student's output size; cached logits are coarser."""
    if teacher_logits.shape[-2:] == student_logits.shape[-2:]:
        return teacher_logits
    return F.interpolate(teacher_logits.float(), size=student_logits.shape[-2:], mode="bilinear", align_corners=False)


def _pixel_weights(target: torch.Tensor, valid: torch.Tensor, class_weights: torch.Tensor | None,
                   dtype: torch.dtype) -> torch.Tensor:
    """Weight of each pixel in a distillation term: its target class's CE weight, 0 for void pixels."""
    if class_weights is None:
        return valid.to(dtype)
    per_class = class_weights.to(device=target.device, dtype=dtype)
    return per_class[target.clamp(max=len(per_class) - 1)] * valid  # void indexes any class, then drops


def masked_kl_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float,
    ignore_index: int = VOID, class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) per pixel (sum over classes), mean over valid pixels;
    with `class_weights` (C,), the mean weighted by the weight of each pixel's target class, as in
    `masked_cross_entropy`. The teacher logits are targets: no gradient flows into them."""
    teacher_logits = _at_student_size(teacher_logits, student_logits)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    weight = _pixel_weights(target, target != ignore_index, class_weights, dtype)
    weight = weight / weight.sum().clamp(min=torch.finfo(dtype).tiny)
    classes = student_logits.shape[1]
    # (pixels, classes) views: free for channels_last tensors (the students train in channels_last and
    # the cached-logit batches come that way), so no layout conversion on the way in or, for the
    # gradient, on the way out.
    return _SoftTargetKL.apply(student_logits.permute(0, 2, 3, 1).reshape(-1, classes),
                               teacher_logits.detach().permute(0, 2, 3, 1).reshape(-1, classes),
                               weight.reshape(-1), float(temperature))


class _SoftTargetKL(torch.autograd.Function):
    """sum_pixels weight * KL(softmax(teacher/T) || softmax(student/T)) of (pixels, classes) logits, with
    the gradient written by hand.

    Why not autograd through log_softmax + kl_div: that graph keeps more intermediates and its backward
    makes several more passes over the logits; with the (pixels, classes) layout below this form costs
    about a third less CPU time per KD step (benchmarks/train_step.py). The gradient is the textbook one,
    d/ds = weight * (softmax(s/T) - softmax(t/T)) / T (tests compare it with autograd's). Float32 at
    least, even under mixed precision (exp/log of T-scaled logits).
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
        dtype = weight.dtype
        log_q = torch.log_softmax(student.to(dtype) / temperature, dim=1)
        log_p = torch.log_softmax(teacher.to(dtype) / temperature, dim=1)
        p = log_p.exp()
        per_pixel = log_p.sub_(log_q).mul_(p).sum(dim=1)  # log_p is not needed afterwards
        ctx.save_for_backward(log_q, p, weight)
        ctx.temperature, ctx.student_dtype = temperature, student.dtype
        return torch.dot(per_pixel, weight)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        log_q, p, weight = ctx.saved_tensors
        grad = log_q.exp().sub_(p).mul_(weight.unsqueeze(1) * (grad_output / ctx.temperature))
        return grad.to(ctx.student_dtype), None, None, None


def channel_wise_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float,
    ignore_index: int = VOID,
) -> torch.Tensor:
    """Channel-wise distillation (Shu et al. 2021, CWD): each class channel of an image becomes a
    distribution over its valid pixels, softmax(logits_c / T); the loss is T^2 times the KL of the teacher's
    from the student's, mean over images and channels. Every class counts alike, however few pixels it
    covers (the per-pixel KL is dominated by road and sky). Void pixels take no probability mass."""
    teacher_logits = _at_student_size(teacher_logits, student_logits)
    n, c = student_logits.shape[:2]
    void = (target == ignore_index).reshape(n, 1, -1)
    # a finite fill: an all-void image gives two uniform distributions (KL 0) instead of NaN
    student = (student_logits.float().reshape(n, c, -1) / temperature).masked_fill(void, -1e4)
    teacher = (teacher_logits.detach().float().reshape(n, c, -1) / temperature).masked_fill(void, -1e4)
    log_p = torch.log_softmax(teacher, dim=-1)
    kl = (log_p.exp() * (log_p - torch.log_softmax(student, dim=-1))).sum(dim=-1)
    return kl.mean() * temperature**2


def _pearson_distance(a: torch.Tensor, b: torch.Tensor, dim: int, mask: torch.Tensor | None = None,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 - Pearson correlation of `a` and `b` along `dim`, over the entries where `mask` (broadcast) is 1
    (all without one), averaged over the other dimension with `weight` (equally without one). Masks
    instead of indexing: no copy of the valid rows."""
    if mask is None:
        a = a - a.sum(dim=dim, keepdim=True) / a.shape[dim]
        b = b - b.sum(dim=dim, keepdim=True) / b.shape[dim]
    else:
        count = mask.sum(dim=dim, keepdim=True).clamp(min=1)
        a = (a - (a * mask).sum(dim=dim, keepdim=True) / count) * mask
        b = (b - (b * mask).sum(dim=dim, keepdim=True) / count) * mask
    rho = (a * b).sum(dim=dim) / ((a * a).sum(dim=dim) * (b * b).sum(dim=dim)).sqrt().clamp(min=1e-8)
    if weight is None:
        return (1 - rho).sum() / rho.numel()
    return ((1 - rho) * weight).sum() / weight.sum().clamp(min=1e-12)


def dist_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float,
    ignore_index: int = VOID, class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """DIST (Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher"): instead of matching the
    teacher's class distribution exactly (KL), match its relations. Inter-class: the Pearson correlation of
    the student's and the teacher's class probabilities at each valid pixel; intra-class: the correlation
    of each class's probabilities across the batch's valid pixels. Loss = T^2 * (inter + intra), both
    1 - correlation (beta = gamma = 1 as in the paper). The inter-class term weights pixels by their target
    class like the CE. Why: a correlation ignores the scale and shift that separate a small student's
    predictions from a much stronger teacher's, which the exact KL match penalises."""
    teacher_logits = _at_student_size(teacher_logits, student_logits)
    classes = student_logits.shape[1]
    valid = (target != ignore_index).reshape(-1)
    if int(valid.sum()) < 2:  # nothing to correlate; keep the graph
        return student_logits.sum() * 0.0
    # (pixels, classes) views: free for channels_last tensors, as in masked_kl_divergence
    y_s = torch.softmax(student_logits.float().permute(0, 2, 3, 1).reshape(-1, classes) / temperature, dim=1)
    y_t = torch.softmax(teacher_logits.detach().float().permute(0, 2, 3, 1).reshape(-1, classes) / temperature,
                        dim=1)
    pixel_weight = _pixel_weights(target.reshape(-1), valid, class_weights, torch.float32)
    inter = _pearson_distance(y_s, y_t, 1, weight=pixel_weight)
    intra = _pearson_distance(y_s, y_t, 0, mask=valid.float().unsqueeze(1))
    return (inter + intra) * temperature**2


#: train.kd.loss: the distillation term added to the CE
KD_LOSSES = ("kl", "cwd", "dist")


@dataclass(frozen=True)
class KDConfig:
    temperature: float = 4.0
    alpha: float = 1.0
    temperature_squared: bool = False
    method: str = "kl"  # train.kd.loss; kl: per-pixel KL (the seed's); cwd: channel-wise; dist: DIST

    def __post_init__(self) -> None:
        if self.method not in KD_LOSSES:
            raise ValueError(f"train.kd.loss {self.method!r}; choose one of {', '.join(KD_LOSSES)}")

    @classmethod
    def from_params(cls, cfg: dict[str, Any]) -> KDConfig:
        return cls(float(cfg["temperature"]), float(cfg["alpha"]), bool(cfg["temperature_squared"]), str(cfg["loss"]))

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             class_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"ce", "kl", "total"}; `kl` is the raw distillation term (before alpha and the optional T^2; CWD
        and DIST include their own T^2)."""
        ce = masked_cross_entropy(student_logits, target, class_weights=class_weights)
        if self.method == "cwd":
            cwd = channel_wise_divergence(student_logits, teacher_logits, target, self.temperature)
            return {"ce": ce, "kl": cwd, "total": ce + self.alpha * cwd}
        if self.method == "dist":
            dist = dist_divergence(student_logits, teacher_logits, target, self.temperature,
                                   class_weights=class_weights)
            return {"ce": ce, "kl": dist, "total": ce + self.alpha * dist}
        # the KD term weights pixels as the CE term does: unweighted, the KL of the road, sky and vegetation
        # pixels pulls the student back towards the frequent classes the CE weights steer it from
        kl = masked_kl_divergence(student_logits, teacher_logits, target, self.temperature,
                                  class_weights=class_weights)
        weight = self.alpha * (self.temperature**2 if self.temperature_squared else 1.0)
        return {"ce": ce, "kl": kl, "total": ce + weight * kl}
