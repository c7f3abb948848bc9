#!/usr/bin/env bash
# Whether a sweep's job may start: run before the job's own command, with the seconds the job is expected to take
# (its resource expected_s, attnsweep.sweep: 0 where unknown):
#   start-before-deadline.sh [--grace=SECONDS] EXPECTED_S [COMMAND ...]
# Without ATTNSWEEP_DEADLINE (seconds since the epoch), or when the job is expected to end before it: exit 0, and
# the job runs. Otherwise it prints why (the job's log) and exits 3: the job fails without running, makes nothing,
# and the same command runs it later. The value itself was checked when the workflow was read.
# --grace (a warm-up of a cell `first` names, attnsweep.sweep.FIRST_GRACE_S): a job expected longer than the whole
# part, from its start (ATTNSWEEP_PART_START) to the deadline, would be held back in every part; it starts if it
# comes up within SECONDS of the part's start, and the deadline cuts it off if it runs that long. 0: never.
# COMMAND, where given, prints the job's expected seconds from what there is now, which replaces EXPECTED_S (a warm-up:
# Snakemake evaluates a job's resources when it builds the DAG if the job's inputs are there then, so EXPECTED_S may
# come from an earlier part's records of other cells, and the records this sweep has made since tell better, as does
# the queue of timed jobs waiting for the GPU now). An answer that is not a whole number leaves EXPECTED_S in force.
set -u
grace=0
if [[ ${1:-} == --grace=* ]]; then
    grace=${1#--grace=}
    shift
fi
deadline=${ATTNSWEEP_DEADLINE:-}
[ -n "$deadline" ] || exit 0
expected=$1
shift
again_note=
if [ $# -gt 0 ]; then
    again=$("$@") || again=
    if [[ $again =~ ^[0-9]+$ ]]; then
        left=$((${deadline%.*} - $(date +%s)))
        if [ "$again" -le "$left" ]; then
            echo "attnsweep: expected $expected s when the sweep began, $again s from the records now, $left s left:" \
                "started"
            exit 0
        fi
        again_note=" (estimated again from the records at its start; $expected s when the sweep began)"
        expected=$again
    fi
fi
now=$(date +%s)
left=$((${deadline%.*} - now))
[ "$expected" -gt "$left" ] || exit 0
start=${ATTNSWEEP_PART_START:-}
if [[ $grace =~ ^[1-9][0-9]*$ && $start =~ ^[0-9]+$ ]]; then
    whole=$((${deadline%.*} - start))
    if [ "$expected" -gt "$whole" ] && [ $((now - start)) -le "$grace" ]; then
        echo "attnsweep: expected $expected s, longer than the whole part ($whole s from its start to" \
            "ATTNSWEEP_DEADLINE), $((now - start)) s into it: started, as \`first\` names it$again_note"
        exit 0
    fi
fi
echo "attnsweep: not started: expected to take about $expected s, $left s left before ATTNSWEEP_DEADLINE$again_note"
exit 3
