"""Model factory: one config (`conf/model/*.yaml`) -> one segmentation network.

Architectures (seed report section 6):
- `lraspp`: MobileNetV4 + LR-ASPP (`lraspp.py`), the seed's Hailo student.
- `deeplabv3plus`: segmentation-models-pytorch DeepLabV3+ on a timm backbone (`tu-<backbone>`).
- `upernet`: segmentation-models-pytorch UPerNet on a timm backbone (the ConvNeXt teacher).
- `ultralytics_sem`: Ultralytics YOLO26-sem from its model YAML (`ultralytics_sem.py`), trained by
  Ultralytics' own trainer as the reference the students are measured against; no ImageNet init.

MobileNetV4 conv variants use plain ReLU (no hard-swish / hard-sigmoid), so students export to ONNX
and Hailo without activation rewrites; `export_unfriendly_modules` lets tests keep it that way.
Backbone stages no decoder reads (e.g. the stride-32 stage when `encoder_depth: 4`, the seed's channel
lists [32, 32, 64, 96] / [24, 48, 96, 192]) are removed: they would cost compute, leave parameters
without gradients (DDP rejects those) and bloat the export.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from idd_edge.seg.pretrained import init_backbone

log = logging.getLogger(__name__)

ARCHITECTURES = ("lraspp", "deeplabv3plus", "upernet", "ultralytics_sem")
#: The largest stride a decoder sees; input sizes must be multiples of it (static, exact resizes).
INPUT_SIZE_MULTIPLE = 32


def check_input_size(input_size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(v) for v in input_size)
    if height % INPUT_SIZE_MULTIPLE or width % INPUT_SIZE_MULTIPLE or height <= 0 or width <= 0:
        raise ValueError(f"input size {height}x{width} must be positive multiples of {INPUT_SIZE_MULTIPLE}")
    return height, width


def prune_unused_blocks(features: nn.Module) -> int:
    """Drop trailing blocks of a timm MobileNet feature extractor that produce no requested output."""
    stage_outputs = getattr(features, "_stage_out_idx", None)
    blocks = getattr(features, "blocks", None)
    if not stage_outputs or not isinstance(blocks, nn.Sequential):
        return 0
    keep = max(stage_outputs)  # feature stage s is the output of blocks[s - 1] (stage 0 = stem)
    removed = len(blocks) - keep
    if removed > 0:
        features.blocks = blocks[:keep]
    return max(removed, 0)


def _lraspp(cfg: Mapping[str, Any], num_classes: int, input_size: tuple[int, int] | None) -> tuple[nn.Module, nn.Module]:
    import timm

    from idd_edge.seg.lraspp import LRASPP

    backbone = timm.create_model(cfg["backbone"], pretrained=False, features_only=True, out_indices=(1, 3))
    if backbone.feature_info.reduction() != [4, 16]:
        raise ValueError(f"{cfg['backbone']}: LR-ASPP needs stride-4 and stride-16 features")
    prune_unused_blocks(backbone)
    model = LRASPP(backbone, num_classes, 4, input_size, int(cfg.get("head_channels", 128)))
    return model, backbone


def _deeplabv3plus(cfg: Mapping[str, Any], num_classes: int) -> tuple[nn.Module, nn.Module]:
    import segmentation_models_pytorch as smp

    model = smp.DeepLabV3Plus(
        encoder_name=f"tu-{cfg['backbone']}",
        encoder_weights=None,
        encoder_depth=int(cfg.get("encoder_depth", 4)),
        encoder_output_stride=int(cfg.get("encoder_output_stride", 16)),
        decoder_channels=int(cfg.get("decoder_channels", 256)),
        decoder_atrous_rates=tuple(cfg.get("decoder_atrous_rates", (12, 24, 36))),
        classes=num_classes,
    )
    prune_unused_blocks(model.encoder.model)
    return model, model.encoder.model


def _upernet(cfg: Mapping[str, Any], num_classes: int) -> tuple[nn.Module, nn.Module]:
    import segmentation_models_pytorch as smp

    model = smp.UPerNet(
        encoder_name=f"tu-{cfg['backbone']}",
        encoder_weights=None,
        decoder_channels=int(cfg.get("decoder_channels", 256)),
        classes=num_classes,
    )
    return model, model.encoder.model


def build_model(
    model_cfg: Mapping[str, Any], num_classes: int, input_size: tuple[int, int] | None = None
) -> nn.Module:
    """Build the network of a model config with `num_classes` outputs, backbone weights from local files.

    Args:
        model_cfg: a `conf/model/*.yaml` mapping (`arch`, `backbone`, `pretrained`, `pretrained_tag`,
            `weights`, plus architecture options).
        num_classes: classes of the label level.
        input_size: (H, W) the model will see; LR-ASPP fixes its interpolation sizes to it.

    Example:
        >>> model = build_model({"arch": "lraspp", "backbone": "mobilenetv4_conv_small",
        ...                      "pretrained": False}, num_classes=7, input_size=(64, 64))
    """
    arch = model_cfg["arch"]
    if input_size is not None:
        input_size = check_input_size(input_size)
    if arch == "ultralytics_sem":  # its own initialisation (Ultralytics'), no timm backbone
        from idd_edge.seg.ultralytics_sem import build_ultralytics_sem

        return build_ultralytics_sem(model_cfg, num_classes)
    if arch == "lraspp":
        model, backbone = _lraspp(model_cfg, num_classes, input_size)
    elif arch == "deeplabv3plus":
        model, backbone = _deeplabv3plus(model_cfg, num_classes)
    elif arch == "upernet":
        model, backbone = _upernet(model_cfg, num_classes)
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    init_backbone(
        backbone,
        tag=model_cfg.get("pretrained_tag") or model_cfg["backbone"],
        weights=model_cfg.get("weights"),
        enabled=bool(model_cfg.get("pretrained", True)),
    )
    return model


def as_logits(output: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a model output: the tensor itself, or `out` of a torchvision-style dict."""
    return output if isinstance(output, torch.Tensor) else output["out"]


def set_export_mode(model: nn.Module, export: bool = True) -> nn.Module:
    """Switch every submodule with an `export` flag (LR-ASPP) to plain-tensor output."""
    for module in model.modules():
        if hasattr(module, "export") and isinstance(module.export, bool):
            module.export = export
    return model


def export_unfriendly_modules(model: nn.Module) -> list[str]:
    """Names of modules using hard-swish / hard-sigmoid style activations (none expected in students)."""
    return [
        name for name, module in model.named_modules()
        if type(module).__name__.lower().startswith(("hardswish", "hardsigmoid", "hardmish"))
    ]
