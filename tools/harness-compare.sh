#!/usr/bin/env bash
# Issue "The study's own harness", on the GPU: the same cells with Composer's SpeedMonitor and our native loop.
# GPT-2 small, compiled, fp16, the study's batch sizes; pairs first so a time-out still leaves complete pairs.
# Usage (on the GPU host, after `source tools/device-setup.sh`): tools/harness-compare.sh OUTDIR
set -u
out=${1:?output folder}
mkdir -p "$out"
for T in 1024 512 2048; do
  for attn in sdpa fa2; do
    for harness in composer native; do
      /usr/bin/time -f "$harness $attn $T: %e s" python3 -m attnsweep cell --model small --attn "$attn" \
        --mode compiled --seq-len "$T" --batch-policy study --precision fp16 --harness "$harness" \
        --run h100-harness --out "$out/small-$T-$attn-$harness.json" 2>&1 | grep -E "tokens/s|: [0-9.]+ s$|error|unsupported"
    done
  done
done
