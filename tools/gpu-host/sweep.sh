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
# The part's start: its log's and wall file's name (report.py reads the part as [start, start + wall]).
start=$(date +%s.%N)
stamp=$(date -u -d "@${start%.*}" +%Y%m%dT%H%M%S)
log="results/$run/snakemake-$stamp.log"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.total --format=csv,noheader >"$log"
snakemake "$@" --unlock >>"$log" 2>&1  # a lock left by a call stopped at its limit (.snakemake/ stays on a warm host)
# Output goes to a file, not a pipe: a cell process that outlives a stopped snakemake would hold a pipe open.
# Every core and GPU of the host: warm-ups compile on the cores while each GPU measures one cell (README).
timeout -k 10 -s TERM $((deadline - SECONDS - 30)) snakemake "$@" --cores "$(nproc)" \
    --resources gpu="$(nvidia-smi -L | grep -c '^GPU')" >>"$log" 2>&1
code=$?
echo "snakemake exit: $code (124 = stopped at the deadline; 137 = killed 10 s after that, when it had not stopped)"
# This part's wall time, as benchmarks/sweep/report.py reads it (one file per part).
echo "exit $code wall_s $(awk "BEGIN{print $(date +%s.%N) - $start}")" >"results/$run/wall-$stamp.txt"
# Jobs the stop left (only then: another sweep may share the host, as in tools/gpu-host/two-sweeps.sh); a snakemake
# killed (137) could stop none of them. Anchored at the interpreter: the command line that called this script may hold
# the same words.
case $code in 124 | 137) pkill -KILL -f -- "^[^ ]*python[0-9.]* -m attnsweep( cell| warmup|\.attempt)" 2>/dev/null ;; esac
tail -n 40 "$log"  # one line per finished cell, then where the results are
# The warm-ups' compile caches stay (large, and used up); their logs and benchmarks (logs/warmup/, benchmarks/warmup/)
# go with the cells.
tar czf "$OUT/$run.tgz" --exclude="results/$run/warmup" --exclude="results/$run/.gpulocks" \
    --exclude="results/$run/.rerun" "results/$run"
