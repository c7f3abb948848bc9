"""Parse-time adapter: the config, checked, into the run's settings, grid, code stamps and targets.

The logic is attnsweep.sweep's (tested with plain pytest); this file only calls it. A bad config stops the run here,
before any job starts. Nothing here starts torch or a GPU unless resuming a run needs its environment checked.
"""

import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import Paramspace

from attnsweep import cluster, codestamp, gpuslots, packages, sweep
from attnsweep.report.aggregate import figure_names, table_names
from attnsweep.report.compare import comparison_paths, summary_digests
from attnsweep.vocabulary import AXES

ROOT = Path(workflow.basedir)
try:
    sweep.validate_config(config, ROOT / "workflow/schemas/config.schema.yaml")
    GPUS = gpuslots.visible_gpus(config_value=config.get("gpus"))
    # What the user gave on the command line or in overlay files wins over the cpu_demo section.
    PLAN = sweep.plan_run(config, workflow.config_settings.overwrite_config, GPUS)
    # A deadline for the jobs (ATTNSWEEP_DEADLINE), checked here: a bad value stops the run before any job.
    DEADLINE = sweep.read_deadline()
    sweep.mark_part_start()
    # The GPUs' model and memory (nvidia-smi, once): the cap must fit, and bounds the warm-ups a GPU takes.
    GPU_MEMORY = None
    if PLAN.device == "cuda" and not PLAN.aggregate_only:
        GPU_MEMORY = gpuslots.gpu_memory(GPUS[0])
        sweep.check_memory_cap(
            PLAN.settings["memory_cap_gib"], GPU_MEMORY, PLAN.key_name
        )
except ValueError as e:  # sweep.SweepError included
    raise WorkflowError(str(e)) from None

RUN, RESULTS, DEVICE, AGGREGATE_ONLY = (
    PLAN.run,
    PLAN.results,
    PLAN.device,
    PLAN.aggregate_only,
)
PARAMSPACE = Paramspace(PLAN.grid)
WARMUP = PLAN.settings["warmup"][
    "enabled"
]  # two stages (warm-up, timed), or one cold job a cell
CELL_THREADS, WARMUP_THREADS = PLAN.threads(workflow.cores)
# Each axis wildcard matches exactly the values in the grid: a path outside it is not a cell of this run.
AXIS_CONSTRAINTS = {a: "|".join(str(v) for v in PLAN.grid[a].unique()) for a in AXES}
CELL_MESSAGE = " ".join(["cell", *(f"{a}={{wildcards.{a}}}" for a in AXES)])


def cell_options(wildcards) -> str:
    """`attnsweep cell`/`warmup` options for the cell named by the wildcards (all but the paths); through SLURM
    without GPU slots (SLURM gives each job its GPU)."""
    cell = PARAMSPACE.instance(wildcards)
    slots = not cluster.scheduler_assigns_gpus(workflow)
    return shlex.join(
        PLAN.cell_options(cell)
        + PLAN.job_options(GPUS, GPU_MEMORY and GPU_MEMORY[1], slots=slots)
    )


def first_record(wildcards) -> str:
    """The cell's first record (repeat 1's), beside which its later repeats' records lie."""
    return f"{RESULTS}/cells/{sweep.cell_path(dict(wildcards.items()))}/cell.json"


def first_repeat(wildcards):
    """Repeat 1's record for a warm-up of repeat 2, 3, ...: repeats share its batch size (none for repeat 1)."""
    if wildcards.repeat == "1":
        return []
    return ancient(first_record(wildcards))


def batch_from_option(wildcards, input) -> str:
    """Repeat 1's record for a later repeat's warm-up or cold job (its input `first`); for repeat 1, which
    searches, its record in batch.prior_run if any and where this run keeps its peers' (not inputs: a search runs
    without them, and reads the peers measured by the time it starts).
    """
    first = input.get("first")
    if first:
        return f"--batch-from {shlex.quote(first)}"
    cell = PARAMSPACE.instance(wildcards)
    prior = PLAN.prior_record(cell)
    peers = PLAN.peer_records(cell)
    return shlex.join(
        (["--batch-prior", prior] if prior else [])
        + (["--batch-peers", *peers] if peers else [])
    )


