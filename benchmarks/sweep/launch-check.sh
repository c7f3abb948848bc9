#!/usr/bin/env bash
# Does the way a timed cell's process starts change what it measures? On an idle GPU host: one warm-up of a
# host-sensitive cell (GPT-2 small, naive, 1024, the study's batch), then its timed run from that cache twice in a
# process of its own and twice preloaded (attnsweep.preload), alternately, then the cell cold. One line per run into
# $OUT/diag.txt (tokens/s, median step, the optimizer step's host time, how the process began); records into $OUT.
#   bash benchmarks/sweep/launch-check.sh
source tools/gpu-host/setup.sh >/dev/null 2>&1
cd /tmp && A="--model small --attn naive --mode compiled --seq-len 1024 --batch-policy study --memory-cap-gib 12"
A="$A --device cuda"
s() { python -c "
import json,sys,statistics as st
d=json.load(open('$1')); t=d['step_times_s']; k=[x for x in d['kernels']['top'] if 'Optimizer' in x['name']]
print('$1', d['status'], round(d['tokens_per_sec']), 'median step ms %.2f'%(1000*st.median(t[1:])),
      'optimizer span us', k[0]['time_us'] if k else None, d['env']['launch'], 'dur', round(d['duration_s'],1))" |
    tee -a $OUT/diag.txt; }
python -m attnsweep warmup $A --cache C --out w.json 2>>$OUT/log.txt
for i in 1 2; do
  python -m attnsweep cell $A --warmup w.json --cache C --out own$i.json 2>>$OUT/log.txt; s own$i.json
  python -m attnsweep cell $A --warmup w.json --cache C --out pre$i.json --preload P 2>>$OUT/log.txt; s pre$i.json
done
timeout 70 python -m attnsweep cell $A --out cold.json 2>>$OUT/log.txt; s cold.json
cp P/*.log $OUT/ 2>/dev/null; cp *.json $OUT/
