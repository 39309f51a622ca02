"""LR-ASPP (Lite Reduced ASPP, Howard et al. 2019, "Searching for MobileNetV3") on a timm backbone.

Deployment-friendly as the seed's Hailo student: interpolation sizes are fixed at construction from
the configured input size (static shapes in ONNX), the attention gate is a plain Sigmoid (no
hard-sigmoid), and in export mode the forward returns a plain tensor instead of a dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LRASPPHead(nn.Module):
    """Gate stride-16 features by a global-context Sigmoid, upsample to stride 4, add a stride-4 skip."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128):
        super().__init__()
        self.context = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor, low_size: tuple[int, int]) -> torch.Tensor:
        x = self.context(high) * self.gate(high)
        x = F.interpolate(x, size=low_size, mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    """Backbone returning [stride-4, stride-16] features + LR-ASPP head, logits at input resolution.

    Args:
        backbone: a timm `features_only` model with exactly two outputs (low, high).
        num_classes: output channels.
        low_reduction: stride of the low-level feature (4 for the seed's 128x128 at 512x512).
        input_size: (H, W) the model is deployed at; fixes both interpolation sizes. None: sizes follow
            the input (for experiments at varying sizes; exports still get static sizes from tracing).
        inter_channels: width of the head.

    Example:
        >>> import timm
        >>> backbone = timm.create_model("mobilenetv4_conv_small", features_only=True, out_indices=(1, 3))
        >>> model = LRASPP(backbone, num_classes=16, input_size=(128, 128)).eval()
        >>> model(torch.zeros(1, 3, 128, 128))["out"].shape
        torch.Size([1, 16, 128, 128])
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        low_reduction: int = 4,
        input_size: tuple[int, int] | None = None,
        inter_channels: int = 128,
    ):
        super().__init__()
        low_channels, high_channels = backbone.feature_info.channels()
        self.backbone = backbone
        self.head = LRASPPHead(low_channels, high_channels, num_classes, inter_channels)
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.low_size = None
        if input_size is not None:  # ceil: a stride-2 conv with padding 1 rounds up
            self.low_size = (-(-input_size[0] // low_reduction), -(-input_size[1] // low_reduction))
        self.export = False  # True: return the logits tensor itself (ONNX / Hailo graphs want one plain output)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        # Shapes are static when traced anyway; torch.fx (MCT's IMX500 quantizer) cannot compare a symbolic shape.
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.fx._symbolic_trace.is_fx_tracing()
        if self.input_size is not None and not tracing and tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"LR-ASPP built for input {self.input_size}, got {tuple(x.shape[-2:])}")
        low, high = self.backbone(x)
        low_size = self.low_size or tuple(low.shape[-2:])
        out_size = self.input_size or tuple(x.shape[-2:])
        logits = self.head(low, high, low_size)
        logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits if self.export else {"out": logits}
