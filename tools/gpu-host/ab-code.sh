#!/usr/bin/env bash
# A candidate change of the cell code against the checkout's, on the GPU host:
#   tools/gpu-host/ab-code.sh SECONDS ROUNDS OUTDIR CANDIDATE_SRC [cell arguments...]
# CANDIDATE_SRC is a copy of src/ with the change, carried in an ignored folder (made here with, e.g.,
# `git archive --prefix=candidate/ cell-next src | tar x -C .fa4wheels`: .fa4wheels/candidate/src). ROUNDS rounds,
# back to back: one cold `attnsweep cell` with the checkout's src/, then one with CANDIDATE_SRC, each in its own
# process, with the same arguments (ABAB spreads drift over both). Each record goes to OUTDIR (base-N.json,
# candidate-N.json, with the code hash that measured it inside) and a line per record to OUTDIR/ab.txt. A round is
# not started unless SECONDS leaves room for one as long as the last (CELL_TIMEOUT a cell, default 150 s, before the
# first). Wheels come from setup.sh: FlashAttention-4's cells need the call that installed them (fa4-wheels.sh) first.
set -uo pipefail
deadline=$((SECONDS + $1)) rounds=$2 outdir=$3 candidate=$4
shift 4
args=("$@")  # e.g. --model medium --seq-len 1024 --attn fa4_graphbreak --mode compiled_cudagraphs --device cuda ...
[ -f "$candidate/attnsweep/cell.py" ] || {
    echo "ab-code.sh: $candidate is not a copy of src/ (it has no attnsweep/cell.py)" >&2
    exit 2
}
source tools/gpu-host/setup.sh || exit 1
base_path=$PYTHONPATH
candidate_path=${PYTHONPATH/"$PWD/src"/$(realpath "$candidate")}
[ "$candidate_path" != "$base_path" ] || { echo "ab-code.sh: setup.sh did not put $PWD/src on PYTHONPATH" >&2; exit 1; }
limit=${CELL_TIMEOUT:-150}
round_s=$((2 * limit))
mkdir -p "$outdir"
for ((i = 1; i <= rounds; i++)); do
    if ((deadline - SECONDS <= round_s)); then
        echo "round $i not started: too little time left" | tee -a "$outdir/ab.txt"
        break
    fi
    start=$SECONDS
    for side in base candidate; do
        [ $side = base ] && path=$base_path || path=$candidate_path
        PYTHONPATH=$path timeout "$limit" python3 -m attnsweep cell "${args[@]}" --run ab-code \
            --out "$outdir/$side-$i.json" >"$outdir/$side-$i.log" 2>&1
        rc=$?
        echo "$side-$i exit $rc: $(python3 -c 'import json, sys
r = json.load(open(sys.argv[1])); w = r.get("window_conditions") or {}
print(r["status"], "tokens/s", r.get("tokens_per_sec"), "gc", w.get("gc"), "code",
      r["env"]["code"]["source_sha256"][:8])' "$outdir/$side-$i.json" 2>&1 | tail -1)" | tee -a "$outdir/ab.txt"
    done
    round_s=$((SECONDS - start))
done
