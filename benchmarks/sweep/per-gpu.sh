#!/usr/bin/env bash
# The sweep benchmark as independent one-GPU sweeps on a host of several GPUs, each with its own GPU and its own 16
# cores (taskset), as on a one-GPU host of 16 cores:
#   benchmarks/sweep/per-gpu.sh SECONDS RUN split|copies OVERLAYS [snakemake arguments...]
# OVERLAYS: config files over config/config.yaml, colon-separated (the first one's grid.attn orders the split).
# split:  the cells divided between the GPUs (by implementation, in the order of its grid.attn), all into
#         results/RUN: one run measured in parts at once (the code before the GPU slots used one GPU per process).
# copies: every cell on every GPU, GPU i into results/RUN-gpuI: repeats of the same sweep, side by side.
# Each sweep's wall time goes to its folder (wall.txt) with its Snakemake log; the folders are packed into $OUT.
set -uo pipefail
deadline=$((SECONDS + $1)) run=$2 mode=$3
IFS=: read -r -a overlays <<<"$4"
shift 4
source tools/gpu-host/setup.sh || exit 1
n=$(nvidia-smi -L | wc -l)
mapfile -t attns < <(python3 -c \
    "import yaml,sys; print(*yaml.safe_load(open('${overlays[0]}'))['grid']['attn'], sep='\n')")
runs=()
for ((i = 0; i < n; i++)); do
    dir=/tmp/gpu$i name=$run
    rm -rf "$dir" && mkdir -p "$dir" && cp -r Snakefile workflow config profiles src benchmarks envs "$dir/"
    if [ "$mode" = split ]; then
        part=$(for ((j = i; j < ${#attns[@]}; j += n)); do printf '%s, ' "${attns[$j]}"; done)
        printf 'grid:\n  attn: [%s]\n' "${part%, }" >"$dir/part.yaml"
    else
        name=$run-gpu$i
        : >"$dir/part.yaml"
    fi
    echo "run: $name" >>"$dir/part.yaml"
    runs+=("$name")
    (cd "$dir" && mkdir -p "results/$name" && start=$(date +%s.%N) &&
        CUDA_VISIBLE_DEVICES=$i timeout -k 10 $((deadline - SECONDS - 20)) taskset -c $((16 * i))-$((16 * i + 15)) \
            snakemake --configfile "${overlays[@]}" part.yaml "$@" >"results/$name/snakemake-gpu$i.log" 2>&1
        echo "gpu $i exit $? wall_s $(awk "BEGIN{print $(date +%s.%N) - $start}")" |
            tee "results/$name/wall-gpu$i.txt") &
done
wait
for ((i = 0; i < n; i++)); do
    nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.max.sm,power.limit,memory.total --format=csv \
        -i "$i" >"/tmp/gpu$i/results/${runs[$i]}/gpu$i.csv"
    mkdir -p results && cp -r "/tmp/gpu$i/results/${runs[$i]}" results/ 2>/dev/null ||
        cp -rT "/tmp/gpu$i/results/${runs[$i]}" "results/${runs[$i]}"
done
printf '%s\n' "${runs[@]}" | sort -u | while read -r r; do
    rm -rf "results/$r/warmup" "results/$r/.gpulocks"; tar czf "$OUT/$r.tgz" "results/$r"
done
