"""Parse-time logic: config checks, the grid of cells, code stamps, target lists and job helpers.

Everything here runs when Snakemake reads the workflow, so a bad config stops the run before any job starts.
"""

import hashlib
import itertools
import json
import re
import shlex
import sys
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import Paramspace, validate

# The axes of the grid, in the order of the cell folders (model~small/seq_len~1024/attn~sdpa/...).
AXES = [
    "model",
    "seq_len",
    "attn",
    "mode",
    "kv_heads",
    "precision",
    "optimizer",
    "harness",
]
# Where stamp files, cells and code paths are resolved from: the directory of the Snakefile.
WORKFLOW_ROOT = Path(workflow.basedir)


class ConfigError(WorkflowError):
    """A config value that cannot run: raised at parse time, before any job."""


def validate_config() -> None:
    """The schema check (which fills in defaults), reported as the key and what is wrong with it.

    Snakemake's own message prints the whole schema; the first line of the jsonschema error is what matters.
    """
    import jsonschema

    try:
        validate(config, "../schemas/config.schema.yaml")
    except WorkflowError as e:
        # raised while handling the jsonschema error, which is therefore its context
        cause = e.__context__
        if not isinstance(cause, jsonschema.ValidationError):
            raise
        where = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
        raise ConfigError(
            f"config: {where}: {cause.message} "
            f"(schema: workflow/schemas/config.schema.yaml)"
        ) from None


validate_config()


def resolve_device(requested: str) -> str:
    """auto -> cuda or cpu; cuda without a visible GPU fails here, not in the first cell."""
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise ConfigError(
            f"device: cuda, but no CUDA GPU is visible (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False). Use device: auto for the CPU demo, or device: cpu."
        )
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested


# aggregate_only measures nothing, so it needs no device: the config's own value is kept for the stamps' sake.
AGGREGATE_ONLY = config["aggregate_only"]
DEVICE = config["device"] if AGGREGATE_ONLY else resolve_device(config["device"])
# The study grid is for a GPU; on a machine without one, `auto` falls back to the small grid of cpu_demo.
CPU_DEMO = config["device"] == "auto" and DEVICE == "cpu"
if CPU_DEMO and "cpu_demo" not in config:
    raise ConfigError(
        "device: auto found no CUDA GPU and the config has no cpu_demo section; "
        "add one, or set device: cpu to run the grid itself on the CPU."
    )
SETTINGS = {
    **{k: v for k, v in config.items() if k != "cpu_demo"},
    **(config["cpu_demo"] if CPU_DEMO else {}),
}


def key_name(key: str) -> str:
    """The config key as the user wrote it (cpu_demo.grid.seq_len when the demo section supplied it)."""
    top = key.split(".")[0]
    demo = CPU_DEMO and top in config["cpu_demo"]
    return f"cpu_demo.{key}" if demo else key


def check_settings(settings: dict) -> None:
    """The checks a JSON schema cannot express; each error names the key and the allowed values."""
    from attnsweep.attention import names
    from attnsweep.model import MODEL_CONFIGS

    if settings["window"] > settings["steps"]:
        raise ConfigError(
            f"{key_name('window')} ({settings['window']}) must not exceed "
            f"{key_name('steps')} ({settings['steps']}): throughput is averaged over the last window steps"
        )
    grid = settings["grid"]
    for axis in AXES:
        values = [str(v) for v in grid[axis]]
        dups = sorted({v for v in values if values.count(v) > 1})
        if dups:
            raise ConfigError(f"{key_name(f'grid.{axis}')}: duplicate values {dups}")
    allowed = {"model": list(MODEL_CONFIGS), "attn": names()}
    for axis, valid in allowed.items():
        listed = list(grid[axis])
        for entry in grid["exclude"]:
            value = entry.get(axis, [])
            listed += value if isinstance(value, list) else [value]
        listed += list(grid["max_seq_len"]) if axis == "model" else []
        unknown = sorted({v for v in listed if v not in valid})
        if unknown:
            raise ConfigError(
                f"{key_name('grid')}: unknown {axis} {unknown}; valid: {', '.join(valid)}"
            )


def matches(df: pd.DataFrame, entry: dict) -> pd.Series:
    """Rows matching every key of one exclude entry (a value or a list of values per key)."""
    mask = pd.Series(True, index=df.index)
    for axis, value in entry.items():
        mask &= df[axis].isin(value if isinstance(value, list) else [value])
    return mask


