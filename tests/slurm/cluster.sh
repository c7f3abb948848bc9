#!/usr/bin/env bash
# A single-node SLURM on this machine, for tests and for trying profiles/slurm without a cluster:
# munged, slurmctld and slurmd with their own key, socket, config, logs and state under DIR.
#
#   bash tests/slurm/cluster.sh start DIR    # then sbatch, squeue, sinfo, scancel and Snakemake's executor use it
#   bash tests/slurm/cluster.sh stop DIR
#
# The config is linked from /etc/slurm/slurm.conf, where SLURM's commands look by default: the executor's job step
# runs `srun` with every SLURM_* variable removed, SLURM_CONF included, so it must find the config there, as on a real
# cluster. An /etc/slurm/slurm.conf that is not such a link is never replaced.
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and root (slurmd starts jobs as their user).
# One partition, `debug`, with every core of this machine and no GPU. No slurmdbd: accounting is off, so `sacct` has
# nothing to say; jobs stay visible to `squeue` for MinJobAge seconds after they end, which is what the executor
# polls (status_command: squeue in profiles/slurm-test).
set -euo pipefail

cmd=${1:?usage: cluster.sh start|stop DIR}
dir=$(mkdir -p "${2:?usage: cluster.sh start|stop DIR}" && cd "$2" && pwd)
node=$(hostname -s)

start() {
    for exe in munged mungekey slurmctld slurmd sinfo; do
        command -v "$exe" >/dev/null ||
            { echo "cluster.sh: $exe not found (apt-get install slurm-wlm munge)" >&2; exit 2; }
    done
    mkdir -p "$dir"/{munge,state,spool,log}
    chmod 700 "$dir/munge"
    [ -f "$dir/munge/munge.key" ] || mungekey --create --keyfile "$dir/munge/munge.key"
    chmod 600 "$dir/munge/munge.key"
    # --force: munged refuses to run as root or with a key outside /etc/munge otherwise.
    munged --force --key-file "$dir/munge/munge.key" --socket "$dir/munge/munge.socket" \
        --pid-file "$dir/munge/munged.pid" --log-file "$dir/log/munged.log" --seed-file "$dir/munge/munge.seed"
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat > "$dir/slurm.conf" <<CONF
ClusterName=attnsweep-test
SlurmctldHost=$node
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# FIFO, scheduled as soon as a job is submitted or ends (backfill would wait for its 30 s cycle).
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# Finished jobs stay in squeue this long: the executor reads their end state there (no accounting database).
MinJobAge=600
InactiveLimit=0
KillWait=5
NodeName=$node CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
    if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
        echo "cluster.sh: /etc/slurm/slurm.conf exists and is not a test link; not replacing it" >&2
        stop
        exit 1
    fi
    mkdir -p /etc/slurm
    ln -sfn "$dir/slurm.conf" /etc/slurm/slurm.conf
    slurmctld
    slurmd
    for _ in $(seq 120); do
        if sinfo -h -N -o '%t' 2>/dev/null | grep -qx idle; then
            echo "cluster.sh: node $node idle in partition debug (config: $dir/slurm.conf)"
            return 0
        fi
        sleep 0.5
    done
    echo "cluster.sh: node $node did not come up idle within 60 s; logs in $dir/log" >&2
    sinfo -N >&2 || true
    tail -n 20 "$dir"/log/*.log >&2 || true
    stop
    exit 1
}

stop() {
    # Each daemon by the pid it wrote, never by name: other SLURMs on this machine are left alone.
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
    if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$dir/slurm.conf" ]; then
        rm -f /etc/slurm/slurm.conf
    fi
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
