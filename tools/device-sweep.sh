#!/usr/bin/env bash
# One part of a sweep on the GPU host, sized to fit a device call (their limit is 10 minutes):
#   tools/device-sweep.sh SECONDS RUN [snakemake arguments...]
# Installs the carried wheels (tools/device-setup.sh), runs snakemake under a deadline, then packs results/RUN into
# $OUT/RUN.tgz. The cell in flight at the deadline is stopped and leaves nothing (cells are written atomically), so
# the next call, with the same arguments, runs it again with every other missing cell: only missing cells run.
set -uo pipefail
seconds=$1 run=$2
shift 2
source tools/device-setup.sh || exit 1
mkdir -p "results/$run"
log="results/$run/snakemake-$(date -u +%Y%m%dT%H%M%S).log"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.total --format=csv,noheader | tee "$log"
timeout -s TERM "$seconds" snakemake "$@" --cores 1 --resources gpu=1 2>&1 | tee -a "$log" \
    | grep -E --line-buffered "^(Job|Finished|Error)|tokens/s|: (oom|unsupported|error|diverged)"
echo "snakemake exit: $? (124 = stopped at the deadline)"
tar czf "$OUT/$run.tgz" "results/$run"