def expand_grid(grid: dict) -> pd.DataFrame:
    """One row per cell: the product of the axes, kv_heads resolved per model, less max_seq_len and exclude."""
    from attnsweep.model import MODEL_CONFIGS

    df = pd.DataFrame(itertools.product(*(grid[a] for a in AXES)), columns=AXES)
    heads = df["model"].map(lambda m: MODEL_CONFIGS[m].n_head)
    # 'heads' means plain multi-head attention: written out, so the folder and the JSON say the number.
    df["kv_heads"] = df["kv_heads"].where(df["kv_heads"] != "heads", heads).astype(int)
    df = df.drop_duplicates()
    limit = df["model"].map(grid["max_seq_len"]).fillna(float("inf"))
    df = df[df["seq_len"] <= limit]
    for entry in grid["exclude"]:
        df = df[~matches(df, entry)]
    if df.empty:
        raise ConfigError(
            f"{key_name('grid')}: no cell left after max_seq_len and exclude; nothing to run"
        )
    bad = df[df["model"].map(lambda m: MODEL_CONFIGS[m].n_head) % df["kv_heads"] != 0]
    if not bad.empty:
        pairs = sorted({(m, int(k)) for m, k in zip(bad["model"], bad["kv_heads"])})
        what = ", ".join(
            f"{k} does not divide the {MODEL_CONFIGS[m].n_head} heads of {m}"
            for m, k in pairs
        )
        raise ConfigError(
            f"{key_name('grid.kv_heads')}: must divide the model's heads; {what} "
            "(drop them with grid.exclude)"
        )
    return df.reset_index(drop=True)


check_settings(SETTINGS)


def check_memory_cap(cap_gib: float | None) -> None:
    """A cap above the GPU's memory would only fail in every cell: refuse it here, before any job."""
    if DEVICE != "cuda" or AGGREGATE_ONLY or cap_gib is None:
        return
    import torch

    props = torch.cuda.get_device_properties(0)
    if cap_gib * 2**30 > props.total_memory:
        raise ConfigError(
            f"{key_name('memory_cap_gib')}: {cap_gib} GiB exceeds the "
            f"{props.total_memory / 2**30:.1f} GiB of {props.name}"
        )


check_memory_cap(SETTINGS["memory_cap_gib"])
GRID = expand_grid(SETTINGS["grid"])
PARAMSPACE = Paramspace(GRID)
RUN = SETTINGS["run"]
RESULTS = f"results/{RUN}"
# A cell runs on the GPU one at a time (profile: resources gpu=1); on the CPU cells claim no GPU.
GPU_PER_CELL = 0 if DEVICE == "cpu" else 1


def cell_settings(settings: dict) -> dict:
    """The non-axis inputs of every cell, named as the CLI's options; only those the batch policy uses."""
    batch = settings["batch"]
    out = {
        "batch_policy": batch["policy"],
        "batch_size": batch.get("size") if batch["policy"] == "fixed" else None,
        "batch_start": batch["start"] if batch["policy"] == "search" else None,
        "steps": settings["steps"],
        "window": settings["window"],
        # The cap means nothing on the CPU; leaving it out keeps the demo's stamp independent of it.
        "memory_cap_gib": settings["memory_cap_gib"] if DEVICE == "cuda" else None,
        "device": DEVICE,
        "seed": settings["seed"],
    }
    return {k: v for k, v in out.items() if v is not None}


CELL_SETTINGS = cell_settings(SETTINGS)