def repeat_of(wildcards) -> int:
    """The repeat a job is of: its `repeat` wildcard, 1 for rule cell (repeat 1's record is cell.json)."""
    return int(wildcards.get("repeat", "1"))


def warmup_priority(wildcards) -> int:
    """A warm-up's priority (sweep.RunPlan.priority), higher where it is expected to take over half the part
    (sweep.is_long_warmup; its resource expected_s, from the records there are as the sweep begins).
    """
    repeat = repeat_of(wildcards)
    # The input `first` the resource reads: repeat 1's record for a later repeat. 0 without a deadline (no reading).
    expected = expected_warmup_s(
        wildcards, {"first": first_record(wildcards) if repeat > 1 else None}
    )
    long = sweep.is_long_warmup(expected, DEADLINE)
    return PLAN.priority(dict(wildcards.items()), repeat, timed=False, long=long)


def first_grace_s(wildcards) -> int:
    """Resource first_grace_s of a warm-up: how long into a part it may start though expected longer than the
    whole part (sweep.RunPlan.first_grace_s)."""
    return PLAN.first_grace_s(dict(wildcards.items()))


def timed_priority(wildcards) -> int:
    """A timed job's priority, above every warm-up's (sweep.RunPlan.priority)."""
    return PLAN.priority(dict(wildcards.items()), repeat_of(wildcards), timed=True)


def rerun_priority(wildcards) -> int:
    """The priority of a record's marker (the rerun rule's job) is its record's job's, above every warm-up. A
    marker left at 0 waits until no warm-up is left to start, as the warm-ups keep the cores busy, and a cell whose
    warm-up is done cannot start its timed job without it (on the H200, 24 warm-ups done and no cell measured in a
    9-minute part).
    """
    repeat = sweep.record_repeat(wildcards.record)
    return PLAN.priority(dict(wildcards.items()), repeat, timed=True)


def search_log(wildcards) -> str:
    """A repeat's search log: not an output, it outlives a warm-up stopped in its search (a sweep's deadline), whose
    attempts the next warm-up of the cell takes from it instead of running them again, and a timed job enters there
    a searched size its run did not fit (attnsweep/searchlog.py)."""
    cell = sweep.cell_path(dict(wildcards.items()))
    return f"{RESULTS}/searches/{cell}/r{repeat_of(wildcards)}.jsonl"


def stage_options(wildcards, input) -> str:
    """A timed job's options: the warm-up it measures after; cold, repeat 1's record for a later repeat."""
    if WARMUP:
        return (
            f"--warmup {shlex.quote(input.warmup)} --cache {shlex.quote(input.cache)} "
            f"--search-log {shlex.quote(search_log(wildcards))}"
        )
    return batch_from_option(wildcards, input)


def record_path(wildcards) -> str:
    """The record a cell or repeat job writes (repeat 1 is cell.json)."""
    return str(
        Path(first_record(wildcards)).with_name(
            sweep.record_name(int(wildcards.get("repeat", "1")))
        )
    )


def rerun_file(record: str) -> str:
    """The marker (rule rerun) that makes a record's job run."""
    return str(
        Path(record.replace(f"{RESULTS}/cells/", f"{RESULTS}/.rerun/", 1)).with_suffix(
            ".txt"
        )
    )


def rerun_input(wildcards) -> str:
    """The record's marker, an input of its job. Only a stale record's is a target (ALL_TARGETS): then a job makes
    it, and the record's job runs again on any machine. Any other's is made only when its job runs anyway. Every job
    has one, so Snakemake's metadata sees the same inputs whether the record was stale or not.
    """
    return rerun_file(record_path(wildcards))


def stale_markers(wildcards) -> list[str]:
    """A warm-up's inputs that make a kept one (from an earlier part on a warm host) be made again: the markers of
    its record and of its cell's first record, where stale (STALE). Its record measured again was found unsupported
    with other packages, say; the first record measured again gives the later repeats their batch size, also to a
    repeat not measured yet. Never any other record's: a warm-up kept for a missing record is what its timed job
    measures after.
    """
    return [
        rerun_file(r)
        for r in dict.fromkeys([first_record(wildcards), record_path(wildcards)])
        if r in STALE
    ]


