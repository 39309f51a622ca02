# idd-edge: the two commands of the README bootstrap their own environment from uv.lock.
#   make repro   -> dvc repro of the default pipeline (synthetic IDD, CPU)
#   make test    -> the test suite
# Needs only python3 (3.10+), git and make: uv is installed into .tools/ from PyPI, then `uv sync --frozen`
# installs exactly the versions in uv.lock into .venv/.

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
# The Sony IMX500 toolchain (MCT + imxconv-pt) pins torch/onnx versions of its own: a second locked
# environment (tools/imx500/uv.lock) that `idd-edge compile-imx500` finds here (or at $IDD_EDGE_IMX500_ENV).
IMX500_ENV := .venv-imx500
PYTEST_ARGS ?=
# OpenMP threads that spin while waiting make CPU training ~10x slower when processes share 2 cores
# (DDP tests, DataLoader workers); the user's own setting wins.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: env imx500-env repro test params bench clean-env

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# --compile-bytecode: these machines set PYTHONDONTWRITEBYTECODE, so without .pyc files every stage and
# test process compiled torch, lightning and timm from source again (importing lightning took 18 s instead
# of 6; ~31 stages import them). Compiling once costs ~30 s on the first sync, ~1 s later.
env: $(UV)
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)

# imxconv-pt needs Java 17: Debian's runtime is installed where apt-get is there and we are root (as .ci/run
# does for openssh). Outside CI a failed install only warns: compile-imx500 then writes a status saying why.
imx500-env: $(UV)
	@if ! command -v java >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" -eq 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; fi
	@UV_PROJECT_ENVIRONMENT="$(CURDIR)/$(IMX500_ENV)" $(UV) sync --frozen --compile-bytecode --project tools/imx500 \
	  --python $(PYTHON) || { if [ -n "$$CI" ]; then exit 1; fi; \
	  echo "warning: IMX500 toolchain not installed; compile-imx500 will write a status saying so" >&2; }

# `idd-edge repro` is `dvc repro` with independent stages side by side (one per core, each on
# cores/jobs threads; see src/idd_edge/repro.py): on 2 cores the default pipeline takes 990-1121 s from a
# fresh clone, where one stage at a time on both threads took 1523-1601 s. A plain `dvc repro` trains the
# same models (training fixes its thread count). Stages call `idd-edge`, so the environment's bin/ goes
# first on PATH (no activation needed).
repro: env imx500-env
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/idd-edge repro

params: env
	$(VENV)/bin/idd-edge params

# pytest exits 5 when it collects no test; that is reported, not hidden, but is not a failure of the tree.
test: env imx500-env
	@$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

bench: env
	@for b in benchmarks/*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

clean-env:
	rm -rf $(TOOLS) $(VENV) $(IMX500_ENV)
