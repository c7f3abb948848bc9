#!/usr/bin/env bash
# The same cells measured two ways at once on a host of two GPUs, each sweep with its own GPU and 16 cores:
#   benchmarks/sweep/pair.sh SECONDS RUN OVERLAYS [snakemake arguments...]
# GPU 0: two-stage cells (warm-up, then timed) into results/RUN-warm; GPU 1: cold cells (warmup.enabled false) into
# results/RUN-cold. OVERLAYS as for per-gpu.sh. Each folder gets its wall time, Snakemake log and GPU; packed into $OUT.
set -uo pipefail
deadline=$((SECONDS + $1)) run=$2
IFS=: read -r -a overlays <<<"$3"
shift 3
source tools/gpu-host/setup.sh || exit 1
for i in 0 1; do
    dir=/tmp/pair$i name=$run-$([ $i = 0 ] && echo warm || echo cold)
    rm -rf "$dir" && mkdir -p "$dir" && cp -r Snakefile workflow config profiles src benchmarks envs "$dir/"
    printf 'run: %s\nwarmup: {enabled: %s}\n' "$name" "$([ $i = 0 ] && echo true || echo false)" >"$dir/part.yaml"
    (cd "$dir" && mkdir -p "results/$name" && start=$(date +%s.%N) &&
        CUDA_VISIBLE_DEVICES=$i timeout -k 10 $((deadline - SECONDS - 20)) taskset -c $((16 * i))-$((16 * i + 15)) \
            snakemake --configfile "${overlays[@]}" part.yaml "$@" >"results/$name/snakemake.log" 2>&1
        echo "gpu $i exit $? wall_s $(awk "BEGIN{print $(date +%s.%N) - $start}")" | tee "results/$name/wall.txt"
        nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.max.sm,power.limit,memory.total --format=csv \
            -i $i >"results/$name/gpu.csv"
        rm -rf "results/$name/warmup" "results/$name/.gpulocks"
        tar czf "$OUT/$name.tgz" "results/$name") &
done
wait
