#!/usr/bin/env bash
# One sweep of the benchmark's cells on chosen GPUs and cores, stopped at a deadline, packed into $OUT:
#   benchmarks/sweep/sweep.sh SECONDS RUN GPUS CORES OVERLAYS [snakemake arguments...]
# GPUS: CUDA_VISIBLE_DEVICES of the sweep (e.g. 0 or 0,1); CORES: its taskset list (e.g. 0-15); OVERLAYS as for
# per-gpu.sh. The sweep runs in a fresh copy of the checkout (/tmp/sweep-RUN), as a fresh clone would; its wall
# time, Snakemake log and GPUs go into results/RUN, which is packed into $OUT/RUN.tgz (the warm-up caches are not).
# A results/RUN already in the checkout (a part unpacked from an earlier call) is copied in: only missing cells run.
set -uo pipefail
deadline=$((SECONDS + $1)) run=$2 gpus=$3 cores=$4
IFS=: read -r -a overlays <<<"$5"
shift 5
[ -n "${PYTHONPATH:-}" ] || source tools/gpu-host/setup.sh || exit 1
dir=/tmp/sweep-$run
rm -rf "$dir" && mkdir -p "$dir" && cp -r Snakefile workflow config profiles src benchmarks envs "$dir/"
echo "run: $run" >"$dir/part.yaml"
[ -d "results/$run" ] && mkdir -p "$dir/results" && cp -r "results/$run" "$dir/results/"
cd "$dir" && mkdir -p "results/$run"
part=$(ls "results/$run"/wall*.txt 2>/dev/null | wc -l)
start=$(date +%s.%N)
CUDA_VISIBLE_DEVICES=$gpus timeout -k 10 $((deadline - SECONDS - 15)) taskset -c "$cores" \
    snakemake --configfile "${overlays[@]}" part.yaml "$@" \
        >"results/$run/snakemake$([ "$part" = 0 ] || echo "-$part").log" 2>&1
echo "gpus $gpus cores $cores exit $? wall_s $(awk "BEGIN{print $(date +%s.%N) - $start}")" |
    tee "results/$run/wall$([ "$part" = 0 ] || echo "-$part").txt"
nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.max.sm,power.limit,memory.total --format=csv \
    -i "$gpus" >"results/$run/gpus.csv"
cp results/"$run"/.preload/*.log "results/$run/" 2>/dev/null
rm -rf "results/$run/warmup" "results/$run/.gpulocks" "results/$run/.preload" "results/$run/.rerun"
tar czf "$OUT/$run.tgz" "results/$run"
