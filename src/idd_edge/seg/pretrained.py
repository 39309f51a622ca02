"""ImageNet backbone weights from local files only; random init (with a clear log line) otherwise.

Lookup order for a backbone tag such as `mobilenetv4_conv_small.e2400_r224_in1k`:
1. the model config's `weights` path (must exist when given);
2. `models/pretrained/seg/<tag>.{safetensors,pth,bin}` (the project folder, a DVC dependency);
3. the Hugging Face hub cache that `timm.create_model(..., pretrained=True)` would have filled
   (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`, `models--timm--<tag>/snapshots/*/`).
The hub itself is never contacted: timm is always called with `pretrained=False` and the state dict is
read here, with `weights_only=True` (or safetensors).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from idd_edge.errors import InputError

log = logging.getLogger(__name__)

WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin")
PROJECT_WEIGHTS_DIR = Path("models/pretrained/seg")
PROJECT_SUFFIXES = (".safetensors", ".pth", ".bin")


def hub_cache_dirs() -> list[Path]:
    """Where the Hugging Face hub keeps downloads, in the order huggingface_hub resolves them."""
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"])]
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return [hf_home / "hub"]


def find_cached_weights(tag: str) -> Path | None:
    """A local weight file of timm model `tag` (e.g. `convnext_base.fb_in22k_ft_in1k`), or None."""
    for suffix in PROJECT_SUFFIXES:
        if (PROJECT_WEIGHTS_DIR / f"{tag}{suffix}").is_file():
            return PROJECT_WEIGHTS_DIR / f"{tag}{suffix}"
    for cache in hub_cache_dirs():
        snapshots = cache / f"models--timm--{tag}" / "snapshots"
        for name in WEIGHT_FILE_NAMES:
            found = sorted(snapshots.glob(f"*/{name}"))
            if found:
                return found[-1]
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch checkpoint (plain or under `state_dict`/`model`)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(path, f"cannot read weights: {exc}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "expected a state dict of tensors")
    return state


def _normalised(key: str) -> str:
    # timm's feature wrappers flatten `stages.0` to `stages_0`; compare keys with both spellings unified.
    return key.replace("_", ".")


def load_backbone_weights(backbone: nn.Module, path: Path) -> int:
    """Copy the tensors of a timm classification checkpoint into a `features_only` backbone.

    Every backbone tensor must be found with the same shape (classifier tensors of the file are
    ignored; stages the backbone pruned are simply not asked for). Returns the number loaded."""
    source = {_normalised(k): v for k, v in read_state_dict(path).items()}
    target = backbone.state_dict()
    missing = [k for k in target if _normalised(k) not in source]
    if missing:
        raise InputError(path, f"{len(missing)} backbone tensors not in file (first: {missing[:3]}); wrong model?")
    mismatched = [k for k, v in target.items() if source[_normalised(k)].shape != v.shape]
    if mismatched:
        raise InputError(path, f"shape mismatch for {mismatched[:3]}; weights of another model variant?")
    backbone.load_state_dict({k: source[_normalised(k)] for k in target})
    return len(target)


def init_backbone(backbone: nn.Module, tag: str, weights: str | None, enabled: bool) -> str:
    """Load local ImageNet weights into `backbone` when available; returns where they came from."""
    if not enabled:
        log.info("backbone %s: random init (pretrained disabled in the model config)", tag)
        return "random (disabled)"
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise InputError(path, f"pretrained weights for {tag} not found (set `weights: null` to search caches)")
    else:
        path = find_cached_weights(tag)
        if path is None:
            log.warning(
                "backbone %s: no local ImageNet weights (looked in %s); RANDOM INIT. Put %s.safetensors in "
                "%s (see its README) or set the model config's `weights` path for pretrained training.",
                tag, ", ".join(str(d) for d in (PROJECT_WEIGHTS_DIR, *hub_cache_dirs())), tag, PROJECT_WEIGHTS_DIR,
            )
            return "random (no local weights)"
    count = load_backbone_weights(backbone, path)
    log.info("backbone %s: loaded %d tensors from %s", tag, count, path)
    return str(path)
