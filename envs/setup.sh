#!/usr/bin/env bash
# Set up attnsweep in ./.venv: PyTorch, the package with its pipeline and test tools, and Composer (no pins).
# torch 2.14.1 + torchvision 0.29.1 is the pair Composer 0.32.1 was tested with here (Composer needs torchvision).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
PYTHON=.venv/bin/python bash envs/install-composer.sh
