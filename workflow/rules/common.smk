"""Parse-time adapter: the config, checked, into the run's settings, grid, code stamps and targets.

The logic is attnsweep.sweep's (tested with plain pytest); this file only calls it. A bad config stops the run here,
before any job starts. Nothing here starts torch or a GPU unless resuming a run needs its environment checked.
"""

import json
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import Paramspace

from attnsweep import codestamp, gpuslots, sweep
from attnsweep.vocabulary import AXES

WORKFLOW_ROOT = Path(workflow.basedir)
# What the user gave on the command line or in overlay config files: on the CPU demo it wins over cpu_demo's values.
EXPLICIT = workflow.config_settings.overwrite_config
try:
    sweep.validate_config(config, WORKFLOW_ROOT / "workflow/schemas/config.schema.yaml")
    GPUS = gpuslots.visible_gpus(config_value=config.get("gpus"))
    PLAN = sweep.plan_run(config, EXPLICIT, GPUS)
    if PLAN.device == "cuda" and not PLAN.aggregate_only:
        sweep.check_memory_cap(
            PLAN.settings["memory_cap_gib"], gpuslots.gpu_memory(GPUS[0]), PLAN.key_name
        )
except sweep.SweepError as e:
    raise WorkflowError(str(e)) from None

RUN, RESULTS, DEVICE, AGGREGATE_ONLY = (
    PLAN.run,
    PLAN.results,
    PLAN.device,
    PLAN.aggregate_only,
)
PARAMSPACE = Paramspace(PLAN.grid)
# A two-stage cell (warm-up, then timed) unless the config asks for cold cells.
WARMUP = PLAN.settings["warmup"]["enabled"]
# Where each job takes its GPU (gpuslots): one timed cell per GPU, no warm-up on a GPU during measured steps.
GPU_LOCKS = f"{RESULTS}/.gpulocks"
GPU_OPTIONS = ["--gpu-locks", GPU_LOCKS] + (
    ["--gpus", ",".join(GPUS)] if GPUS and DEVICE == "cuda" else []
)
# On the CPU a cell trains on every core it is given (nothing else runs then); on a GPU it needs few, and the
# rest compile other cells.
CELL_THREADS = workflow.cores if DEVICE == "cpu" else min(2, workflow.cores)
WARMUP_THREADS = min(PLAN.settings["warmup"]["threads"], workflow.cores)


def cell_options(wildcards) -> str:
    """`attnsweep cell`/`warmup` options for the cell named by the wildcards (all but the paths)."""
    return shlex.join(PLAN.cell_options(PARAMSPACE.instance(wildcards)) + GPU_OPTIONS)


# Each axis wildcard matches exactly the values in the grid: a path outside it is not a cell of this run.
AXIS_CONSTRAINTS = {a: "|".join(str(v) for v in PLAN.grid[a].unique()) for a in AXES}
CELL_MESSAGE = " ".join(["cell", *(f"{a}={{wildcards.{a}}}" for a in AXES)])

# Cells and aggregations take ancient(stamp) as input, where the stamp's name is a hash of the code and settings:
# a change gives a new name, and Snakemake reruns what depends on it; file times (a fresh clone) do not matter.
CODE_DIR = WORKFLOW_ROOT / config["code_dir"]
if not (CODE_DIR / "__init__.py").is_file():
    raise WorkflowError(
        f"code_dir: {CODE_DIR} is not the attnsweep package source (no __init__.py)"
    )
STAMPS = {
    s["name"]: s
    for s in codestamp.sweep_stamps(
        CODE_DIR,
        config["code_dir"],
        WORKFLOW_ROOT / "workflow" / "scripts",
        PLAN.cell_settings,
        {"allow_mixed_env": PLAN.settings["allow_mixed_env"]},
    )
}
CELL_STAMP, REPORT_STAMP = (f"{RESULTS}/stamps/{name}.json" for name in STAMPS)


def stamp_text(wildcards) -> str:
    return json.dumps(
        STAMPS[f"{wildcards.kind}-{wildcards.digest}"], indent=1, sort_keys=True
    )


# Jobs call `python`: the interpreter running Snakemake, which has just imported attnsweep to read this workflow.
shell.prefix(
    f'set -euo pipefail; export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"; '
)

CELLS = expand(
    f"{RESULTS}/cells/{{params}}/cell.json", params=PARAMSPACE.instance_patterns
)
# A sweep run in parts: with allow_missing (aggregate_only only), the summary reads the cells present and lists the
# others as `missing`.
EXISTING_CELLS = [c for c in CELLS if Path(c).exists()]
PRESENT_CELLS = EXISTING_CELLS if config["allow_missing"] else CELLS
MISSING_CELLS = sorted(set(CELLS) - set(PRESENT_CELLS))


# Resuming a run: its kept cells must be of this machine's environment (only then is torch started here).
if (
    not (AGGREGATE_ONLY or PLAN.settings["allow_mixed_env"])
    and Path(CELL_STAMP).exists()
):
    from attnsweep.report.aggregate import kept_cells_conflict

    if conflict := kept_cells_conflict(EXISTING_CELLS, DEVICE, RESULTS):
        raise WorkflowError(conflict)
SUMMARY = f"{RESULTS}/summary.csv"
TABLES = {name: f"{RESULTS}/tables/{name}.md" for name in ("compiled", "eager", "all")}
# Only the figures this grid can give data to (no fa2-vs-sdpa without fa2, no memory on the CPU).
from attnsweep.report.aggregate import figure_names

FIGURES = {
    name: f"{RESULTS}/figures/{name}.png"
    for name in figure_names(PLAN.settings["grid"], DEVICE)
}
# The stamps and cells are targets themselves: a missing target runs, and everything downstream of it, also in a
# fresh clone without .snakemake metadata, and behind a summary left by a partial aggregation.
# The report's first page: written by rule headline (aggregate.smk).
HEADLINE_FILE = f"{RESULTS}/headline.rst"
ALL_TARGETS = [
    *([] if AGGREGATE_ONLY else [CELL_STAMP, *CELLS]),
    REPORT_STAMP,
    SUMMARY,
    *TABLES.values(),
    *FIGURES.values(),
    HEADLINE_FILE,
]

print(PLAN.banner(), file=sys.stderr)


# Through the SLURM executor (profiles/slurm): partition and GPU model checked against sinfo before any submission.
onstart:
    from attnsweep.cluster import check_slurm_submission

    check_slurm_submission(workflow)
