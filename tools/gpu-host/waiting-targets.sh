# Sourced by sweep.sh and side-sweep.sh for SWEEP_WAITING_ONLY=1, a part that only measures: its targets are the
# records whose warm-up is done and whose timed job has not run (`attnsweep status --waiting`): on a host kept warm,
# those its last part left. For a session's last part, whose new warm-ups would be lost with the host, GPU time and
# all. Put the targets before the part's own snakemake arguments: after them an option that takes several values
# (`--config k=v ...`) would take them as its own.
#   waiting_targets SCRIPT RUN   # sets the array `targets`; returns 4 (saying so) where none waits, 1 on an error
waiting_targets() {
    local waiting
    waiting=$(python3 -m attnsweep status "results/$2" --waiting) || return 1
    if [ -z "$waiting" ]; then
        echo "$1: no warm-up of $2 waits for its timed job (SWEEP_WAITING_ONLY): nothing to measure" >&2
        return 4
    fi
    mapfile -t targets <<<"$waiting"
    echo "$1: measuring only the ${#targets[@]} records whose warm-up is done (SWEEP_WAITING_ONLY)"
}