def expected_timed_s(wildcards, input) -> int:
    """Resource expected_s of a timed job (a cell or a later repeat): the seconds it is expected to take, from the
    cell's other records and its warm-up, read against the records of the same model (sweep.expected_timed_job_s);
    0 where unknown or no deadline is set. Snakemake evaluates it when the job is about to start, so the warm-up it
    follows is there to read.
    """
    if DEADLINE is None:
        return 0
    cell = dict(PARAMSPACE.instance(wildcards))
    expected = sweep.expected_timed_job_s(
        RESULTS, cell, input.get("warmup") or None, PLAN.settings["steps"]
    )
    return round(expected or 0)


def expected_warmup_s(wildcards, input) -> int:
    """Resource expected_s of a warm-up job: the warm-up and the timed job after it (sweep.warmup_then_timed_s),
    from repeat 1's record for a later repeat, else from the records of the cells that differ from this one in the
    attention only, else in the attention and the context, else in the mode too (sweep.WARMUP_LIKE); 0 where
    unknown or no deadline is set.
    """
    if DEADLINE is None:
        return 0
    cell = dict(PARAMSPACE.instance(wildcards))
    return sweep.expected_warmup_s(RESULTS, cell, input.get("first") or None)


def estimate_warmup_again(wildcards, input) -> str:
    """The command that makes a warm-up's expected_s again at its start (the check before the job runs it): from
    the records there are then, and with the GPU's queue of timed jobs then (sweep.expected_warmup_start_s).
    Snakemake evaluates a job's resources when it builds the DAG if the job's inputs are there then (a first
    repeat's warm-up has none), so an estimate made from an earlier part's records of other modes does not learn
    from the records the sweep has made since, nor see the warm-ups done before it whose timed jobs wait for the GPU.
    """
    cell = sweep.cell_path(dict(wildcards.items()))
    first = [input.first] if input.get("first") else []
    return shlex.join(
        ["python", ESTIMATE_WARMUP, RESULTS, cell, str(PLAN.settings["steps"]), *first]
    )


def stamp_text(wildcards) -> str:
    stamp = STAMPS[f"{wildcards.kind}-{wildcards.digest}"]
    return json.dumps(stamp, indent=1, sort_keys=True)


# Jobs call `python`: the interpreter running Snakemake, which has just imported attnsweep to read this workflow.
shell.prefix(
    f'set -euo pipefail; export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"; '
)
# Run before each cell and warm-up job: it does not start where it would end after ATTNSWEEP_DEADLINE. A param:
# relative to the working directory, so that a copy of the checkout elsewhere is not a change of params.
START_BEFORE_DEADLINE = os.path.relpath(
    ROOT / "workflow/scripts/start-before-deadline.sh"
)
# A warm-up's expected_s made again by that check at its start (estimate_warmup_again), likewise relative.
ESTIMATE_WARMUP = os.path.relpath(ROOT / "workflow/scripts/deadline/expected-warmup.py")
CELLS = expand(f"{RESULTS}/cells/{{p}}/cell.json", p=PARAMSPACE.instance_patterns)
REPEATS = sweep.repeat_paths(CELLS, PLAN.settings["repeats"])
# Records of other code or settings than a cell would run with now (what a cell records: the package its jobs
# import), which their jobs measure again: Snakemake's metadata of them may be on another machine. Measuring, an
# `unsupported` record made with other packages than this machine's is asked again (a package installed since).
STALE = sweep.stale_records(
    CELLS + REPEATS,
    codestamp.source_hash(),
    PLAN.cell_settings,
    None if AGGREGATE_ONLY else packages.versions(),
)
# A sweep run in parts (allow_missing): the cells present are aggregated, the others listed as not measured yet.
LEFT_OUT = sweep.stale_to_leave_out(CELLS + REPEATS, STALE, PLAN.cell_settings)
PRESENT_CELLS, MISSING_CELLS = sweep.split_present(
    CELLS, config["allow_missing"], LEFT_OUT
)
PRESENT_REPEATS = sweep.split_present(REPEATS, config["allow_missing"], LEFT_OUT)[0]
# Other runs set beside this one (compare_with): {run: its summary.csv}, each giving tables/vs-RUN.md.
COMPARED = {other: sweep.summary_path(other) for other in PLAN.settings["compare_with"]}
try:
    # Cells and aggregations take ancient(stamp): its name hashes the code and settings, so a change reruns what
    # depends on it, and file times (a fresh clone) do not matter. Aggregating records already there
    # (aggregate_only), the records tabled are settings too: what they hold and which are tabled.
    STAMPS = codestamp.sweep_stamps(
        ROOT,
        config["code_dir"],
        PLAN.cell_settings,
        {
            "allow_mixed_env": PLAN.settings["allow_mixed_env"],
            # A compared run's summary is a setting too: its re-aggregation renders the comparison again.
            **({"compare_with": summary_digests(COMPARED)} if COMPARED else {}),
            **(
                {"records": sweep.records_digest(PRESENT_CELLS + PRESENT_REPEATS)}
                if AGGREGATE_ONLY
                else {}
            ),
        },
    )
