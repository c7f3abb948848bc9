#!/usr/bin/env bash
# The sweep benchmark on a GPU host with code that uses one GPU per Snakemake process (the "before" measurement):
#   benchmarks/sweep/run-split.sh SECONDS RUN
# The 12 cells of benchmarks/sweep/cells.yaml in two halves by implementation, each half an independent sweep on its
# own GPU and its own 16 cores (taskset), as on a one-GPU host of 16 cores. Both halves share code and settings, so
# their cells form one run; results/RUN is packed into $OUT/RUN.tgz with the Snakemake logs and nvidia-smi's view.
set -uo pipefail
deadline=$((SECONDS + $1)) run=$2
source tools/gpu-host/setup.sh || exit 1
nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.max.sm,power.limit,memory.total --format=csv \
    >"$OUT/gpus.csv"
halves=("naive, sdpa, sdpa_flash" "fa2, fa2_graphbreak, flex")
for i in 0 1; do
    rm -rf "/tmp/half$i" && mkdir -p "/tmp/half$i" &&
        cp -r Snakefile workflow config profiles src benchmarks envs "/tmp/half$i/"
    printf 'grid:\n  attn: [%s]\n' "${halves[$i]}" >"/tmp/half$i/half.yaml"
    (cd "/tmp/half$i" && start=$(date +%s.%N) &&
        CUDA_VISIBLE_DEVICES=$i timeout -k 10 $((deadline - SECONDS - 30)) taskset -c $((16 * i))-$((16 * i + 15)) \
            snakemake --cores 1 --resources gpu=1 --configfile benchmarks/sweep/cells.yaml half.yaml \
            --config run="$run" >"$OUT/snakemake-half$i.log" 2>&1
        echo "half $i exit $? wall_s $(awk "BEGIN{print $(date +%s.%N) - $start}")" | tee "$OUT/wall-half$i.txt") &
done
wait
mkdir -p "results/$run"
for i in 0 1; do cp -rn "/tmp/half$i/results/$run/." "results/$run/"; done
cp "$OUT"/*.log "$OUT"/*.txt "$OUT/gpus.csv" "results/$run/" 2>/dev/null
tar czf "$OUT/$run.tgz" "results/$run"
