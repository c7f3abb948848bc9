#!/usr/bin/env bash
# The device tool sends the checkout (tracked and untracked-not-ignored files) and what `carry` names, 64 MiB at most.
# The committed results outgrow that beside `.gpuwheels/` (41 MB): this puts the checkout on a local branch that holds
# only the results folders a call resumes, and back again afterwards.
#   tools/gpu-host/device-tree.sh slim [--code REV] RUN [RUN ...] [--reads RUN ...]  # from a clean tree: branch
#       device-tree, other runs' folders removed, and the kept runs' report.html, logs/ and benchmarks/; of a run
#       after --reads (one the calls' run reads: its batch.prior_run, its compare_with) only what is read, its
#       summary.csv and its cell records. --code REV: every file outside results/ (but this script) as at REV, for
#       a run that continues at an earlier cell code
#   tools/gpu-host/device-tree.sh size [CARRIED ...]  # what a call would send, in MiB (with the carried folders)
#   tools/gpu-host/device-tree.sh unpack [--replace] [--side] TGZ MESSAGE  # a call's tarball (sweep.sh's), committed
#   tools/gpu-host/device-tree.sh back               # to the branch before, with what was committed or unpacked since
#   tools/gpu-host/device-tree.sh side REV RUN       # while slim: .sidetree/RUN.tgz, a run beside the tree's runs
# A side run is one that continues at an earlier cell code (REV's) than the slim tree's runs, swept by the same call
# where another GPU came (tools/gpu-host/side-sweep.sh on the host): REV's files but results/, and results/RUN as the
# branch before holds it, in one compressed file (2.7 MB for h200-modern on 2026-12-07; the run's folder would be
# 11 MiB of 4 KiB blocks in the tree). Carry `.sidetree` beside the wheels. `unpack --side` commits such a call's
# tarball on the branch before (in a worktree of it: RUN is not in the slim tree), with the same check, and makes
# .sidetree/RUN.tgz again.
# Between slim and back, unpack each call's $OUT tarball into the checkout, so the next call resumes from it, and
# commit it there: back replays those commits on the branch before (and carries anything uncommitted), then deletes
# device-tree. Its first commit, the removal, is never replayed. unpack replaces each run folder the tarball holds, so
# what the host deleted (a code stamp replaced by the sweep) is deleted here too; a plain `tar xzf` would keep it, and
# the next call would send it back. It refuses a tarball that lacks a cell record the checkout holds of the code the
# call measured with (that of the records it brought, and of its newest): that call began from an older tree (sent
# before the previous call's tarball was unpacked), and replacing would lose the record. Records of other code may go
# (the host deletes a stale record when it starts measuring it again). --replace replaces anyway.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
state=.git/device-tree-from
case "${1:-}" in
slim)
    shift
    code=
    if [ "${1:-}" = --code ]; then
        [ $# -ge 2 ] || { echo "device-tree.sh slim: --code needs a commit" >&2; exit 2; }
        code=$(git rev-parse -q --verify "$2^{commit}") ||
            { echo "device-tree.sh slim: --code $2 is not a commit here" >&2; exit 2; }
        shift 2
    fi
    resumed=() reads=()
    while [ $# -gt 0 ] && [ "$1" != --reads ]; do resumed+=("$1"); shift; done
    [ $# -eq 0 ] || { shift; reads=("$@"); }
    [ ${#resumed[@]} -gt 0 ] ||
        { echo "device-tree.sh slim: name the runs the calls resume (results/RUN)" >&2; exit 2; }
    [ ! -e "$state" ] || { echo "device-tree.sh: already slim (from $(cat "$state")); run 'back' first" >&2; exit 1; }
    [ -z "$(git status --porcelain)" ] ||
        { echo "device-tree.sh: commit or stash first (the tree is not clean)" >&2; exit 1; }
    for run in "${resumed[@]}"; do
        [ -d "results/$run" ] || echo "device-tree.sh: results/$run does not exist yet (a new run)" >&2
    done
    for run in "${reads[@]}"; do
        [ -f "results/$run/summary.csv" ] || { echo "device-tree.sh slim: results/$run/summary.csv does not exist" \
            "(a run read with --reads is one measured before)" >&2; exit 2; }
    done
    git symbolic-ref --short HEAD >"$state"
    git switch -q -c device-tree
    trap 'echo "device-tree.sh: failed on branch device-tree;" \
        "git switch $(cat "$state") && git branch -D device-tree && rm $state" >&2' ERR
    for dir in results/*/; do
        name=$(basename "$dir")
        [[ " ${resumed[*]} ${reads[*]} " == *" $name "* ]] || git rm -r -q --ignore-unmatch -- "results/$name"
    done
    # The kept runs' HTML reports are large, and their jobs' logs and benchmarks (small files: 1,407 of h100-modern's
    # 1,889, 0.3 of its 6.1 MiB but 3.7 of its 10.9 MiB in 4 KiB blocks) are there to be read here: no call reads
    # them, and Snakemake runs no job again for a log or benchmark file that is not there. A call brings back those
    # of its own jobs.
    for run in "${resumed[@]}"; do
        git rm -r -q --ignore-unmatch -- "results/$run/report.html" "results/$run/logs" "results/$run/benchmarks"
    done
    # A run only read: its records (a search's first attempt, batch.prior_run) and its summary (compare_with).
    for run in "${reads[@]}"; do
        git ls-files -z -- "results/$run" | grep -zEv "^results/$run/(summary\.csv|cells/.*\.json)$" |
            xargs -0 -r git rm -q --
    done
    if [ -n "$code" ]; then
        # The host measures with the tree's code: a run whose records are of an earlier cell code continues there.
        # results/ stays as on the branch before, so back replays the calls' results onto it unchanged; so does this
        # script, which bash is still reading and which unpack and back run.
        keep=(':(exclude)results' ':(exclude)tools/gpu-host/device-tree.sh')
        git rm -r -q -- . "${keep[@]}"
        git checkout "$code" -- . "${keep[@]}"
    fi
    message="device tree: only the results of ${resumed[*]}${reads[*]:+, and what is read of ${reads[*]}}"
    git commit -q -m "$message${code:+, the code of ${code:0:8}} (never merged)"
    git rev-parse HEAD >>"$state"
    "$0" size || true  # its line says where the tree alone is over the limit
    ;;
size)
    shift
    # The bytes, and whole 4 KiB blocks per file. The tool's own measure is more than the bytes: it refused trees of
    # 60.6 and 60.8 MiB of them (66.0 MiB in blocks, wheels included) and took one of 55.4 MiB in blocks, so the
    # blocks are judged against the limit: exit 1 where they are over it.
    { git ls-files -z --cached --others --exclude-standard; for d in "$@"; do find "$d" -type f -print0; done; } |
        xargs -0 -r stat -c %s 2>/dev/null |
        awk '{n++; s += $1; b += int(($1 + 4095) / 4096) * 4096}
             END {printf "%d files, %.1f MiB (%.1f MiB in 4 KiB blocks); the limit is 64 MiB", n, s / 2^20, b / 2^20
                  if (b > 64 * 2^20) {print ": over it in blocks, the tool would refuse the call"; exit 1}
                  print ""}'
    ;;
unpack)
    shift
    replace=false side=false
    while [ $# -gt 2 ]; do
        case $1 in
        --replace) replace=true ;;
        --side) side=true ;;
        *) echo "device-tree.sh unpack: unknown option $1 (--replace, --side)" >&2; exit 2 ;;
        esac
        shift
    done
    [ $# -eq 2 ] || { echo "device-tree.sh unpack: give the tarball and the commit message" >&2; exit 2; }
    [ -e "$state" ] || { echo "device-tree.sh: not slim (no $state): unpack onto the slim branch" >&2; exit 1; }
    tgz=$(realpath "$1") message=$2
    mapfile -t runs < <(tar tzf "$tgz" | awk -F/ '$1 == "results" && $2 != "" {print $2}' | sort -u)
    [ ${#runs[@]} -gt 0 ] || { echo "device-tree.sh unpack: $tgz holds no results/RUN folder" >&2; exit 1; }
    here=$PWD
    if $side; then
        { read -r from; read -r _; } <"$state"
        here=$(mktemp -d)/base
        git worktree add -q "$here" "$from"
        trap 'git worktree remove --force "$here"' EXIT
    fi
    cd "$here"
    if ! $replace; then
        lost=$(python3 - "$tgz" "${runs[@]}" <<'PY'
import json, pathlib, sys, tarfile

def code(record):
    return record.get("env", {}).get("code", {}).get("source_sha256")

# The code the call measured with: that of the records it brought (new or changed here), and of its newest record
# (a call that measured nothing). A record of other code it lacks was deleted by the host as stale when its job
# began, while the other stale records of that code stayed in the tarball unchanged.
with tarfile.open(sys.argv[1]) as tgz:
    members = [m for m in tgz.getmembers() if m.isfile() and "/cells/" in m.name and m.name.endswith(".json")]
    records = {m.name: tgz.extractfile(m).read() for m in members}
parsed = {name: json.loads(data) for name, data in records.items()}
brought = [name for name, data in records.items()
           if not pathlib.Path(name).is_file() or pathlib.Path(name).read_bytes() != data]
newest = max(parsed, key=lambda name: str(parsed[name].get("finished_at") or ""), default=None)
measured = {code(parsed[name]) for name in [*brought, *([newest] if newest else [])]} - {None}
for run in sys.argv[2:]:
    for path in sorted(pathlib.Path("results", run, "cells").rglob("*.json")):
        if path.as_posix() not in records and code(json.loads(path.read_bytes())) in measured:
            print(path)
PY
        )
        if [ -n "$lost" ]; then
            echo "device-tree.sh unpack: $tgz lacks $(wc -l <<<"$lost") cell record(s) of the code it measured with" \
                "that the checkout holds, e.g. $(head -n 1 <<<"$lost"). Was its call sent before the previous call's" \
                "tarball was unpacked? Unpacking would lose them: merge its new records by hand, or pass --replace." >&2
            exit 1
        fi
    fi
    for run in "${runs[@]}"; do
        rm -rf -- "results/$run"
        tar xzf "$tgz" "results/$run"
        # A committed HTML report is no part of what a call sends back (slim leaves it out): kept.
        report=$(git ls-files -- "results/$run/report.html")
        [ -z "$report" ] || git checkout -q HEAD -- "$report"
    done
    git add -A -- "${runs[@]/#/results/}"
    git commit -q -m "$message"
    git log --oneline -1
    if $side; then
        cd - >/dev/null
        for run in "${runs[@]}"; do
            [ ! -e ".sidetree/$run.rev" ] || "$0" side "$(cat ".sidetree/$run.rev")" "$run"
        done
    fi
    ;;
side)
    [ -e "$state" ] || { echo "device-tree.sh side: not slim (no $state)" >&2; exit 1; }
    [ $# -eq 3 ] || { echo "device-tree.sh side: give the commit of the run's code and the run" >&2; exit 2; }
    rev=$(git rev-parse -q --verify "$2^{commit}") ||
        { echo "device-tree.sh side: $2 is not a commit here" >&2; exit 2; }
    run=$3
    { read -r from; read -r _; } <"$state"
    git cat-file -e "$from:results/$run" 2>/dev/null ||
        { echo "device-tree.sh side: $from has no results/$run" >&2; exit 2; }
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    git archive "$rev" -- . ':(exclude)results' | tar x -C "$build"
    git archive "$from" -- "results/$run" ':(exclude)results/*/report.html' | tar x -C "$build"
    mkdir -p .sidetree
    tar czf ".sidetree/.$run.tgz" -C "$build" .
    mv ".sidetree/.$run.tgz" ".sidetree/$run.tgz"
    echo "$rev" >".sidetree/$run.rev"
    echo "device-tree.sh side: .sidetree/$run.tgz ($(du -h ".sidetree/$run.tgz" | cut -f1)): the code of" \
        "${rev:0:8}, results/$run of $from"
    ;;
back)
    [ -e "$state" ] || { echo "device-tree.sh: not slim (no $state)" >&2; exit 1; }
    { read -r from; read -r slim; } <"$state"
    [ "$(git symbolic-ref --short HEAD)" = device-tree ] ||
        { echo "device-tree.sh: not on branch device-tree" >&2; exit 1; }
    changed=$(git status --porcelain)
    [ -z "$changed" ] || git stash push -q -u -m device-tree
    git switch -q "$from"
    # The results committed on device-tree touch only folders that are the same on both branches at the slim point,
    # but for what slim left out: a job measured again writes its log and benchmark anew, which device-tree adds and
    # the branch before has. Where they differ, device-tree's (-X theirs) is the newer.
    [ -z "$(git rev-list "$slim..device-tree")" ] || git cherry-pick -X theirs "$slim..device-tree" >/dev/null
    [ -z "$changed" ] || git stash pop -q
    git branch -q -D device-tree
    rm -f "$state"
    git status --short | head -n 5
    ;;
*)
    sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' >&2
    exit 2
    ;;
esac
