#!/usr/bin/env bash
# On the GPU host, from the checkout's root: a part of a side run (device-tree.sh side) at its own code, from the
# carried .sidetree/RUN.tgz, in /tmp/sidetree/RUN:
#   tools/gpu-host/side-sweep.sh SECONDS RUN [snakemake arguments...]
# That code's tools/gpu-host/sweep.sh runs the part there, with this checkout's wheels (.gpuwheels/, .fa4wheels/),
# and packs results/RUN into $OUT/RUN.tgz as for any part (`device-tree.sh unpack --side` here). SIDE_FA4=1 installs
# FlashAttention-4's wheels first (that code's fa4-wheels.sh, into $OUT/fa4-install.log). A host kept warm since the
# last part keeps /tmp/sidetree/RUN as that part left it (its records are newer than the tarball's, and its finished
# warm-ups, last-part stamp and .snakemake/ go on), so a call that follows within the host's 30 s need not carry the
# tarball again. SWEEP_WAITING_ONLY=1 makes a part that only measures, as sweep.sh's own: this checkout's
# waiting-targets.sh names the side run's waiting records as the targets, for a side run whose sweep.sh predates it
# (the warm-up folders it reads, warmup/<cell>/r<K>/, are those of cell code 3b1c1216 on). So that one call can serve
# whichever GPU comes, branch on it:
#   case "$(nvidia-smi --query-gpu=name --format=csv,noheader)" in
#   *H200*) bash tools/gpu-host/side-sweep.sh 550 h200-modern --configfile config/modern.yaml ... ;;
#   *H100*) bash tools/gpu-host/sweep.sh 550 h100-modern --configfile config/modern.yaml ... ;;
#   esac
set -uo pipefail
[ $# -ge 2 ] || { sed -n 2,4p "$0" >&2; exit 2; }
root=$PWD run=$2 tools=$(cd "$(dirname "$0")" && pwd)
tree=${SIDETREE_DIR:-/tmp/sidetree}/$run
if [ -d "$tree/results/$run" ]; then
    echo "side-sweep.sh: $tree kept from this host's last part"
else
    [ -s ".sidetree/$run.tgz" ] && [ -s ".sidetree/$run.rev" ] ||
        { echo "side-sweep.sh: no .sidetree/$run.tgz and .rev (device-tree.sh side, carry .sidetree)" >&2; exit 7; }
    rm -rf "$tree"
    mkdir -p "$(dirname "$tree")"
    # A worktree of the commit where the checkout has it, so that records name it (git describe: REV-dirty, its
    # results replaced); else plain files, and records name no commit.
    if git -C "$root" worktree add -q --detach "$tree" "$(cat ".sidetree/$run.rev")" 2>/dev/null; then
        rm -rf "${tree:?}/results"
    else
        mkdir -p "$tree"
    fi
    tar xzf ".sidetree/$run.tgz" -C "$tree" || exit 7
fi
for wheels in .gpuwheels .fa4wheels; do
    [ ! -e "$wheels" ] || ln -sfn "$root/$wheels" "$tree/$wheels"
done
cd "$tree" || exit 7
echo "side-sweep.sh: $run at $(git describe --always --dirty 2>/dev/null || echo 'no commit (plain files)') in $tree"
if [ -n "${SWEEP_WAITING_ONLY:-}" ]; then
    source "$tools/waiting-targets.sh"
    PYTHONPATH="/tmp/site:$root/src${PYTHONPATH:+:$PYTHONPATH}" waiting_targets side-sweep.sh "$run" || exit
    set -- "$1" "$2" "${targets[@]}" "${@:3}"
    unset SWEEP_WAITING_ONLY
fi
if [ "${SIDE_FA4:-0}" = 1 ]; then
    bash tools/gpu-host/fa4-wheels.sh install >"$OUT/fa4-install.log" 2>&1 || exit 9
fi
exec bash tools/gpu-host/sweep.sh "$@"
