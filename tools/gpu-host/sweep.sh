#!/usr/bin/env bash
# One part of a sweep on the GPU host, sized to fit a device call (their limit is 10 minutes):
#   tools/gpu-host/sweep.sh SECONDS RUN [snakemake arguments...]
#   SWEEP_WAITING_ONLY=1 tools/gpu-host/sweep.sh SECONDS RUN [snakemake arguments...]   # only the waiting timed jobs
# SECONDS bounds this whole script: it installs the carried wheels (tools/gpu-host/setup.sh), runs snakemake until
# SECONDS minus a margin for packing, stops it and every cell process it left, then packs results/RUN into
# $OUT/RUN.tgz. The cell in flight at the deadline leaves nothing (cells are written atomically), so the next call,
# with the same arguments, runs it again with every other missing cell: only missing cells run.
# Through the part, $OUT/RUN.tgz is also packed after each new cell record: a call stopped from outside before its
# end (the device tool stops a command at its time limit and returns what $OUT holds) still brings back every cell
# it finished.
set -uo pipefail
deadline=$((SECONDS + $1)) run=$2
shift 2
# A call sent before the previous call's tarball was unpacked into the checkout begins from an older tree: on a host
# kept warm it would measure again what the last part measured, and its tarball would lack that part's records. Each
# part leaves its stamp on the host in an ignored file (results/RUN/.last-part: kept between calls on a warm host,
# not packed); a checkout without that part's wall file is refused before anything runs. `rm` the file in the
# command to sweep from an older tree on purpose.
last_part=results/$run/.last-part
last_wall=results/$run/wall-$(cat "$last_part" 2>/dev/null).txt
if [ -s "$last_part" ] && [ ! -e "$last_wall" ]; then
    echo "sweep.sh: this host's last part of $run ($last_wall) is not in the checkout: unpack its tarball" \
        "(tools/gpu-host/device-tree.sh unpack), then call again" >&2
    exit 3
fi
source tools/gpu-host/setup.sh || exit 1
# SWEEP_WAITING_ONLY=1: a part that only measures (waiting-targets.sh). None waiting: exit 4, nothing runs.
if [ -n "${SWEEP_WAITING_ONLY:-}" ]; then
    source tools/gpu-host/waiting-targets.sh
    waiting_targets sweep.sh "$run" || exit
    set -- "${targets[@]}" "$@"
fi
mkdir -p "results/$run"
# The part's start: its log's and wall file's name (report.py reads the part as [start, start + wall]).
start=$(date +%s.%N)
stamp=$(date -u -d "@${start%.*}" +%Y%m%dT%H%M%S)
log="results/$run/snakemake-$stamp.log"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.total --format=csv,noheader >"$log"
# A lock is left by a call killed at its limit (.snakemake/ stays on a warm host). Removed as `snakemake --unlock`
# removes it (the whole folder), without --unlock's reading of the whole workflow first: 12 s of a part, measured.
# This call owns the checkout: no other Snakemake can hold a lock in it.
rm -rf .snakemake/locks
# The GPUs' clocks, temperature, power and clock-event (throttle) reasons once a second through the part, which
# benchmarks/sweep/report.py joins to each cell's measured window: the same cell measured on two H200s differs by a
# few percent, and a record alone cannot say why. nvidia-smi only reads NVML counters, no work on any GPU, so it may
# run through the timed windows (nothing else may). Its header names the columns for the reader. TZ=UTC: its
# timestamps are local time without a zone, and the reader takes them as UTC (the hosts run UTC anyway).
# A driver that does not know a field refuses the whole query at once (exit status non-zero, the message on its
# output): gpu_fields tries the reasons under their name, then under the older one (clocks_throttle_reasons), then
# goes without them. The sampler cannot fail or hold up the part: the probe runs in its background process (snakemake
# starts at once), both run under timeouts (none outlives the deadline), its errors go to gpu-STAMP.err (removed when
# empty), and it is stopped as soon as snakemake ends, before the packing.
gpu_fields() {
    local fields=timestamp,index,uuid,clocks.sm,clocks.mem,temperature.gpu,power.draw reasons
    for reasons in clocks_event_reasons.active clocks_throttle_reasons.active; do
        if timeout 20 nvidia-smi --query-gpu="$fields,$reasons" --format=csv,nounits >/dev/null 2>&1; then
            echo "$fields,$reasons"
            return
        fi
    done
    echo "$fields"
}
TZ=UTC timeout $((deadline - SECONDS)) nvidia-smi --query-gpu="$(gpu_fields)" --format=csv,nounits -lms 1000 \
    >"results/$run/gpu-$stamp.csv" 2>"results/$run/gpu-$stamp.err" &
sampler=$!
# Output goes to a file, not a pipe: a cell process that outlives a stopped snakemake would hold a pipe open.
# Every core and GPU of the host: warm-ups compile on the cores while each GPU measures one cell (README).
# Snakemake is stopped 30 s before the part's end (for the packing); a job expected to end after that does not start
# (ATTNSWEEP_DEADLINE, README), so the part ends early instead of spending its last minutes on a job it would cut off.
stop_s=$((deadline - SECONDS - 30))
export ATTNSWEEP_DEADLINE=$(($(date +%s) + stop_s))
# The `gpu` resource is how many GPUs this sweep's jobs may hold at once: the host's, or those of SWEEP_GPUS (a
# comma-separated list, as two-sweeps.sh gives each of its sweeps with `gpus=[...]`). More than the sweep has would
# let an uncapped warm-up take a GPU turn that a finished warm-up's timed job should have (RunPlan.warmup_gpus).
if [ -n "${SWEEP_GPUS:-}" ]; then gpu_count=$(awk -F, '{print NF}' <<<"$SWEEP_GPUS"); else
    gpu_count=$(nvidia-smi -L | grep -c '^GPU'); fi
