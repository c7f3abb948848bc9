#!/usr/bin/env bash
# One part of a sweep on the GPU host, sized to fit a device call (their limit is 10 minutes):
#   tools/gpu-host/sweep.sh SECONDS RUN [snakemake arguments...]
# SECONDS bounds this whole script: it installs the carried wheels (tools/gpu-host/setup.sh), runs snakemake until
# SECONDS minus a margin for packing, stops it and every cell process it left, then packs results/RUN into
# $OUT/RUN.tgz. The cell in flight at the deadline leaves nothing (cells are written atomically), so the next call,
# with the same arguments, runs it again with every other missing cell: only missing cells run.
set -uo pipefail
deadline=$((SECONDS + $1)) run=$2
shift 2
source tools/gpu-host/setup.sh || exit 1
mkdir -p "results/$run"
log="results/$run/snakemake-$(date -u +%Y%m%dT%H%M%S).log"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.total --format=csv,noheader >"$log"
snakemake "$@" --unlock >>"$log" 2>&1  # a lock left by a call stopped at its limit (.snakemake/ stays on a warm host)
# Output goes to a file, not a pipe: a cell process that outlives a stopped snakemake would hold a pipe open.
# Every core and GPU of the host: warm-ups compile on the cores while each GPU measures one cell (README).
timeout -k 10 -s TERM $((deadline - SECONDS - 30)) snakemake "$@" --cores "$(nproc)" \
    --resources gpu="$(nvidia-smi -L | grep -c '^GPU')" >>"$log" 2>&1
echo "snakemake exit: $? (124 = stopped at the deadline)"
# Anchored at the interpreter: the command line that called this script may hold the same words.
pkill -KILL -f -- "^[^ ]*python[0-9.]* -m attnsweep( cell| warmup|\.attempt)" 2>/dev/null  # jobs the stop left
tail -n 40 "$log"  # one line per finished cell, then where the results are
tar czf "$OUT/$run.tgz" --exclude=warmup --exclude=.gpulocks "results/$run"
