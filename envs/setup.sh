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
# Snakemake's SLURM executor (pyproject's `slurm` extra) for profiles/slurm. Its releases for Snakemake 9 ask
# numpy>=2.4.5 (2.7+) or pandas<3 (2.6); it runs on the numpy Composer caps at <2.3, so it comes without its pins,
# with its own two dependencies (the interfaces, pandas and pyyaml are Snakemake's and the package's already).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    "snakemake-executor-plugin-slurm>=2.7,<3" "snakemake-executor-plugin-slurm-jobstep>=0.6,<1" "throttler>=1.2.3,<2"
.venv/bin/python -c "import snakemake_executor_plugin_slurm, snakemake_executor_plugin_slurm_jobstep"
