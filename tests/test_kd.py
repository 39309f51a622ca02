"""Logit-distillation loss: hand-computed values, void pixels ignored, T^2 option."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idd_edge.labels import VOID
from idd_edge.seg.kd import KDConfig, class_weights_from_counts, masked_cross_entropy, masked_kl_divergence


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_kl_matches_a_hand_computed_value_and_skips_void_pixels():
    # Two pixels, two classes; the second pixel is void and must not count.
    student = torch.tensor([[[[1.0, 5.0]], [[3.0, -2.0]]]])  # (1, 2, 1, 2)
    teacher = torch.tensor([[[[4.0, 0.0]], [[0.0, 9.0]]]])
    target = torch.tensor([[[0, 255]]])
    temperature = 4.0
    p_teacher = _softmax([4.0 / temperature, 0.0 / temperature])
    p_student = _softmax([1.0 / temperature, 3.0 / temperature])
    expected = sum(t * (math.log(t) - math.log(s)) for t, s in zip(p_teacher, p_student))

    kl = masked_kl_divergence(student, teacher, target, temperature)
    assert kl.item() == pytest.approx(expected, rel=1e-6)


def test_total_is_ce_plus_alpha_kl_and_t_squared_is_optional():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 6, 7), torch.randn(2, 5, 6, 7)
    target = torch.randint(0, 5, (2, 6, 7))
    target[0, :2] = 255
    plain = KDConfig(temperature=4.0, alpha=0.5).loss(student, teacher, target)
    squared = KDConfig(temperature=4.0, alpha=0.5, temperature_squared=True).loss(student, teacher, target)

    reference_ce = F.cross_entropy(student, target, ignore_index=255)
    assert plain["ce"].item() == pytest.approx(reference_ce.item(), rel=1e-6)
    assert plain["total"].item() == pytest.approx((plain["ce"] + 0.5 * plain["kl"]).item(), rel=1e-6)
    assert squared["total"].item() == pytest.approx((plain["ce"] + 0.5 * 16 * plain["kl"]).item(), rel=1e-6)
    assert squared["kl"].item() == pytest.approx(plain["kl"].item())


def test_void_pixels_do_not_change_the_loss():
    torch.manual_seed(1)
    student, teacher = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    target[0, :, :2] = 255
    base = KDConfig().loss(student, teacher, target)
    changed_student, changed_teacher = student.clone(), teacher.clone()
    changed_student[..., :2] = 100.0 * torch.randn(1, 3, 4, 2)
    changed_teacher[..., :2] = -50.0
    changed = KDConfig().loss(changed_student, changed_teacher, target)
    for key in ("ce", "kl", "total"):
        assert changed[key].item() == pytest.approx(base[key].item(), rel=1e-6)


def test_all_void_batch_gives_zero_loss_with_a_gradient_path_not_nan():
    student = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    losses = KDConfig().loss(student, torch.randn(1, 3, 4, 4), target)
    assert all(torch.isfinite(v) and v.item() == 0.0 for v in losses.values())
    losses["total"].backward()
    assert student.grad is not None and torch.equal(student.grad, torch.zeros_like(student))
    assert masked_cross_entropy(student, target).item() == 0.0


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(2, 4, 3, 3)
    target = torch.zeros(2, 3, 3, dtype=torch.long)
    assert masked_kl_divergence(logits, logits.clone(), target, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert masked_kl_divergence(logits, logits.flip(1), target, 4.0).item() > 0.0


def test_teacher_logits_at_another_resolution_are_resized():
    student, teacher = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 4, 4)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    upsampled = F.interpolate(teacher, size=(8, 8), mode="bilinear", align_corners=False)
    assert masked_kl_divergence(student, teacher, target, 2.0).item() == pytest.approx(
        masked_kl_divergence(student, upsampled, target, 2.0).item(), rel=1e-6
    )


def test_training_losses_send_no_gradient_into_the_teacher():
    from idd_edge.seg.models import build_model
    from idd_edge.seg.task import compute_losses

    torch.manual_seed(0)
    cfg = {"arch": "lraspp", "backbone": "mobilenetv4_conv_small", "pretrained": False}
    student, teacher = build_model(cfg, 4, (64, 64)), build_model(cfg, 4, (64, 64)).eval()
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    kd = compute_losses(student, images, masks, teacher, KDConfig(alpha=2.0))
    kd["total"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert kd["total"].item() == pytest.approx(kd["ce"].item() + 2.0 * kd["kl"].item(), rel=1e-6)
    baseline = compute_losses(student, images, masks)
    assert baseline["kl"].item() == 0.0 and baseline["total"].item() == pytest.approx(kd["ce"].item(), rel=1e-6)


def test_the_hand_written_kl_gradient_matches_autograd_of_the_textbook_formula():
    torch.manual_seed(0)
    student = torch.randn(2, 5, 6, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    student.requires_grad_(True)
    teacher = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    target = torch.randint(0, 5, (2, 6, 7))
    target[1, :3] = 255
    valid = (target != 255).to(torch.float64)
    reference = F.kl_div(F.log_softmax(student / 3.0, 1), F.log_softmax(teacher / 3.0, 1), log_target=True,
                         reduction="none").sum(1)
    reference = (reference * valid).sum() / valid.sum()
    (expected_grad,) = torch.autograd.grad(reference, student)
    kl = masked_kl_divergence(student, teacher, target, 3.0)
    (grad,) = torch.autograd.grad(kl, student)
    assert kl.item() == pytest.approx(reference.item(), rel=1e-12)
    assert torch.allclose(grad, expected_grad, atol=1e-14)
    assert torch.autograd.gradcheck(lambda s: masked_kl_divergence(s, teacher, target, 3.0), (student,))


def test_half_precision_cached_teacher_logits_give_the_float32_loss():
    torch.manual_seed(1)
    student, teacher = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)
    target = torch.randint(0, 4, (1, 5, 5))
    exact = masked_kl_divergence(student, teacher.half().float(), target, 4.0)
    assert masked_kl_divergence(student, teacher.half(), target, 4.0).item() == pytest.approx(exact.item(), rel=1e-6)


def test_weighted_ce_is_the_weight_normalised_mean_over_valid_pixels():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0] = VOID
    weights = torch.tensor([0.5, 2.0, 4.0])
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=VOID)  # PyTorch's weighted mean
    assert masked_cross_entropy(logits, target, class_weights=weights).item() == pytest.approx(expected.item())
    unweighted = masked_cross_entropy(logits, target, class_weights=torch.ones(3))
    assert unweighted.item() == pytest.approx(masked_cross_entropy(logits, target).item())


def test_class_weights_favour_rare_classes_keep_the_ce_scale_and_are_capped():
    counts = torch.tensor([9000, 900, 100, 0])  # the last class never occurs in training
    weights = class_weights_from_counts(counts, power=0.5, max_weight=100.0)
    assert weights[0] < weights[1] < weights[2] and weights[3].item() == 1.0
    freq = counts[:3].double() / counts.sum()
    assert (weights[:3].double() * freq).sum().item() == pytest.approx(1.0, rel=1e-5)  # pixel-weighted mean 1
    assert weights[2] / weights[0] == pytest.approx(math.sqrt(90), rel=1e-5)  # (1/f) ** 0.5
    capped = class_weights_from_counts(counts, power=1.0, max_weight=3.0)
    assert capped.max().item() == 3.0


def test_class_weighted_kl_weights_pixels_by_their_target_class():
    student, teacher = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 1], [2, VOID]]])
    weights = torch.tensor([1.0, 2.0, 5.0])
    per_pixel = [masked_kl_divergence(student, teacher, torch.where(torch.arange(4).view(1, 2, 2) == i, target,
                                                                    VOID), 4.0).item() for i in range(3)]
    expected = (1.0 * per_pixel[0] + 2.0 * per_pixel[1] + 5.0 * per_pixel[2]) / 8.0
    weighted = masked_kl_divergence(student, teacher, target, 4.0, class_weights=weights)
    assert weighted.item() == pytest.approx(expected, rel=1e-5)
    all_void = masked_kl_divergence(student, teacher, torch.full_like(target, VOID), 4.0, class_weights=weights)
    assert all_void.item() == 0.0


def test_cwd_is_zero_for_identical_maps_ignores_void_and_weighs_every_class_alike():
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 4, 4)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[:, 0] = VOID
    cwd = KDConfig(method="cwd")
    assert cwd.loss(teacher.clone(), teacher, target)["kl"].item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(2, 3, 4, 4)
    changed = student.clone()
    changed[:, :, 0] += 5.0  # only void pixels change
    assert cwd.loss(changed, teacher, target)["kl"].item() == pytest.approx(cwd.loss(student, teacher, target)["kl"].item())
    # the textbook form, by autograd: T^2 * mean over (image, class) of KL over the valid pixels
    valid = (target != VOID).reshape(2, 1, -1).expand(2, 3, -1)
    p = F.softmax(teacher.reshape(2, 3, -1)[valid].reshape(2, 3, -1) / 4.0, dim=-1)
    log_q = F.log_softmax(student.reshape(2, 3, -1)[valid].reshape(2, 3, -1) / 4.0, dim=-1)
    expected = 16.0 * (p * (p.log() - log_q)).sum(-1).mean()
    assert cwd.loss(student, teacher, target)["kl"].item() == pytest.approx(expected.item(), rel=1e-5)
    all_void = torch.full_like(target, VOID)
    assert cwd.loss(student, teacher, all_void)["kl"].item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="train.kd.loss"):
        KDConfig(method="mse")


def test_dist_matches_the_textbook_correlations_ignores_void_and_keeps_a_gradient_path():
    torch.manual_seed(0)
    teacher = torch.randn(2, 4, 5, 5)
    target = torch.randint(0, 4, (2, 5, 5))
    target[:, 0] = VOID
    dist = KDConfig(temperature=1.0, method="dist")
    assert dist.loss(teacher.clone(), teacher, target)["kl"].item() == pytest.approx(0.0, abs=1e-5)
    student = torch.randn(2, 4, 5, 5)
    changed = student.clone()
    changed[:, :, 0] += 5.0  # only void pixels change
    assert dist.loss(changed, teacher, target)["kl"].item() == pytest.approx(dist.loss(student, teacher, target)["kl"].item())
    # the textbook form on the valid pixels: T^2 * (mean_pixels (1 - r(y_s, y_t)) + mean_classes (1 - r))
    valid = target.reshape(-1) != VOID
    y_s = F.softmax(student.permute(0, 2, 3, 1).reshape(-1, 4)[valid], dim=1).numpy()
    y_t = F.softmax(teacher.permute(0, 2, 3, 1).reshape(-1, 4)[valid], dim=1).numpy()
    inter = np.mean([1 - np.corrcoef(a, b)[0, 1] for a, b in zip(y_s, y_t)])
    intra = np.mean([1 - np.corrcoef(a, b)[0, 1] for a, b in zip(y_s.T, y_t.T)])
    assert dist.loss(student, teacher, target)["kl"].item() == pytest.approx(inter + intra, rel=1e-4)
    far = dist.loss(-teacher, teacher, target)["kl"].item()
    assert far > dist.loss(student, teacher, target)["kl"].item()
    gradient_path = KDConfig(method="dist").loss(student.requires_grad_(), teacher, torch.full_like(target, VOID))
    assert gradient_path["kl"].item() == 0.0
    gradient_path["total"].backward()
