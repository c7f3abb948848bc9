#!/usr/bin/env bash
# The cell harness's own overhead against a bare training loop, on the GPU host:
#   tools/gpu-host/overhead.sh SECONDS ROUNDS OUTDIR [cell arguments...]
# ROUNDS rounds, back to back: one `attnsweep cell` (fixed batch, no pipeline) and then tools/minimal_loop.py with the
# same model, context, attention, batch, mode and precision. Alternating (ABAB) spreads drift over both. Each cell's
# JSON and each minimal loop's line go to OUTDIR; a round is not started unless SECONDS leaves room for one.
set -uo pipefail
deadline=$((SECONDS + $1)) rounds=$2 outdir=$3
shift 3
args=("$@")  # e.g. --model small --seq-len 512 --attn sdpa --mode compiled --precision fp16 --batch-size 32
source tools/gpu-host/setup.sh || exit 1
mkdir -p "$outdir"
for ((i = 1; i <= rounds; i++)); do
    ((deadline - SECONDS > 100)) || { echo "round $i not started: too little time left"; break; }
    timeout 100 python3 -m attnsweep cell "${args[@]}" --batch-policy fixed --optimizer adamw --harness native \
        --device cuda --run overhead --out "$outdir/cell-$i.json" >"$outdir/cell-$i.log" 2>&1
    echo "round $i cell exit $?: $(grep -o '"tokens_per_sec": [0-9.]*' "$outdir/cell-$i.json")"
    timeout 60 python3 tools/minimal_loop.py "${args[@]}" --device cuda 2>"$outdir/minimal-$i.log" |
        tee -a "$outdir/minimal.txt"
done