# pack NAME: results/RUN into $OUT/RUN.tgz, written under a temporary NAME in $OUT and renamed over it, so that
# $OUT/RUN.tgz is whole whenever the part is stopped. The warm-ups' compile caches stay (large, and used up); their
# logs and benchmarks (logs/warmup/, benchmarks/warmup/) go with the cells. tar's status 1 (a file, such as the
# progress log, changed while it was read) still leaves a whole archive.
pack() {
    tar czf "$OUT/.$run.$1.tgz" --exclude="results/$run/warmup" --exclude="results/$run/.gpulocks" \
        --exclude="results/$run/.rerun" --exclude="$last_part" "results/$run"
    [ $? -le 1 ] && mv -f "$OUT/.$run.$1.tgz" "$OUT/$run.tgz"
}
# wall STATUS: this part's wall file (one per part, as benchmarks/sweep/report.py reads it), up to now.
wall() { echo "exit $1 wall_s $(awk "BEGIN{print $(date +%s.%N) - $start}")" >"results/$run/wall-$stamp.txt"; }
# The run's cell records as a checksum of their names and times: any record written, replaced or removed changes it.
records() { find "results/$run/cells" "results/$run/superseded" -name '*.json' -printf '%p %T@\n' 2>/dev/null |
    sort | cksum; }
# The snapshots: every 10 s, if the run's records changed since the last look, a wall file up to now (report.py reads
# a part as [start, start + wall]; the part's end replaces it) and the packing. At the lowest priority: gzip takes one
# core for under a second (0.4 s for results/h200's 25 MB), and the warm-ups' compiles use the others.
# Stopped (TERM) when snakemake ends, before the part's own wall file and packing: a packing in progress finishes
# first (the trap runs once the foreground command returns; `wait` returns at once), so no snapshot replaces them,
# and its archive, not yet renamed, is removed (the part's own packing follows).
(
    trap 'rm -f "$OUT/.$run.snapshot.tgz"; exit 0' TERM
    renice -n 19 -p "$BASHPID" >/dev/null
    seen=$(records)
    while sleep 10 & wait $!; do
        now=$(records)
        [ "$now" != "$seen" ] || continue
        seen=$now
        wall running
        pack snapshot
    done
) &
snapshots=$!
timeout -k 10 -s TERM "$stop_s" snakemake "$@" --cores "$(nproc)" --resources gpu="$gpu_count" >>"$log" 2>&1
code=$?
kill "$sampler" "$snapshots" 2>/dev/null
wait "$sampler" "$snapshots" 2>/dev/null
[ -s "results/$run/gpu-$stamp.err" ] || rm -f "results/$run/gpu-$stamp.err"
# Snakemake's own full log of the part (which job started when, with its wildcards), beside the progress log's one
# line per finished cell: it tells what a part spent its time on (a part's first job, the job its deadline cut off).
# .snakemake/ stays on the host; the newest log written since the part began is the main run's.
full=$(find .snakemake/log -name '*.snakemake.log' -newermt "@${start%.*}" -printf '%T@ %p\n' 2>/dev/null |
    sort -n | tail -n 1 | cut -d' ' -f2-)
[ -z "$full" ] || gzip -c "$full" >"results/$run/snakemake-$stamp.full.log.gz"
echo "snakemake exit: $code (124 = stopped at the deadline; 137 = killed 10 s after that, when it had not stopped;" \
    "1 = a job failed, or jobs were held back as they would end after the deadline: the lines above say which)"
# This part's wall time, as benchmarks/sweep/report.py reads it (one file per part).
wall "$code"
# Jobs the stop left (only then: another sweep may share the host, as in tools/gpu-host/two-sweeps.sh); a snakemake
# killed (137) could stop none of them. Anchored at the interpreter: the command line that called this script may hold
# the same words.
case $code in
124 | 137) pkill -KILL -f -- "^[^ ]*python[0-9.]* -m attnsweep( cell| warmup|\.attempt)" 2>/dev/null ;;
esac
tail -n 40 "$log"  # one line per finished cell, then where the results are
# A job the deadline held back leaves a log of one line, why it did not start (workflow/scripts/
# start-before-deadline.sh), and nothing else; once the part is over that says nothing about its cell (whose missing
# record says it is not measured), so it is removed before the packing: the results keep the logs of jobs that ran.
# The line is start-before-deadline.sh's (attnsweep.sweep.NOT_STARTED).
find "results/$run/logs" -name '*.log' -size -2k -type f 2>/dev/null | while IFS= read -r f; do
    [ "$(wc -l <"$f")" -le 1 ] && grep -q '^attnsweep: not started' "$f" && rm -f -- "$f"
done
pack final
echo "$stamp" >"$last_part"
