#!/usr/bin/env bash
# Whether a sweep's job may start: run before the job's own command, with the seconds the job is expected to take
# (its resource expected_s, attnsweep.sweep: 0 where unknown):
#   start-before-deadline.sh EXPECTED_S
# Without ATTNSWEEP_DEADLINE (seconds since the epoch), or when the job is expected to end before it: exit 0, and
# the job runs. Otherwise it prints why (the job's log) and exits 3: the job fails without running, makes nothing,
# and the same command runs it later. The value itself was checked when the workflow was read.
set -u
deadline=${ATTNSWEEP_DEADLINE:-}
[ -n "$deadline" ] || exit 0
left=$((${deadline%.*} - $(date +%s)))
[ "$1" -gt "$left" ] || exit 0
echo "attnsweep: not started: expected to take about $1 s, $left s left before ATTNSWEEP_DEADLINE"
exit 3
