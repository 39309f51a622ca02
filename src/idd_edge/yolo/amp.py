"""fp16 AMP for `idd-edge yolo-train` on CUDA, checked here without a download.

Ultralytics checks fp16 AMP before training by running `yolo26n.pt` (which it downloads) in fp32 and in
fp16 on a sample image. Offline it still reaches for the network (in the locked 8.4.190, `YOLO_OFFLINE=1`
does not stop `safe_download`: it resolves and connects to github.com, retrying), then `check_amp` catches
the ConnectionError and turns AMP on unchecked. Instead, this module runs the same comparison on the model about to be trained (its
YAML, with the local pretrained weights when present) on the bundled sample image, decides, logs why,
and answers Ultralytics' check with that decision (`answered_amp_check`), so nothing is fetched.

`yolo.train.amp`: false (fp32), true (fp16 AMP on one CUDA GPU where the check passes, else fp32 with
the reason logged), or bf16 (bf16 autocast, which Ultralytics never checks; also for DDP, whose worker
process this module's answer does not reach).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

AMP_CHOICES = (False, True, "bf16")
#: GPUs whose fp16 gives NaN losses or zero mAP in Ultralytics' experience (its check_amp's own list).
FP16_BROKEN_GPUS = re.compile(r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)",
                              re.IGNORECASE)
#: Largest |fp32 - fp16| allowed in the head's output, whose box coordinates are input pixels: Ultralytics'
#: tolerance (0.5 px) on the boxes of its check.
FP16_TOLERANCE = 0.5
CHECK_IMGSZ = 256  # Ultralytics' check size (4 x the largest stride, at least 256)


@dataclass(frozen=True)
class AmpDecision:
    """The `amp` value handed to Ultralytics and why."""

    amp: bool | str
    reason: str


def cuda_device(device: str) -> bool:
    """Whether an Ultralytics device string ("cpu", "0", "0,1", "cuda:0", "mps") names CUDA GPUs."""
    text = str(device).strip().lower()
    return text not in ("", "cpu", "mps") and not text.startswith("mps")


def decide_amp(requested: bool | str, device: str, *, cuda_available: bool, gpu_name: str | None,
               discrepancy: Callable[[], float]) -> AmpDecision:
    """The AMP a run gets. `discrepancy()` runs the fp32-vs-fp16 comparison (only called when needed)."""
    if requested is False:
        return AmpDecision(False, "fp32 (yolo.train.amp: false)")
    if requested == "bf16":
        return AmpDecision("bf16", "bf16 autocast (yolo.train.amp: bf16)")
    if not cuda_device(device):
        return AmpDecision(False, f"fp16 AMP needs a CUDA device, training on {device!r} in fp32")
    if not cuda_available:
        return AmpDecision(False, f"fp16 AMP: device {device!r} asked for but CUDA is not available; fp32")
    if "," in str(device):
        return AmpDecision(False, "fp16 AMP off: with several GPUs Ultralytics trains in a new DDP process, which "
                                  "would run its own, downloading AMP check; use amp: bf16 there; fp32")
    if gpu_name and FP16_BROKEN_GPUS.search(gpu_name):
        return AmpDecision(False, f"fp16 AMP off: {gpu_name} is on Ultralytics' list of GPUs with broken fp16 "
                                  "training (NaN losses, zero mAP); fp32")
    difference = discrepancy()
    if not difference <= FP16_TOLERANCE:  # also catches NaN
        return AmpDecision(False, f"fp16 AMP off: the model's fp16 output differs from fp32 by {difference:.3g} "
                                  f"(> {FP16_TOLERANCE}) on {gpu_name}; fp32")
    return AmpDecision(True, f"fp16 AMP on {gpu_name}: fp16 output within {difference:.3g} of fp32 "
                             f"(tolerance {FP16_TOLERANCE})")


def fp16_discrepancy(model: Any, image_bchw: Any, device_type: str) -> float:
    """Largest |fp32 - fp16 autocast| over the detection output of `model` on `image_bchw` (inf if the
    fp16 output is not finite). Runs on the device the model and image are on."""
    import torch

    def detections(output: Any) -> Any:  # eval output: ((boxes + scores + mask coefficients, proto), raw)
        while isinstance(output, (tuple, list)):
            output = output[0]
        return output

    model.eval()
    with torch.inference_mode():
        reference = detections(model(image_bchw)).float()
        with torch.autocast(device_type=device_type, dtype=torch.float16):
            half = detections(model(image_bchw)).float()
    if reference.shape != half.shape or not torch.isfinite(half).all():
        return float("inf")
    return float((reference - half).abs().max())


def sample_image(imgsz: int = CHECK_IMGSZ) -> Any:
    """Ultralytics' bundled bus.jpg (no download), resized to imgsz x imgsz, as a (1, 3, H, W) float 0-1
    tensor (a real street scene is all the comparison needs; the aspect ratio does not matter)."""
    import cv2
    import torch
    from ultralytics.utils import ASSETS

    path = Path(ASSETS) / "bus.jpg"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path}: Ultralytics' sample image is missing")
    canvas = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (imgsz, imgsz), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255.0


def check_model(model_yaml: str, pretrained: Path, num_classes: int) -> Any:
    """The network about to be trained: `model_yaml` with `num_classes`, initialised from `pretrained`
    when that file exists (as the trainer does)."""
    from ultralytics.nn.tasks import SegmentationModel, load_checkpoint

    model = SegmentationModel(model_yaml, nc=num_classes, verbose=False)
    if pretrained.is_file():
        source, _ = load_checkpoint(pretrained)
        model.load(source, verbose=False)
    return model


def resolve_amp(requested: bool | str, device: str, model_yaml: str, pretrained: Path, num_classes: int) -> AmpDecision:
    """`decide_amp` on this machine: the real CUDA state and the real fp32/fp16 comparison."""
    import torch

    available = torch.cuda.is_available()
    target = None
    if cuda_device(device) and available:
        first = str(device).lower().removeprefix("cuda:").split(",")[0].strip() or "0"
        target = torch.device(f"cuda:{int(first)}")
    name = torch.cuda.get_device_name(target) if target is not None else None

    def discrepancy() -> float:
        model = check_model(model_yaml, pretrained, num_classes).to(target)
        return fp16_discrepancy(model, sample_image().to(target), "cuda")

    decision = decide_amp(requested, device, cuda_available=available, gpu_name=name, discrepancy=discrepancy)
    log.info("AMP: %s", decision.reason)
    return decision


@contextlib.contextmanager
def answered_amp_check(decision: AmpDecision) -> Iterator[None]:
    """While training, Ultralytics' trainer gets `decision` from its fp16 AMP check instead of running it
    (which downloads yolo26n.pt). Restored afterwards."""
    from ultralytics.engine import trainer

    original = trainer.check_amp
    trainer.check_amp = lambda model: bool(decision.amp)
    try:
        yield
    finally:
        trainer.check_amp = original
