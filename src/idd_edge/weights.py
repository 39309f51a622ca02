"""`idd-edge weights fetch`: download the pretrained weights a real run starts from (not a pipeline stage).

The pipeline itself never contacts the network: it reads weights from the project's folders (see
`models/pretrained/*/README.md`). This command fills them, for a user with internet:

* each semantic backbone's ImageNet weights: the `model.safetensors` of the Hugging Face repo
  `timm/<pretrained_tag>` (the tag of each model config in params.yaml, or of every config in conf/model/
  with `--all-models`), through `huggingface_hub` (its cache, token and `HF_HUB_OFFLINE` apply), copied to
  `models/pretrained/seg/<pretrained_tag>.safetensors`, the name `seg.pretrained` looks for;
* YOLOv8n-seg's COCO checkpoint `yolov8n-seg.pt` through Ultralytics' own downloader (its GitHub release
  assets) to `yolo.train.pretrained` (`models/pretrained/yolo/yolov8n-seg.pt`).

Then each file is tracked with `dvc add` (or the exact command is printed with `--no-dvc-add`, or outside
a DVC repo). A weight that cannot be fetched (offline, no such repo, ...) is reported with the reason and
where to put the file by hand; the others are still fetched; the exit status is 1.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idd_edge import atomic

log = logging.getLogger(__name__)

TIMM_HUB_FILE = "model.safetensors"
SEG_WEIGHTS_SUFFIX = ".safetensors"
MODEL_CONFIG_DIR = Path("conf/model")


@dataclass(frozen=True)
class Fetched:
    """One weight file: where it went, or why it could not be fetched and where to put it by hand."""

    name: str
    source: str
    target: Path
    error: str | None = None


def timm_tags(models: Iterable[dict[str, Any]]) -> list[str]:
    """The distinct timm `pretrained_tag`s of model configs, in first-seen order."""
    tags: list[str] = []
    for model in models:
        tag = model.get("pretrained_tag")
        if tag and tag not in tags:
            tags.append(str(tag))
    return tags


def fetch_timm(tag: str, out_dir: Path, cache_dir: Path | None = None) -> Fetched:
    """`timm/<tag>`'s model.safetensors via huggingface_hub, copied atomically to `out_dir/<tag>.safetensors`."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled
    from safetensors import SafetensorError, safe_open

    repo = f"timm/{tag}"
    target = out_dir / f"{tag}{SEG_WEIGHTS_SUFFIX}"
    source = f"https://huggingface.co/{repo} ({TIMM_HUB_FILE})"
    try:
        downloaded = Path(hf_hub_download(repo, TIMM_HUB_FILE, cache_dir=cache_dir))
        with safe_open(str(downloaded), framework="pt") as weights:  # a truncated or foreign file fails here
            if not list(weights.keys()):
                raise ValueError("holds no tensors")
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, HFValidationError, OSError,
            ValueError, SafetensorError) as exc:
        return Fetched(tag, source, target, _first_line(exc))
    _copy_atomic(downloaded, target)
    return Fetched(tag, source, target)


def fetch_yolo(name: str, target: Path) -> Fetched:
    """Ultralytics' release asset `name` (e.g. yolov8n-seg.pt) via its own downloader, to `target`."""
    from idd_edge.yolo.offline import import_ultralytics

    import_ultralytics()
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    source = f"Ultralytics release asset {name} (github.com/ultralytics/assets)"
    if name not in GITHUB_ASSETS_NAMES:
        return Fetched(name, source, target, f"{name} is not one of Ultralytics' release assets")
    if target.is_file():
        return Fetched(name, source, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.download")
    staging.mkdir(exist_ok=True)
    try:  # downloads to a .part file first and publishes it only after its size is checked
        downloaded = Path(attempt_download_asset(str(staging / name)))
        if not downloaded.is_file():
            raise ConnectionError(f"Ultralytics' downloader did not produce {downloaded}")
        downloaded.replace(target)
    except (ConnectionError, OSError) as exc:
        return Fetched(name, source, target, _first_line(exc))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Fetched(name, source, target)


def dvc_add_command(paths: Sequence[Path]) -> list[str]:
    return ["dvc", "add", *(str(path) for path in paths)]


def dvc_add(paths: Sequence[Path]) -> None:
    """Track `paths` with `dvc add` (the venv's dvc), failing with DVC's own message."""
    from idd_edge.errors import StageError

    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    done = subprocess.run([dvc, *dvc_add_command(paths)[1:]], capture_output=True, text=True)
    if done.returncode:
        raise StageError(f"`{' '.join(dvc_add_command(paths))}` failed: {(done.stderr or done.stdout).strip()}")


def _copy_atomic(source: Path, target: Path) -> None:
    with source.open("rb") as reader, atomic.atomic_open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, length=16 * 2**20)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def report(results: Sequence[Fetched]) -> str:
    """One line per weight: fetched to PATH, or what failed and where to put the file by hand."""
    lines = []
    for result in results:
        if result.error is None:
            lines.append(f"fetched {result.name} -> {result.target}")
        else:
            lines.append(f"could not fetch {result.name} from {result.source}: {result.error}\n"
                         f"    download it on a machine with internet and place it at {result.target}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("weights", help="fetch pretrained weights (timm backbones, YOLOv8n-seg COCO)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser("fetch", help="download ImageNet backbones (Hugging Face) and yolov8n-seg.pt (Ultralytics)")
    fetch.add_argument("--params", type=Path, default=Path("params.yaml"))
    fetch.add_argument("--all-models", action="store_true",
                       help=f"every model config in {MODEL_CONFIG_DIR}/, not only those params.yaml uses")
    fetch.add_argument("--only", choices=("seg", "yolo"), help="fetch only the semantic or only the YOLO weights")
    fetch.add_argument("--no-dvc-add", action="store_true", help="print the `dvc add` command instead of running it")
    parser.set_defaults(handler=_run)


def _model_configs(params: dict[str, Any], all_models: bool) -> list[dict[str, Any]]:
    if all_models:
        import yaml

        return [yaml.safe_load(path.read_text()) or {} for path in sorted(MODEL_CONFIG_DIR.glob("*.yaml"))]
    models = params.get("models", {})
    return [models.get("teacher", {}), *models.get("students", {}).values()]


def _run(args: argparse.Namespace) -> int:
    from idd_edge import config
    from idd_edge.seg.pretrained import PROJECT_WEIGHTS_DIR, hub_cache_dirs

    params = config.load_params(args.params)
    results: list[Fetched] = []
    if args.only in (None, "seg"):
        cache_dir = hub_cache_dirs()[0]
        results += [fetch_timm(tag, PROJECT_WEIGHTS_DIR, cache_dir) for tag in timm_tags(_model_configs(params, args.all_models))]
    if args.only in (None, "yolo"):
        target = Path(config.section(params, "yolo.train.pretrained", args.params))
        results.append(fetch_yolo(target.name, target))
    print(report(results))
    fetched = [result.target for result in results if result.error is None]
    if fetched:
        command = " ".join(dvc_add_command(fetched))
        if args.no_dvc_add or not Path(".dvc").is_dir():
            print(f"track them with: {command}")
        else:
            dvc_add(fetched)
            print(f"tracked with: {command}")
    return 0 if all(result.error is None for result in results) else 1
