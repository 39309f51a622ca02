"""A DVC remote round trip of real pipeline outputs (README "DVC remote"): a temporary DVC project with this
repo's cache settings runs the synth -> convert -> split stages with `idd-edge`, pushes to a local directory
remote, loses its cache and outputs, pulls them back, and gets every file byte for byte. On the way it checks
that the cache type of `.dvc/config` keeps one copy of each image on disk, not two."""

from __future__ import annotations

import configparser
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from idd_edge import config

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
DVC_YAML = """stages:
  synth:
    cmd: idd-edge synth data/synthetic --train 4 --val 2 --test 1 --size 64x36 --seed 0
    outs:
      - data/synthetic
  convert:
    cmd: idd-edge convert data/synthetic data/converted --encoding level2Id --report convert.json
    deps:
      - data/synthetic
    params:
      - convert
    outs:
      - data/converted
      - convert.json:
          cache: false
  split:
    cmd: idd-edge split data/synthetic data/converted data/splits --level level2
    deps:
      - data/synthetic
      - data/converted
    outs:
      - data/splits
"""


def _dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # dvc runs `idd-edge` from the venv
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _hashes(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def _project_cache_type() -> str:
    parser = configparser.ConfigParser(inline_comment_prefixes=("#",))
    parser.read(REPO / ".dvc" / "config")
    return parser["cache"]["type"]


def _cache_object(project: Path, path: Path) -> Path:
    digest = hashlib.md5(path.read_bytes()).hexdigest()  # DVC 3's content address
    return project / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]


def test_push_then_pull_from_a_local_remote_restores_the_outputs_exactly(tmp_path):
    project, remote = tmp_path / "project", tmp_path / "remote"
    project.mkdir()
    (project / "dvc.yaml").write_text(DVC_YAML)
    config.write_params(config.compose(["convert.workers=1"]), project / "params.yaml")
    _dvc(project, "init", "--no-scm", "-q")
    _dvc(project, "config", "core.analytics", "false")
    _dvc(project, "config", "cache.type", _project_cache_type())
    _dvc(project, "repro", "-q")
    produced = _hashes(project / "data")
    assert any(name.startswith("splits/IDDL2/train/images/") for name in produced)
    assert any(name.startswith("converted/gtFine/val/") for name in produced)
    # The raw image, its hard link in the split and the cache object are one file (ext4 has no reflinks).
    image = sorted((project / "data" / "splits" / "IDDL2" / "train" / "images").iterdir())[0]
    assert image.stat().st_ino == _cache_object(project, image).stat().st_ino and image.stat().st_nlink == 3

    _dvc(project, "remote", "add", "-d", "local", str(remote))
    _dvc(project, "push", "-q")
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache")
    _dvc(project, "pull", "-q")

    assert _hashes(project / "data") == produced
    assert "up to date" in _dvc(project, "status")  # nothing to re-run: the pulled outputs are the lock's