except ValueError as e:
    raise WorkflowError(str(e)) from None
CELL_STAMP, REPORT_STAMP = (f"{RESULTS}/stamps/{name}.json" for name in STAMPS)
# Resuming a run: its kept cells must be of this machine's environment (only then is torch started here).
if (
    not (AGGREGATE_ONLY or PLAN.settings["allow_mixed_env"])
    and Path(CELL_STAMP).exists()
):
    from attnsweep.report.aggregate import kept_cells_conflict

    kept = [c for c in CELLS + REPEATS if Path(c).exists()]
    if conflict := kept_cells_conflict(kept, DEVICE, RESULTS):
        raise WorkflowError(conflict)

SUMMARY, HEADLINE_FILE = sweep.summary_path(RUN), f"{RESULTS}/headline.rst"
# The study's compiled and eager tables, a table for any other mode of the grid, study.md, answers.md and all.md.
TABLES = {
    t: f"{RESULTS}/tables/{t}.md" for t in table_names(PLAN.settings["grid"]["mode"])
}
COMPARISONS = [
    path for other in COMPARED for path in comparison_paths(RESULTS, other).values()
]
# Only the figures this grid can give data to (no fa2-vs-sdpa without fa2, no memory on the CPU).
FIGURES = {
    f: f"{RESULTS}/figures/{f}.png" for f in figure_names(PLAN.settings["grid"], DEVICE)
}
# The stamps and cells are targets themselves: a missing target runs, and everything downstream of it, also in a
# fresh clone without .snakemake metadata, and behind a summary left by a partial aggregation. So are the rerun markers
# of stale records (a missing input alone does not rerun a job whose output is there).
ALL_TARGETS = [
    *(
        []
        if AGGREGATE_ONLY
        else [CELL_STAMP, *CELLS, *REPEATS, *map(rerun_file, STALE)]
    ),
    REPORT_STAMP,
    SUMMARY,
    *TABLES.values(),
    *COMPARISONS,
    *FIGURES.values(),
    HEADLINE_FILE,
]
print(PLAN.banner(), file=sys.stderr)
if STALE and not AGGREGATE_ONLY:
    first, why = next(iter(STALE.items()))
    print(
        f"attnsweep: {len(STALE)} records of other code, settings or packages are measured again, "
        f"e.g. {first}: {why}",
        file=sys.stderr,
    )
elif LEFT_OUT and config["allow_missing"]:
    print(
        f"attnsweep: {len(LEFT_OUT)} records of other code or settings are left out of the tables "
        "until they are measured again",
        file=sys.stderr,
    )


# Through the SLURM executor (profiles/slurm): partition and GPU model checked against sinfo before any submission.
onstart:
    from attnsweep.cluster import check_slurm_submission

    check_slurm_submission(workflow)


# The rerun markers have done their work once every job has run (a failed run keeps them: inputs of jobs to run).
onsuccess:
    import shutil

    shutil.rmtree(f"{RESULTS}/.rerun", ignore_errors=True)