def as_options(values: dict) -> list[str]:
    """{'seq_len': 64} -> ['--seq-len', '64']."""
    return [x for k, v in values.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def cell_options(wildcards) -> str:
    """`attnsweep cell` options for the cell named by the wildcards (all but --out)."""
    cell = PARAMSPACE.instance(wildcards)
    return shlex.join(as_options({**cell, **CELL_SETTINGS, "run": RUN}))


# Each axis wildcard matches exactly the values in the grid: a path outside it is not a cell of this run.
AXIS_CONSTRAINTS = {
    axis: "|".join(re.escape(str(v)) for v in GRID[axis].unique()) for axis in AXES
}
# Snakemake's progress line says "n of m steps done"; the message says which cell starts.
CELL_MESSAGE = " ".join(["cell", *(f"{a}={{wildcards.{a}}}" for a in AXES)])


# ---- code stamps ------------------------------------------------------------------------------------------------
# Cells and aggregations do not take source files as inputs: a fresh clone gives every file a new mtime and would
# make committed results look stale. They take ancient(stamp) instead, where the stamp's *name* is a hash of the
# code and settings: any change gives a new name, the stamp rule runs, and Snakemake reruns everything downstream.


def resolve_code_dir() -> Path:
    path = WORKFLOW_ROOT / config["code_dir"]
    if not (path / "__init__.py").is_file():
        raise ConfigError(
            f"code_dir: {path} is not the attnsweep package source (no __init__.py); "
            "set code_dir relative to the directory of the Snakefile"
        )
    return path


CODE_DIR = resolve_code_dir()


def file_hashes(root: Path, label: str, files: list[Path]) -> dict[str, str]:
    """{label/relative path: sha256}: names relative to `root`, so the digest is the same on every machine."""
    return {
        f"{label}/{f.relative_to(root).as_posix()}": hashlib.sha256(
            f.read_bytes()
        ).hexdigest()
        for f in sorted(files)
    }


def make_stamp(kind: str, files: dict[str, str], settings: dict) -> dict:
    body = json.dumps({"files": files, "settings": settings}, sort_keys=True)
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return {
        "name": f"{kind}-{digest}",
        "digest": digest,
        "files": files,
        "settings": settings,
    }


def cell_code_files() -> dict[str, str]:
    """Everything a cell runs (the selection lives in attnsweep.status, which compares results with it)."""
    from attnsweep.status import cell_code_files as cell_code_paths

    return file_hashes(CODE_DIR, config["code_dir"], cell_code_paths(CODE_DIR))


def report_code_files() -> dict[str, str]:
    scripts = WORKFLOW_ROOT / "workflow" / "scripts"
    return {
        **file_hashes(CODE_DIR, config["code_dir"], list(CODE_DIR.glob("report/*.py"))),
        **file_hashes(scripts, "workflow/scripts", list(scripts.glob("*.py"))),
    }


STAMPS = {
    s["name"]: s
    for s in (
        make_stamp("cells", cell_code_files(), CELL_SETTINGS),
        make_stamp(
            "report",
            report_code_files(),
            {"allow_mixed_env": SETTINGS["allow_mixed_env"]},
        ),
    )
}
CELL_STAMP, REPORT_STAMP = (f"{RESULTS}/stamps/{name}.json" for name in STAMPS)


def stamp_text(wildcards) -> str:
    return json.dumps(
        STAMPS[f"{wildcards.kind}-{wildcards.digest}"], indent=1, sort_keys=True
    )


# Jobs call `python`: make it the interpreter running Snakemake, which has just imported attnsweep to read this
# workflow, as an activated environment would (also when snakemake is started as .venv/bin/snakemake).
# Snakemake's default prefix (bash strict mode) is replaced by this one, so it is repeated.
shell.prefix(
    f'set -euo pipefail; export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"; '
)


# ---- targets ----------------------------------------------------------------------------------------------------

CELLS = expand(
    f"{RESULTS}/cells/{{params}}/cell.json", params=PARAMSPACE.instance_patterns
)
# A sweep run in parts: with allow_missing (aggregate_only only), the summary reads the cells present and lists the
# others as `missing`, so a partial run still gets its tables, and they say what is not measured yet.
if config["allow_missing"] and not AGGREGATE_ONLY:
    raise ConfigError(
        "allow_missing: only with aggregate_only=True (a sweep that measures makes every cell)"
    )
EXISTING_CELLS = [c for c in CELLS if Path(c).exists()]
PRESENT_CELLS = EXISTING_CELLS if config["allow_missing"] else CELLS
MISSING_CELLS = sorted(set(CELLS) - set(PRESENT_CELLS))


def check_kept_cells_environment() -> None:
    """Cells kept from an earlier part of this run must come from this machine's environment (GPU, torch, CUDA,
    cuDNN, Triton, flash-attn): the summary refuses a mix, and would say so only after the sweep had spent its GPU
    time on the new cells. Cells are kept only while their stamp is current; after a code or settings change every
    cell is measured again, so there is nothing to check then."""
    if AGGREGATE_ONLY or SETTINGS["allow_mixed_env"] or not Path(CELL_STAMP).exists():
        return
    if not EXISTING_CELLS:
        return
    from attnsweep.report.aggregate import environment_conflict, machine_environment

    conflict = environment_conflict(EXISTING_CELLS, machine_environment(DEVICE))
    if conflict:
        raise ConfigError(
            f"{RESULTS} holds cells measured in another environment than this machine's: {conflict}. "
            "Throughputs from two environments are not comparable, so the new cells could not be tabled with "
            "the old. Measure into another run (--config run=NAME), move the old cells away, or set "
            "allow_mixed_env: true to get tables grouped by environment; to re-table the cells there are without "
            "measuring, use aggregate_only=True."
        )


check_kept_cells_environment()
SUMMARY = f"{RESULTS}/summary.csv"
TABLES = {name: f"{RESULTS}/tables/{name}.md" for name in ("compiled", "eager", "all")}
# Only the figures this grid can give data to (no fa2-vs-sdpa without fa2, no memory on the CPU).
from attnsweep.report.figures import figure_names

FIGURES = {
    name: f"{RESULTS}/figures/{name}.png"
    for name in figure_names(SETTINGS["grid"], DEVICE)
}
# The stamps are targets themselves: Snakemake does not rerun a job because an input is missing (here, after a
# code change, the stamp with the new name), only because a job it depends on runs. A missing target does run,
# and then everything downstream of it, also where there is no .snakemake metadata (a fresh clone).
# The cells are targets too: a summary left by a partial aggregation (allow_missing) is present and newer than the
# cells it read, and Snakemake would not look behind it for the cells still missing.
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

# Said at the start of every run, so a CPU demo is never mistaken for the study.
DEMO_NOTE = (
    "no CUDA GPU found, so this is the CPU DEMO (the cpu_demo section of the config)"
)
print(
    f"attnsweep: {len(GRID)} cells on {DEVICE} -> {RESULTS}/",
    f"-- {DEMO_NOTE}" if CPU_DEMO else "",
    file=sys.stderr,
)
