#!/usr/bin/env bash
# Two sweeps on one GPU host at once, each on its own GPUs and cores, the second with a patch applied to its code:
#   tools/gpu-host/two-sweeps.sh SECONDS PATCH GPUS_A CORES_A GPUS_B CORES_B RUN_A [ARGS_A...] -- RUN_B [ARGS_B...]
# Sweep A runs in the checkout, sweep B in a copy of it ($TMPDIR/two-sweeps-b) with PATCH applied (`git diff` output;
# `-` for none): e.g. one run finishing at the code its records were measured by while the next run starts at newer
# code, in one device call. Each is tools/gpu-host/sweep.sh SECONDS RUN ARGS... with `gpus=[...]` appended and its
# cores pinned (taskset), and packs its own $OUT/RUN.tgz. Sweep B's results/RUN_B keeps only what it measures.
# The two share one GPU-lock folder (results/RUN_A/.gpulocks; gpuslots.py): a measured window of either sweep stops
# the other's warm-ups and compilers as it stops its own, and windows take turns across both, as in one sweep. Their
# GPU lists must not overlap: a capped run's warm-ups share a GPU, an uncapped one's attempts need it alone.
set -uo pipefail
deadline=$((SECONDS + $1)) patch=$2 gpus_a=$3 cores_a=$4 gpus_b=$5 cores_b=$6
shift 6
args_a=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do args_a+=("$1"); shift; done
[ $# -gt 1 ] || { sed -n 2,3p "$0" >&2; exit 2; }
shift
run_a=${args_a[0]} run_b=$1
for g in ${gpus_a//,/ }; do
    [[ ",$gpus_b," != *",$g,"* ]] || { echo "two-sweeps.sh: GPU $g is in both sweeps' lists" >&2; exit 2; }
done
source tools/gpu-host/setup.sh || exit 1  # once, before both: two pip installs into /tmp/site would collide
copy=${TMPDIR:-/tmp}/two-sweeps-b
rm -rf "$copy" && cp -a . "$copy" || exit 1
if [ "$patch" != - ]; then
    (cd "$copy" && git apply "$OLDPWD/$patch") || { echo "two-sweeps.sh: $patch does not apply" >&2; exit 1; }
fi
mkdir -p "results/$run_a/.gpulocks" "$copy/results/$run_b"
rm -rf "$copy/results/$run_b/.gpulocks"
ln -s "$PWD/results/$run_a/.gpulocks" "$copy/results/$run_b/.gpulocks"
left=$((deadline - SECONDS))
# SWEEP_GPUS: each sweep's `gpu` resource is its own GPUs, not the host's (sweep.sh).
SWEEP_GPUS=$gpus_a taskset -c "$cores_a" bash tools/gpu-host/sweep.sh "$left" "${args_a[@]}" "gpus=[$gpus_a]" \
    >"$OUT/$run_a.out" 2>&1 &
(cd "$copy" && SWEEP_GPUS=$gpus_b taskset -c "$cores_b" bash tools/gpu-host/sweep.sh "$left" "$@" "gpus=[$gpus_b]") \
    >"$OUT/$run_b.out" 2>&1 &
wait
tail -n 15 "$OUT/$run_a.out" "$OUT/$run_b.out"
