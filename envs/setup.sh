#!/usr/bin/env bash
# Set up attnsweep in ./.venv: PyTorch, the package with its pipeline and test tools, and Composer (no pins).
# torch 2.14.1 + torchvision 0.29.1 is the pair Composer 0.32.1 was tested with here (Composer needs torchvision).
# One line per step; pip's own output goes to .venv/setup.log, shown (its end) when a step fails.
# Idempotent: a second run only checks, and installs only what changed.
#
# Size: from PyPI, torch for Linux is its CUDA build, about 5 GB installed (the CUDA libraries and Triton included),
# also on a machine without a GPU. On such a machine the CPU build is about 0.7 GB:
#     TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash envs/setup.sh
# (the same torch version, from PyTorch's own index of CPU wheels; the rest still comes from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH="torch==2.14.1"
TORCHVISION="torchvision==0.29.1"
LOG=.venv/setup.log

# step DESCRIPTION COMMAND...: one line; on failure the end of the log and a non-zero exit.
step() {
    local what=$1
    shift
    printf 'setup: %s ... ' "$what"
    local start=$SECONDS
    if "$@" >>"$LOG" 2>&1; then
        echo "ok ($((SECONDS - start)) s)"
    else
        echo "FAILED"
        echo "setup: the last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

if [ ! -x .venv/bin/python ]; then
    mkdir -p .venv
    : >"$LOG"
    step "Python environment .venv ($("$PY" --version 2>&1))" "$PY" -m venv .venv
fi
echo "== $(date -u '+%Y-%m-%d %H:%M:%S') envs/setup.sh" >>"$LOG"

torch_index=()
[ -n "${TORCH_INDEX_URL:-}" ] && torch_index=(--index-url "$TORCH_INDEX_URL")
if .venv/bin/python -c "import sys, torch, torchvision
same = [v.split('+')[0] for v in (torch.__version__, torchvision.__version__)] == sys.argv[1:3]
sys.exit(not same)" \
    "${TORCH#*==}" "${TORCHVISION#*==}" >>"$LOG" 2>&1; then
    echo "setup: $TORCH and $TORCHVISION already installed"
else
    step "$TORCH, $TORCHVISION from ${TORCH_INDEX_URL:-PyPI (the CUDA build: a few GB, minutes)}" \
        pip install "${torch_index[@]}" "$TORCH" "$TORCHVISION"
fi

# The package is installed editable: its code is this checkout. Reinstalled only when pyproject.toml changed.
stamp=".venv/.attnsweep-pyproject.sha256"
if sha256sum -c --status "$stamp" 2>/dev/null && .venv/bin/python -c "import attnsweep, snakemake" 2>/dev/null; then
    echo "setup: attnsweep and its tools (snakemake, pytest) already installed"
else
    step "attnsweep (editable) with snakemake, pandas, matplotlib, pytest" pip install -e ".[dev]"
    sha256sum pyproject.toml >"$stamp"
fi

PYTHON=.venv/bin/python SETUP_LOG="$LOG" bash envs/install-composer.sh
# Snakemake's SLURM executor (pyproject's `slurm` extra) for profiles/slurm. Its releases for Snakemake 9 ask
# numpy>=2.4.5 (2.7+) or pandas<3 (2.6); it runs on the numpy Composer caps at <2.3, so it comes without its pins,
# with its own two dependencies (the interfaces, pandas and pyyaml are Snakemake's and the package's already).
if .venv/bin/python -c "import snakemake_executor_plugin_slurm, snakemake_executor_plugin_slurm_jobstep" \
    2>/dev/null; then
    echo "setup: Snakemake's SLURM executor already installed"
else
    step "Snakemake's SLURM executor (profiles/slurm)" pip install --no-deps \
        "snakemake-executor-plugin-slurm>=2.7,<3" "snakemake-executor-plugin-slurm-jobstep>=0.6,<1" \
        "throttler>=1.2.3,<2"
fi
echo "setup: done. Run .venv/bin/snakemake --cores 1 --resources gpu=1 (or activate: source .venv/bin/activate)"
