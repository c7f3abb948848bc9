#!/usr/bin/env bash
# Re-renders the committed runs the pipeline built, from their committed records, measuring nothing
# (`aggregate_only`): summary.csv, tables, figures, headline, comparisons (`compare_with`) and report stamps; with
# --report, also the HTML reports of the runs that commit one. Needed after a change to the report code
# (src/attnsweep/report/, workflow/scripts/), which renames every run's report stamp, and after new records come
# into a run in parts. In order: a run set beside another (compare_with) comes after that other. Last, every
# committed run's summary.csv and tables are rewritten where the code now makes them otherwise.
#   bash tools/rerender.sh [--report] [-n]    # -n: a dry run of each (what would be rendered or rewritten)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
snakemake=${SNAKEMAKE:-.venv/bin/snakemake}
report=false dry=()
for arg in "$@"; do
    case $arg in
    --report) report=true ;;
    -n) dry=(-n) ;;
    *) echo "tools/rerender.sh: unknown argument $arg (--report, -n)" >&2; exit 2 ;;
    esac
done
# render RUN HTML SNAKEMAKE-ARGUMENTS...: HTML yes where the run commits its report.html.
render() {
    local run=$1 html=$2
    shift 2
    echo "== $run"
    "$snakemake" --cores 2 "${dry[@]}" "$@" 2>&1 | tail -n 3
    if $report && [ "$html" = yes ] && [ ${#dry[@]} -eq 0 ]; then
        "$snakemake" --cores 2 "$@" --report "results/$run/report.html" 2>&1 | tail -n 1
    fi
}
render h100-harness yes --configfile config/h100-harness.yaml --config aggregate_only=True
render h100-study-12gib yes --configfile config/study-12gib.yaml \
    --config run=h100-study-12gib aggregate_only=True allow_missing=True
render h200-study-12gib yes --configfile config/study-12gib.yaml \
    --config run=h200-study-12gib repeats=2 aggregate_only=True 'compare_with=[h100-study-12gib]'
render h200-study-12gib-1gpu no --configfile config/study-12gib.yaml \
    --config run=h200-study-12gib-1gpu aggregate_only=True 'compare_with=[h200-study-12gib]'
render h200 yes --configfile config/study-12gib.yaml config/whole-gpu.yaml \
    --config run=h200 repeats=2 'batch={prior_run: h200-study-12gib}' 'compare_with=[h200-study-12gib]' \
    aggregate_only=True
render h200-modern no --configfile config/modern.yaml \
    --config run=h200-modern repeats=2 aggregate_only=True allow_missing=True
render h100-modern yes --configfile config/modern.yaml \
    --config run=h100-modern repeats=2 aggregate_only=True 'compare_with=[h200-modern]'
# Every committed run's summary.csv from the records its rows name, then its tables from it: for the runs no render
# above rebuilds (the sweep benchmark's, the equality checks'), after a change to the summary or table code; for the
# others, a check that their summary is what the pipeline just made ("as built").
echo "== summaries and tables of every run"
"${PYTHON:-.venv/bin/python}" tools/rerender_tables.py --summaries "${dry[@]}"
# The H200 runs' GPU time, per cell and in total (benchmarks/sweep/report.py --cost), from their records, benchmarks
# and wall files: rewritten after each session's parts, as the tables are.
echo "== results/gpu-time.md"
gpu_time=$(PYTHONPATH=src "${PYTHON:-.venv/bin/python}" benchmarks/sweep/report.py --cost results/h200-study-12gib \
    results/h200)
if [ "$gpu_time" = "$(cat results/gpu-time.md 2>/dev/null)" ]; then echo "results/gpu-time.md: as rendered"
elif [ ${#dry[@]} -gt 0 ]; then echo "results/gpu-time.md: would be rewritten"
else printf '%s\n' "$gpu_time" >results/gpu-time.md && echo "results/gpu-time.md: rewritten"; fi
