"""The sweep's definition: from a config to the settings of one run, its grid of cells, the path of each cell and
what makes two cells' environments the same.

Pure functions of the config and of the package's files, with no torch and no GPU: common.smk calls them while
Snakemake reads the workflow, the status command and the aggregation call them on a results folder, and
tests/test_sweep.py calls them directly.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import gpuslots
from .packages import DECIDE_SUPPORT
from .vocabulary import AXES, CHOICES, COMPILED_MODES, MODELS, kv_heads_problem, memory_kind



class SweepError(ValueError):
    """A setting that cannot run, named as the user wrote it: raised before any job starts."""


# ---- settings ---------------------------------------------------------------------------------------------------


def is_cpu_demo(config: Mapping, device: str) -> bool:
    """`device: auto` on a machine without a CUDA GPU runs the cpu_demo section instead of the GPU grid."""
    return config["device"] == "auto" and device == "cpu"


def run_settings(config: Mapping, cpu_demo: bool, explicit: Mapping = {}) -> dict:
    """The settings of the run being started: the top level, overlaid on the CPU demo by the cpu_demo section, and
    then by what the user gave explicitly (`--config` or an overlay config file), which always wins."""
    settings = {k: v for k, v in config.items() if k != "cpu_demo"}
    if cpu_demo:
        if "cpu_demo" not in config:
            raise SweepError(
                "device: auto found no CUDA GPU and the config has no cpu_demo section; "
                "add one, or set device: cpu to run the grid itself on the CPU."
            )
        demo = {k: v for k, v in config["cpu_demo"].items() if k not in explicit}
        # The top level's `first` and `compare_with` name cells and runs of the GPU grid, which the demo's grid does
        # not have.
        settings |= {k: [] for k in ("first", "compare_with") if k not in explicit} | demo
    return settings


def key_namer(config: Mapping, cpu_demo: bool, explicit: Mapping = {}) -> Callable[[str], str]:
    """Names a settings key as the user wrote it: cpu_demo.grid.seq_len where the demo section supplied it."""
    demo_keys = set(config.get("cpu_demo", {})) - set(explicit) if cpu_demo else set()

    def name(key: str) -> str:
        return f"cpu_demo.{key}" if key.split(".")[0] in demo_keys else key

    return name


def _plain(key: str) -> str:
    return key


def check_settings(settings: Mapping, name: Callable[[str], str] = _plain) -> None:
    """The checks a JSON schema cannot express; each error names the key as written and what is allowed."""
    if settings["window"] > settings["steps"]:
        raise SweepError(
            f"{name('window')} ({settings['window']}) must not exceed {name('steps')} ({settings['steps']}): "
            "throughput is averaged over the last window steps"
        )
    grid = settings["grid"]
    for axis in AXES:
        values = [str(v) for v in grid[axis]]
        dups = sorted({v for v in values if values.count(v) > 1})
        if dups:
            raise SweepError(f"{name(f'grid.{axis}')}: duplicate values {dups}")
    for axis, allowed in CHOICES.items():
        listed = {
            "grid": [*grid[axis], *(v for e in grid["exclude"] for v in _as_list(e.get(axis, []))),
                     *(grid["max_seq_len"] if axis == "model" else [])],
            "first": [v for e in settings["first"] for v in _as_list(e.get(axis, []))],
        }
        for key, values in listed.items():
            unknown = sorted({str(v) for v in values if v not in allowed})
            if unknown:
                raise SweepError(f"{name(key)}: unknown {axis} {unknown}; valid: {', '.join(allowed)}")
    tokens = settings["batch"].get("tokens")
    if tokens is not None:
        if settings["batch"]["policy"] != "tokens":
            raise SweepError(f"{name('batch.tokens')}: only for batch policy tokens (this run's is "
                             f"{settings['batch']['policy']})")
        if tokens < (longest := max(grid["seq_len"])):
            raise SweepError(f"{name('batch.tokens')}: {tokens} is less than the grid's longest context "
                             f"({longest}): a step holds one sequence at least")
    prior = settings["batch"].get("prior_run")
    if prior is not None:
        if settings["batch"]["policy"] != "search":
            raise SweepError(f"{name('batch.prior_run')}: only for batch policy search (this run's is "
                             f"{settings['batch']['policy']})")
        if prior == settings["run"]:
            raise SweepError(f"{name('batch.prior_run')}: {prior!r} is this run; name another run whose records "
                             "give each cell's peak memory")
        if not Path(f"{results_dir(prior)}/cells").is_dir():
            raise SweepError(f"{name('batch.prior_run')}: {results_dir(prior)}/cells does not exist (no run {prior!r} "
                             "here)")

    for i, other in enumerate(settings["compare_with"]):
        if other == settings["run"]:
            raise SweepError(f"{name('compare_with')}.{i}: {other!r} is this run; name another run to set beside it")
        if not Path(summary_path(other)).is_file():
            raise SweepError(f"{name('compare_with')}.{i}: {summary_path(other)} does not exist (no aggregated run "
                             f"{other!r} here)")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _matches(df: pd.DataFrame, entry: Mapping) -> pd.Series:
    """Rows matching every key of one exclude entry (a value or a list of values per key)."""
    mask = pd.Series(True, index=df.index)
    for axis, value in entry.items():
        mask &= df[axis].isin(_as_list(value))
    return mask


def is_grouped(model: str, kv_heads: Any) -> bool:
    """Whether a cell's keys and values have fewer heads than its model's queries (grouped or multi-query
    attention), the rule every label, table and answer uses. `kv_heads` may be a number or its text (a wildcard);
    none (a cell run by hand without --kv-heads records none) means as many as the queries, and so does a model this
    vocabulary does not know."""
    shape = MODELS.get(str(model))
    return shape is not None and kv_heads is not None and not pd.isna(kv_heads) and int(kv_heads) != shape.n_head


def expand_grid(grid: Mapping, name: Callable[[str], str] = _plain) -> pd.DataFrame:
    """One row per cell: the product of the axes, `heads` resolved per model, less max_seq_len and exclude."""
    df = pd.DataFrame(itertools.product(*(grid[a] for a in AXES)), columns=list(AXES))
    heads = df["model"].map(lambda m: MODELS[m].n_head)
    # 'heads' means plain multi-head attention: written out, so the folder and the JSON say the number.
    df["kv_heads"] = df["kv_heads"].where(df["kv_heads"] != "heads", heads).astype(int)
    df = df.drop_duplicates()
    limit = df["model"].map(grid["max_seq_len"]).fillna(float("inf"))
    df = df[df["seq_len"] <= limit]
    for entry in grid["exclude"]:
        df = df[~_matches(df, entry)]
    if df.empty:
        raise SweepError(f"{name('grid')}: no cell left after max_seq_len and exclude; nothing to run")
    problems = sorted({p for m, k in zip(df["model"], df["kv_heads"]) if (p := kv_heads_problem(m, int(k)))})
    if problems:
        raise SweepError(f"{name('grid.kv_heads')}: {'; '.join(problems)} (drop them with grid.exclude)")
    return df.reset_index(drop=True)


def check_config(config: Mapping, explicit: Mapping = {}
                 ) -> dict[bool, tuple[dict, pd.DataFrame, Callable, dict[str, int]]]:
    """Check the GPU grid and the CPU demo alike, whichever of them this machine runs: a typo in either is found
    on any machine, before any job. Returns, for each section (cpu_demo False/True), its settings, grid, key namer
    and the cells `first` names (first_cells)."""
    sections = [False, True] if "cpu_demo" in config else [False]
    checked = {}
    for demo in sections:
        settings = run_settings(config, demo, explicit)
        name = key_namer(config, demo, explicit)
        check_settings(settings, name)
        grid = expand_grid(settings["grid"], name)
        checked[demo] = (settings, grid, name, first_cells(grid, settings["first"], name))
    return checked


def first_cells(grid: pd.DataFrame, entries: Sequence[Mapping], name: Callable[[str], str] = _plain) -> dict[str, int]:
    """{path: tier} of the cells `first` names: an earlier entry's cells have the higher tier (the first entry's
    len(entries), the last's 1), a cell in several entries its earliest's. An entry that matches no cell of the grid
    is refused by its index."""
    tiers: dict[str, int] = {}
    for i, entry in enumerate(entries):
        match = _matches(grid, entry)
        if not match.any():
            raise SweepError(f"{name('first')}.{i}: {dict(entry)} matches no cell of the grid")
        for row in grid[match].to_dict("records"):
            tiers.setdefault(cell_path(row), len(entries) - i)
    return tiers


def coerce_text_values(value: Any, schema: Mapping, root: Mapping | None = None) -> Any:
    """`value` with every string that the schema wants as an integer, a number or a boolean turned into one.

    Snakemake passes list items given on the command line as strings (`--config 'grid={seq_len: [64, 128]}'`
    gives ['64', '128']); the schema then refuses them although the user wrote numbers.
    """
    root = root if root is not None else schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    for option in schema.get("anyOf", []):
        coerced = coerce_text_values(value, option, root)
        if coerced != value:
            return coerced
    kinds = schema.get("type", [])
    kinds = {kinds} if isinstance(kinds, str) else set(kinds)
    if isinstance(value, str):
        if "boolean" in kinds and value.lower() in ("true", "false"):
            return value.lower() == "true"
        for kind, convert in (("integer", int), ("number", float)):
            if kind in kinds:
                try:
                    return convert(value)
                except ValueError:
                    pass
        return value
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        subs = {k: props.get(k, extra if isinstance(extra, dict) else None) for k in value}
        return {k: coerce_text_values(v, subs[k], root) if subs[k] else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_text_values(v, schema["items"], root) for v in value]
    return value


# ---- cells ------------------------------------------------------------------------------------------------------


def results_dir(run: str) -> str:
    """A run's folder: its records, tables, figures and report (relative to the repository root)."""
    return f"results/{run}"


def summary_path(run: str) -> str:
    """A run's summary.csv, one row per cell (the aggregation's output, the tables' input)."""
    return f"{results_dir(run)}/summary.csv"


def cell_path(cell: Mapping) -> str:
    """The folder of a cell below results/{run}/cells: `model~small/seq_len~1024/...` (Snakemake's Paramspace)."""
    return "/".join(f"{axis}~{cell[axis]}" for axis in AXES)


def cell_axes(path: str | os.PathLike) -> dict[str, str]:
    """The axes a cell's path names (the inverse of cell_path; values as text)."""
    return dict(part.split("~", 1) for part in Path(path).parts if "~" in part)


def cell_settings(settings: Mapping, device: str) -> dict:
    """The non-axis inputs of every cell, named as the CLI's options; only those the batch policy uses."""
    batch = settings["batch"]
    out = {
        "batch_policy": batch["policy"],
        "batch_size": batch.get("size") if batch["policy"] == "fixed" else None,
        "batch_start": batch["start"] if batch["policy"] == "search" else None,
        "batch_tokens": batch.get("tokens") if batch["policy"] == "tokens" else None,
        "steps": settings["steps"],
        "window": settings["window"],
        # The cap means nothing on the CPU; leaving it out keeps the demo's stamp independent of it.
        "memory_cap_gib": settings["memory_cap_gib"] if device == "cuda" else None,
        "device": device,
        "seed": settings["seed"],
    }
    return {k: v for k, v in out.items() if v is not None}


def as_options(values: Mapping) -> list[str]:
    """{'seq_len': 64} -> ['--seq-len', '64']."""
    return [x for k, v in values.items() for x in (f"--{k.replace('_', '-')}", str(v))]


# ---- environments -----------------------------------------------------------------------------------------------
# What makes two measurements incomparable: cells that differ in any of these were measured under different
# conditions and are never tabled together silently. The GPU's model counts, not which of a host's GPUs ran the
# cell: two GPUs of one model and software are one environment. (name, path into the record), in env_id order.
ENV_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gpu", ("env", "gpu_name")),
    ("torch", ("env", "torch")),
    ("flash-attn", ("env", "versions", "flash-attn")),
    ("cuda", ("env", "cuda")),
    ("cudnn", ("env", "cudnn")),
    # Triton generates every compiled kernel but the attention's.
    ("triton", ("env", "versions", "triton")),
)


# Distributions whose kernels only some implementations run (the attention registry's `requires` names their
# modules): their version belongs to those cells' environment alone (kernel_versions). A record of any other
# implementation notes the version too where the package happens to be installed, which changes nothing it measured.
# flash-attn (FlashAttention-2) is in every cell's environment instead (ENV_FIELDS), as in the study's runs.
KERNEL_PACKAGES: dict[str, tuple[str, ...]] = {"flash-attn-4": ("fa4", "fa4_graphbreak", "sdpa_fa4")}


def dig(record: Any, keys: Sequence[str]) -> Any:
    """record[k1][k2]... or None where a level is missing."""
    for k in keys:
        if not isinstance(record, dict):
            return None
        record = record.get(k)
    return record


def environment_of(record: Mapping) -> dict[str, str | None]:
    """The ENV_FIELDS of one cell record, as text (None where the record has no value)."""
    values = {name: dig(record, keys) for name, keys in ENV_FIELDS}
    return {k: None if v is None else str(v) for k, v in values.items()}


def kernel_versions(attn: str, status: str | None, versions: Mapping[str, Any] | None) -> dict[str, str | None]:
    """The versions (`versions`: a record's env.versions) of the KERNEL_PACKAGES whose kernels a record of `attn`
    with `status` ran: two such records of other versions are of two environments, as two of ENV_FIELDS are. Empty
    for an implementation that runs none of them, and for a record that ran nothing (`unsupported`, `missing`)."""
    if status in ("unsupported", "missing"):
        return {}
    versions = versions or {}
    return {dist: None if pd.isna(v := versions.get(dist)) else str(v)
            for dist, attns in KERNEL_PACKAGES.items() if attn in attns}


def kernel_packages_text(cells: Iterable[tuple[str, str | None, Mapping[str, Any] | None]]) -> str:
    """The kernel packages that `cells` ((attn, status, env.versions) each) ran, each version with the implementations
    that ran it, e.g. "flash-attn-4 4.0.0b18 (fa4, sdpa_fa4)"; "" where none ran one. A version is no part of the
    environment that every cell of a run shares (ENV_FIELDS), as only its implementations' cells run the package."""
    ran: dict[str, dict[str, None]] = {}
    for attn, status, versions in cells:
        for dist, version in kernel_versions(attn, status, versions).items():
            ran.setdefault(f"{dist} {version or 'none recorded'}", {})[attn] = None
    order = [attn for attns in KERNEL_PACKAGES.values() for attn in attns]
    return "; ".join(f"{package} ({', '.join(sorted(attns, key=order.index))})" for package, attns in ran.items())


# ---- the run being started -------------------------------------------------------------------------------------


def resolve_device(requested: str, gpus: Sequence[str]) -> str:
    """auto -> cuda or cpu by whether a GPU is visible; cuda without one fails here, not in the first cell."""
    if requested == "cuda" and not gpus:
        raise SweepError(
            "device: cuda, but no GPU is visible (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES / gpus names none). "
            "Use device: auto for the CPU demo, or device: cpu."
        )
    if requested == "auto":
        return "cuda" if gpus else "cpu"
    return requested


@dataclass(frozen=True)
class RunPlan:
    """What Snakemake needs to lay out the run being started: its settings, device, grid and cell settings."""

    run: str
    device: str  # cuda or cpu; a run that only aggregates keeps the config's own value
    cpu_demo: bool
    aggregate_only: bool
    settings: dict
    grid: pd.DataFrame
    cell_settings: dict
    key_name: Callable[[str], str]
    # Cells measured before the others: {cell path: tier}, a higher tier first (first_cells).
    first: Mapping[str, int] = field(default_factory=dict)

    @property
    def results(self) -> str:
        return results_dir(self.run)

    def cell_options(self, cell: Mapping) -> list[str]:
        """`attnsweep cell` / `attnsweep warmup` options for one cell (all but the paths)."""
        return as_options({**{a: cell[a] for a in AXES}, **self.cell_settings, "run": self.run})

    def prior_record(self, cell: Mapping) -> str | None:
        """The record of `cell` in batch.prior_run, where there is one, for the search's first attempt."""
        prior = self.settings["batch"].get("prior_run")
        path = f"{results_dir(prior)}/cells/{cell_path(cell)}/cell.json" if prior else None
        return path if path and Path(path).is_file() else None

    def peer_records(self, cell: Mapping) -> list[str]:
        """Where this run keeps the records of `cell` with the grid's other attention of the same memory kind
        (vocabulary.memory_kind), for a search's first attempt: the job reads those there when it starts. Empty but
        for batch policy search."""
        if self.settings["batch"]["policy"] != "search":
            return []
        kind = memory_kind(str(cell["attn"]))
        return [f"{self.results}/cells/{cell_path({**cell, 'attn': attn})}/cell.json"
                for attn in dict.fromkeys(self.grid["attn"]) if attn != cell["attn"] and memory_kind(attn) == kind]

    def job_options(self, gpus: Sequence[str], gpu_bytes: int | None = None, slots: bool = True) -> list[str]:
        """Where each job takes its GPU (gpuslots): the run's lock folder, and on a GPU the sweep's GPUs and, where
        its memory (`gpu_bytes`) and the cap are known, how many warm-ups fit on one beside its timed job; none
        with `slots` False (a cluster's scheduler gives each job its GPU: cluster.scheduler_assigns_gpus); and the
        folder of the preloaded interpreter that forks its process (preload.py)."""
        on_gpu = gpus and self.device == "cuda"
        # On the CPU, GPUs the config names are simulated: each job takes one, as on a host of that many GPUs.
        named = gpus and self.device == "cpu" and self.settings.get("gpus") is not None
        cap = self.settings["memory_cap_gib"]
        # Compile seats only where warm-ups compile: in an eager grid each would wait for the one run seat at once.
        compiling = self.settings["warmup"]["compile_seats"] if set(self.grid["mode"]) & set(COMPILED_MODES) else 0
        per_gpu, compile_seats = (gpuslots.warmup_seats(gpu_bytes, cap and int(cap * 2**30), compiling) if on_gpu
                                  else (None, 0))
        slot_options = ["--gpu-locks", f"{self.results}/.gpulocks",
                        *(["--gpus", ",".join(gpus)] if on_gpu or named else []),
                        *(["--warmups-per-gpu", str(per_gpu)] if per_gpu is not None else []),
                        *(["--compile-seats", str(compile_seats)] if compile_seats else []),
                        *([] if self.settings["window_turns"] else ["--no-window-turns"])]
        return [*(slot_options if slots else []),
                *(["--preload", f"{self.results}/.preload"] if self.settings["preload"] else [])]

    def priority(self, cell: Mapping, repeat: int, timed: bool, long: bool = False) -> int:
        """A job's Snakemake priority: a timed job before every warm-up (the GPU waits for nothing once a cell's
        warm-up is done); then the cells `first` names, in the order of its entries; within an entry, and among the
        cells it does not name, a warm-up expected to take over half the part (`long`: is_long_warmup) first, then
        a started cell's later repeats before new cells (a sweep run in parts leaves whole cells, whose spread the
        tables need). `first` outranks the other cells' later repeats: it is for the cells a part must start at
        once, those expected to take nearly a whole part, which a deadline holds back once a part is under way (on
        an H100 on 2026-12-07, 13 later repeats' warm-ups took the cores first, and the four cells `first` named,
        expected at 417-446 s, came up 133 s in with 370-373 s left and were held back); `long` does the same for
        the cells no one named."""
        tier = self.first.get(cell_path(cell), 0)  # the first entry's is the highest; a cell not named: 0
        rank = 4 * tier + 2 * (long and not timed) + (repeat > 1)
        top = 4 * max(self.first.values(), default=0) + 3  # the highest rank of a warm-up
        return top + 1 + rank if timed else rank

    def first_grace_s(self, cell: Mapping) -> int:
        """The seconds from a part's start within which a warm-up of `cell` expected longer than the whole part may
        start (PART_START_ENV): FIRST_GRACE_S for a cell `first` names, else 0 (never)."""
        return FIRST_GRACE_S if cell_path(cell) in self.first else 0

    def warmup_gpus(self) -> int:
        """The `gpu` resource of a warm-up job: 1 where its batch search may fill the GPU (a GPU, no memory cap), so
        it holds the GPU alone as a timed job does (gpuslots), else 0 (capped warm-ups share a GPU). Counted against
        `--resources gpu=K`, a finished warm-up's timed job (higher priority) gets the next free GPU: without the
        count, every uncapped warm-up the cores allow waits on the GPUs' locks beside the timed jobs, and a lock
        is not taken in turn (on an H200 x2 host: 12 warm-ups done, 1 cell measured in a 7-minute part)."""
        return int(self.device == "cuda" and self.settings["memory_cap_gib"] is None)

    def threads(self, cores: int) -> tuple[int, int]:
        """Cores of a timed cell and of a warm-up job. On the CPU a cell trains on all it is given (nothing runs
        beside it); on a GPU it needs few, and the rest compile other cells."""
        cell = cores if self.device == "cpu" else min(2, cores)
        return cell, min(self.settings["warmup"]["threads"], cores)

    def banner(self) -> str:
        demo = (" -- no CUDA GPU found, so this is the CPU DEMO (the cpu_demo section of the config)"
                if self.cpu_demo else "")
        return f"attnsweep: {len(self.grid)} cells on {self.device} -> {self.results}/{demo}"


def plan_run(config: Mapping, explicit: Mapping, gpus: Sequence[str]) -> RunPlan:
    """The run a validated config starts on a machine whose visible GPUs are `gpus`; SweepError names what is wrong."""
    aggregate_only = config["aggregate_only"]
    if config["allow_missing"] and not aggregate_only:
        raise SweepError("allow_missing: only with aggregate_only=True (a sweep that measures makes every cell)")
    checked = check_config(config, explicit)
    # aggregate_only measures nothing, so it needs no device: the config's own value is kept for the stamps' sake.
    device = config["device"] if aggregate_only else resolve_device(config["device"], gpus)
    demo = is_cpu_demo(config, device)
    if demo not in checked:
        run_settings(config, demo, explicit)  # raises: no cpu_demo section
    settings, grid, name, first = checked[demo]
    return RunPlan(run=settings["run"], device=device, cpu_demo=demo, aggregate_only=aggregate_only,
                   settings=settings, grid=grid, cell_settings=cell_settings(settings, device), key_name=name,
                   first=first)


def record_name(repeat: int) -> str:
    """The file name of a cell's record of `repeat`: cell.json for repeat 1, repeat-N.json for N (record_repeat's
    inverse)."""
    return "cell.json" if repeat == 1 else f"repeat-{repeat}.json"


def repeat_paths(cells: Sequence[str], repeats: int) -> list[str]:
    """The records of repeats 2..`repeats` of each cell (`.../cell.json` is repeat 1): `.../repeat-2.json`, ..."""
    return [str(Path(c).with_name(record_name(r))) for c in cells for r in range(2, repeats + 1)]


def record_repeat(stem: str) -> int:
    """The repeat a record's file name (without `.json`) is of: 1 for `cell`, N for `repeat-N` (repeat_paths)."""
    return 1 if stem == "cell" else int(stem.removeprefix("repeat-"))


def split_present(cells: Sequence[str], allow_missing: bool,
                  stale: Collection[str] = ()) -> tuple[list[str], list[str]]:
    """(cells to aggregate, cells listed as not measured yet): with allow_missing, only the cell files present and
    not `stale` (see stale_to_leave_out)."""
    if not allow_missing:
        return list(cells), []
    present = [c for c in cells if Path(c).exists() and c not in stale]
    return present, sorted(set(cells) - set(present))


def stale_records(paths: Sequence[str], source_sha256: str, settings: Mapping,
                  installed: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """{path: why} of the records among `paths` that are present and stale (stale_reason), and the later repeats of
    a cell whose first record is: they were measured at its batch size, and are measured again after it (a kept
    warm-up of theirs goes with them: rule warmup's input `rerun`)."""
    stale = {p: why for p in paths if (why := stale_reason(p, source_sha256, settings, installed))}
    for p in _later_repeats(paths, stale) - stale.keys():
        stale[p] = "measured at the batch size of its cell's first record (cell.json), which is measured again"
    return stale


def _later_repeats(paths: Sequence[str], records: Collection[str]) -> set[str]:
    """The records among `paths` that are present and of a cell whose first record (`cell.json`) is in `records`."""
    firsts = {str(Path(p).parent) for p in records if Path(p).name == "cell.json"}
    return {p for p in paths if str(Path(p).parent) in firsts and Path(p).exists()}


def stale_to_leave_out(paths: Sequence[str], stale: Collection[str], settings: Mapping) -> set[str]:
    """The records among `paths` that a partial aggregation leaves out, as not measured yet: in a run being resumed
    at the current code and settings, the `stale` ones (stale_records: with a stale first record, its cell's later
    repeats), which wait for their rerun like missing ones. A run none of whose records is current (one kept as
    history, whose records may span code versions that changed nothing they ran) is tabled as it is, but where some
    of its records have the run's cell `settings` and others not (other_settings), the others and their cells' later
    repeats are left out: they measured something else (other steps, another token batch) than the tables' settings
    line says. None with the run's settings: the config is not the one they ran with, and they are tabled as before."""
    present = [p for p in paths if Path(p).exists()]
    if not all(p in stale for p in present):
        return set(stale)
    other = {p for p in present if not (r := read_records([p])) or other_settings(r[0], settings)}
    if other == set(present):
        return set()
    return other | _later_repeats(present, other)


def records_digest(paths: Sequence[str]) -> str:
    """A digest of which records are tabled and what each holds: in the report stamp of an aggregation of records
    already there, so that a changed or newly left-out record reruns it where file times cannot tell (a fresh clone)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.encode() + b"\0" + hashlib.sha256(Path(p).read_bytes()).digest())
    return h.hexdigest()[:16]


# Cell settings a record does not hold: a change of one alone shows only through the cells stamp.
_UNRECORDED_SETTINGS = {"batch_start"}


def stale_reason(record_path: str | os.PathLike[str], source_sha256: str, settings: Mapping,
                 installed: Mapping[str, str | None] | None = None) -> str | None:
    """Why the cell record at `record_path` is not of the code (`source_sha256`, codestamp.source_hash) and cell
    `settings` (cell_settings) a cell would run with now, or is `unsupported` by packages other than `installed`
    ({distribution: version or None}, packages.versions(); None: not asked); None where it is, or where there is no
    record (a missing one runs anyway).

    The cells stamp alone does not tell: Snakemake reruns a record whose inputs changed only where its metadata of
    that record is (the machine that measured it), and a new stamp reruns every cell only in the first part of a
    sweep. A sweep stopped part-way after a code change and resumed on another machine would keep the old code's
    records beside the new ones. The record says what measured it, so it is asked."""
    path = Path(record_path)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    return record_stale_reason(record, source_sha256, settings, installed)


def record_stale_reason(record: Mapping, source_sha256: str, settings: Mapping,
                        installed: Mapping[str, str | None] | None = None) -> str | None:
    """stale_reason of a record already read."""
    code = dig(record, ("env", "code", "source_sha256"))
    if code != source_sha256:
        return f"measured by other code (source {str(code)[:12]}, now {source_sha256[:12]})"
    if why := other_settings(record, settings):
        return why
    return None if installed is None else unsupported_by_other_packages(record, installed)


def other_settings(record: Mapping, settings: Mapping) -> str | None:
    """Which of the cell `settings` (cell_settings) the record was measured with otherwise, in words; None if none."""
    cell = record.get("cell") if isinstance(record.get("cell"), dict) else {}
    for key, now in settings.items():
        if key in _UNRECORDED_SETTINGS:
            continue
        # A fixed batch size is the record's own; a record that could not run at it (oom, unsupported) keeps it.
        then = record.get("batch_size") if key == "batch_size" else cell.get(key)
        if key == "batch_size" and record.get("status") != "ok":
            continue
        if not _same_setting(then, now):
            return f"measured with {key} {then!r}, now {now!r}"
    return None


def unsupported_by_other_packages(record: Mapping, installed: Mapping[str, str | None]) -> str | None:
    """Why a record, where it is `unsupported`, may not hold with the packages `installed` now; None for a record of
    any other status. Whether a cell can run at all is asked where it would run, and the answer depends on what is
    installed there (a module that did not import, a version check): a record made without flash-attn-4, say, is
    asked again once it is installed, where an `ok` record measured with other versions is a result of its
    environment and stays."""
    if record.get("status") != "unsupported":
        return None
    then = dig(record, ("env", "versions")) or {}
    for dist in DECIDE_SUPPORT:
        if dist in installed and then.get(dist) != installed[dist]:
            was, now = then.get(dist) or "not installed", installed[dist] or "not installed"
            return f"unsupported with {dist} {was}, now {now}"
    return None


def _same_setting(a: Any, b: Any) -> bool:
    """Equal, with numbers compared as numbers (a cap of 12 is recorded as 12.0)."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b)
    return a == b


def check_memory_cap(cap_gib: float | None, gpu: tuple[str, int] | None, name: Callable[[str], str] = _plain) -> None:
    """A cap above the GPU's memory would only fail in every cell: refuse it before any job. `gpu` is the
    (name, total bytes) of the sweep's first GPU, or None where it is unknown."""
    if cap_gib is None or gpu is None:
        return
    gpu_name, total = gpu
    if cap_gib * 2**30 > total:
        raise SweepError(f"{name('memory_cap_gib')}: {cap_gib} GiB exceeds the {total / 2**30:.1f} GiB of {gpu_name}")


def validate_config(config: dict, schema_path: str | os.PathLike) -> None:
    """Check `config` against the JSON schema, in place: numbers given as text become numbers, defaults are filled
    in (as Snakemake's validate does), and an error is one sentence naming the key."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    config.update(coerce_text_values(dict(config), schema))
    base = jsonschema.validators.validator_for(schema)

    def fill_defaults(validator, properties, instance, schema_):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema_)

    filling = jsonschema.validators.extend(base, {"properties": fill_defaults})
    error = jsonschema.exceptions.best_match(filling(schema).iter_errors(config))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise SweepError(f"config: {where}: {error.message} (schema: {Path(schema_path).name})")


# ---- a deadline for the jobs a sweep starts ---------------------------------------------------------------------
# A sweep given a fixed time (a part on a GPU lent for minutes, a reservation's end) is stopped at its end, and the
# job then running leaves nothing: a timed cell stopped 81 s into 83 s cost those 81 s. With ATTNSWEEP_DEADLINE set,
# a job expected to end after it does not start (workflow/scripts/start-before-deadline.sh), so the sweep ends early
# and the time is not spent; the same command runs the job later. The expectations come from what the run has
# measured, and lean long: a job wrongly held back costs a few seconds of a sweep's end, one cut off all of its work.

DEADLINE_ENV = "ATTNSWEEP_DEADLINE"
# A part's start: when the sweep's Snakemake process read the workflow (seconds since the epoch), which its jobs
# inherit (mark_part_start). A warm-up expected longer than the whole part, from that start to the deadline, is held
# back in every part, so its cell is never measured: where `first` names the cell, the check lets it start if it
# comes up within FIRST_GRACE_S of the part's start (`first` puts it there), and the deadline cuts it off if it runs
# that long. Estimates lean long (a search's: its longest like attempt times COLD_SPREAD), so such a cell may fit.
PART_START_ENV = "ATTNSWEEP_PART_START"
FIRST_GRACE_S = 120
# A warm-up expected to take more than this share of a part goes before the other warm-ups of its `first` entry, or
# of the cells `first` does not name (RunPlan.priority): the longest first, as a deadline packs best. One that comes
# up after the part's middle is held back, and a cell that no part starts early enough is never measured; shorter
# warm-ups fit in around it.
LONG_WARMUP_SHARE = 0.5
# The first words of a held-back job's log (the logger plugin counts such jobs apart from failures).
NOT_STARTED = "attnsweep: not started"
# A job's time besides its cell process's `duration_s`: Snakemake starting it, the interpreter and its imports
# (1-3 s between a timed job's wall time and its record's duration on an H200, results/h200/benchmarks/).
JOB_START_S = 5.0
# A timed job measured again at the same size takes what it took: repeat 2's took 0.85-1.05 times repeat 1's in the
# 32 cells of results/h200 with both.
REPEAT_SPREAD = 1.05
# Compiling cold differs more: there, repeat 2's warm-up attempt took 0.52-1.38 times repeat 1's at the same size.
COLD_SPREAD = 1.5
# A timed job's first step loads the warm-up's compiled code: on an H200 it took 0.09-0.36 of the cold one, at most
# 10 s (GPT-2 large, naive, 2048: 9.6 s after 81 s cold), and about as long as it for an eager cell (nothing to
# compile); bounded above by the cold one and by 10 s plus a fifth of it.
WARM_FIRST_STEP_S, WARM_FIRST_STEP_SHARE = 10.0, 0.2
# The timed job's later steps go at its warm-up's steady pace: the median of the warm-up's steps from the third on.
# The first is the cold compilation, the second still does work once (CUDA graph trees record there), and some
# implementations compile a second graph at the third; of the eight from the third, the median passes over up to
# three slow ones (autotuning, a warm-up stopped while a timed job's window holds its GPU), where a mean would carry
# them and the median of the last half (five) passes over two.
STEADY_FROM_STEP = 3
# That pace stretched: a timed job's steps before its window share the GPU with warm-ups (in results/h200 they took
# up to 1.54 times their median pace times their number: steps of 17-18 s among steps of 0.5 s), and its setup and
# profiled step (0.5-3.5 s) have only JOB_START_S's margin. Over results/h200's 174 timed jobs after a warm-up, with
# their own steps 3-10 standing in for their warm-ups' (not kept then), their wall needed a stretch of at most 1.26
# (median 1.0); 1.3 covers them, at 1.03-2.9 times their wall (median 1.5; the mean pace gave 1.1-4.8, median 1.9).
# Leaning long is the cheaper error: a job wrongly held back costs seconds of the sweep's end, one cut off all its
# work.
STEADY_SPREAD = 1.3


def read_deadline(environ: Mapping[str, str] = os.environ) -> float | None:
    """ATTNSWEEP_DEADLINE: the time (seconds since the epoch) by which every job the sweep starts should have
    ended; None where it is unset or empty. A value that is not such a time is refused before any job."""
    value = environ.get(DEADLINE_ENV, "").strip()
    if not value:
        return None
    # Plain digits only: the check before each job (workflow/scripts/start-before-deadline.sh) does integer
    # arithmetic in the shell on the value less its fraction, which `float` spellings such as 1.8e9 or 1_800 break.
    deadline = float(value) if re.fullmatch(r"[0-9]+(\.[0-9]*)?", value) else math.nan
    if not math.isfinite(deadline) or deadline <= 0:
        raise SweepError(f"{DEADLINE_ENV}={value!r} is not a time in seconds since the epoch "
                         "(e.g. $(date -d '+50 min' +%s))")
    return deadline


def mark_part_start(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets PART_START_ENV to now unless it is set: the first process to read the workflow marks the part's start,
    and a process it starts that reads the workflow again keeps its mark."""
    environ.setdefault(PART_START_ENV, str(int(time.time())))


def is_long_warmup(expected_s: float, deadline: float | None,
                   environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a warm-up expected to take `expected_s` up to the end of its timed job (expected_warmup_s) needs
    more than LONG_WARMUP_SHARE of the part, from its start (PART_START_ENV, mark_part_start) to `deadline`: False
    without a deadline, a part start or an estimate."""
    start = environ.get(PART_START_ENV, "")
    if deadline is None or not start.isdigit() or expected_s <= 0:
        return False
    return expected_s > LONG_WARMUP_SHARE * (deadline - int(start))


def _warmup_attempts(record: Mapping, outcomes: Collection[str] = ("ok",)) -> list[dict]:
    return [a for a in record.get("batch_attempts") or []
            if a.get("stage") == "warmup" and a.get("outcome") in outcomes and a.get("seconds") is not None]


def _measured_again_s(records: Sequence[Mapping]) -> float | None:
    """A timed job that measures what one of `records` measured: the longest that ran, stretched as a repeat's
    time is; None where none ran."""
    seconds = [r["duration_s"] for r in records if r.get("status") == "ok" and r.get("duration_s")]
    return max(seconds) * REPEAT_SPREAD + JOB_START_S if seconds else None


def _warm_steps(warmup: Mapping, steps: int) -> int:
    return min(int(warmup.get("steps") or 0), steps)  # a run of fewer steps warms up with as many


def _tail_overhead_s(record: Mapping, steps: int) -> float | None:
    """In a measured record, the seconds its warm-up's attempt at the record's size spent after the cold first step
    beyond that many steps at the timed window's pace (the attempt's profiled step, its memory readings, its
    process ending): what `timed_job_s` takes off a warm-up's pace. None where the record does not tell."""
    warmup, times = record.get("warmup") or {}, record.get("step_times_s") or []
    attempts = [a for a in _warmup_attempts(record) if a["batch_size"] == record.get("batch_size")]
    warm_steps = _warm_steps(warmup, steps)
    if record.get("status") != "ok" or not attempts or not warmup.get("first_step_s") or warm_steps < 2 \
            or len(times) < 2:
        return None
    pace = statistics.median(times[1:])
    return attempts[-1]["seconds"] - warmup["first_step_s"] - (warm_steps - 1) * pace


def timed_job_s(batch_size: int | None, warmup: Mapping | None, records: Sequence[Mapping],
                steps: int, like: Sequence[Mapping] = ()) -> float | None:
    """The seconds a cell's timed job at `batch_size` is expected to take: the longest of the cell's other
    records at that size (its other repeats), else from its warm-up, whose attempt at that size ran `warmup.steps`
    training steps with a cold compilation for the first: the timed job's first step, which loads what that one
    compiled (WARM_FIRST_STEP_S, _SHARE), JOB_START_S, and `steps` - 1 steps after it, at the warm-up's steady pace
    (the median of its `step_times_s` from STEADY_FROM_STEP on, stretched by STEADY_SPREAD). None where neither is
    known.

    A warm-up without step times (records before they were kept) gives its attempt's mean pace after the first step,
    which includes the attempt's work besides its steps (its profiled step, its process ending), which 124 steps
    multiply. `like`, the run's records of cells of the same model that differ in the attention or the context,
    tell it apart: the least such work any of them shows is taken off the pace, and the longest first step any of
    them loaded from its warm-up, stretched by COLD_SPREAD, bounds the first step. On results/h200's 168 compiled
    records, each estimated from the records of the other cells, this came to 1.14-4.5 times the timed job's wall
    time (median 1.42; 1.31-4.8, median 1.99, without `like`): short cells are over most, their first step and start
    being most of their time."""
    if (again := _measured_again_s([r for r in records if r.get("batch_size") == batch_size])) is not None:
        return again
    if not warmup or warmup.get("status") != "ok" or not warmup.get("first_step_s"):
        return None
    cold = float(warmup["first_step_s"])
    first = min(cold, WARM_FIRST_STEP_S + WARM_FIRST_STEP_SHARE * cold)
    # The step times are those of the warm-up's attempt at its own batch size.
    times = warmup.get("step_times_s") if warmup.get("batch_size") == batch_size else None
    if steady := (times or [])[STEADY_FROM_STEP - 1:]:
        return first + (steps - 1) * statistics.median(steady) * STEADY_SPREAD + JOB_START_S
    attempts = [a for a in _warmup_attempts(warmup) if a["batch_size"] == batch_size]
    warm_steps = _warm_steps(warmup, steps)
    if not attempts or warm_steps < 2:
        return None
    overheads = [s for r in like if (s := _tail_overhead_s(r, steps)) is not None]
    loaded = [float(r["compile"]["first_step_s"]) for r in like
              if r.get("status") == "ok" and (r.get("compile") or {}).get("first_step_s")]
    tail = max(0.0, attempts[-1]["seconds"] - cold)
    pace = max(0.0, tail - max(0.0, min(overheads, default=0.0))) / (warm_steps - 1)
    bound = max(loaded) * COLD_SPREAD if loaded else WARM_FIRST_STEP_S + WARM_FIRST_STEP_SHARE * cold
    return min(cold, bound) + (steps - 1) * pace + JOB_START_S


# The cells whose records a first repeat's warm-up is expected from (like_records' tries, in turn until one finds
# any): those that differ from it in the attention only, else in the context too, else in the mode too. The last is
# for a mode nothing of which is measured yet (eager, measured last): a warm-up expecting nothing is never held back,
# and near a part's end such warm-ups ran while the deadline held back the others: in h100-modern's parts of
# 2026-12-06, 32 eager warm-ups finished, each holding the GPU's timed lock (run seats 0) for its attempts (1.1-76 s in
# their search logs, an attempt), and no eager cell was measured. From any mode an estimate leans long (cold compiles).
WARMUP_LIKE: tuple[tuple[str, ...], ...] = (("attn",), ("attn", "seq_len"), ("attn", "seq_len", "mode"))


def warmup_job_s(first: Mapping | None, like: Sequence[Mapping]) -> float | None:
    """The seconds a warm-up job is expected to take, or its search's first attempt (each finished attempt is kept
    in the search log, so a search cut off loses only the attempt in flight). A later repeat's warm-up is one
    attempt at repeat 1's size: repeat 1's own attempt there (`first`, its record). A search: the longest attempt
    of the warm-ups of `like`, records of cells like it (WARMUP_LIKE: the run's of the same cell but for the
    attention, else of the same model and mode, else of the same model). Compiling cold varies: both are stretched
    by COLD_SPREAD. None where nothing is known."""
    if first is not None:
        at_size = [a["seconds"] for a in _warmup_attempts(first) if a.get("batch_size") == first.get("batch_size")]
        if at_size:
            return max(at_size) * COLD_SPREAD + JOB_START_S
    seconds = [a["seconds"] for r in like for a in _warmup_attempts(r, ("ok", "oom"))]
    return max(seconds) * COLD_SPREAD + JOB_START_S if seconds else None


def warmup_then_timed_s(first: Mapping | None, like: Sequence[Mapping]) -> float | None:
    """The seconds from a warm-up job's start to the end of the timed job after it, known before either runs: the
    warm-up's (warmup_job_s) and the timed job's, from repeat 1's record for a later repeat (`first`), else from the
    longest of `like`'s, stretched as a repeat's is. A warm-up is worth its GPU time only where its timed job can
    follow: held back at a deadline, the timed job leaves its warm-up to the host's next sweep, which a host not kept
    (a session's last part) never runs; and a warm-up held back instead runs as early in the next one. On
    results/h200's records this came to 0.96-1.78 times what the two jobs took for a later repeat (median 1.32), and
    0.78-1.80 for a search (median 1.32; short where the search ran three or four attempts, as its estimate is one
    attempt stretched). None where the warm-up's is unknown; the warm-up's alone where the timed job's is."""
    warmup = warmup_job_s(first, like)
    if warmup is None:
        return None
    return warmup + _timed_after_warmup_s(first, like)


def _timed_after_warmup_s(first: Mapping | None, like: Sequence[Mapping]) -> float:
    """warmup_then_timed_s's timed job: repeat 1's record's time again (`first`), else the longest of `like`'s; 0
    where none ran."""
    return _measured_again_s([first] if first is not None else like) or 0.0


def expected_warmup_s(run_results: str | os.PathLike, cell: Mapping, first: str | os.PathLike | None) -> int:
    """A warm-up job's resource expected_s, read from the records in the run's results folder now: from repeat 1's
    record (`first`, a later repeat's) where it can be read, else from those of the cells like it (WARMUP_LIKE);
    0 where nothing is known (warmup_then_timed_s)."""
    return round(warmup_then_timed_s(*_warmup_sources(run_results, cell, first)) or 0)


def _warmup_sources(run_results: str | os.PathLike, cell: Mapping,
                    first: str | os.PathLike | None) -> tuple[dict | None, list[dict]]:
    """(repeat 1's record, the records of the cells like it) that a warm-up's estimate reads: the first where
    `first` can be read, else the second."""
    if first is not None and (records := read_records([first])):
        return records[0], []
    return None, read_records(like_records(run_results, cell, *WARMUP_LIKE))


def expected_timed_job_s(run_results: str | os.PathLike, cell: Mapping, warmup: str | os.PathLike | None,
                         steps: int) -> float | None:
    """A timed job's expected seconds (timed_job_s) from the run's records now: its warm-up's warmup.json (none
    for a cold job, which runs at repeat 1's size), the cell's records and those of the cells of the same model
    that differ in the attention or the context. None where unknown."""
    found = read_records([warmup]) if warmup is not None else []
    batch = found[0].get("batch_size") if found else None
    others = read_records(cell_records(run_results, cell))
    if batch is None:  # a cold job (no warm-up stage): at repeat 1's size, or searched
        batch = next((r.get("batch_size") for r in others), None)
    like = read_records(like_records(run_results, cell, ["attn", "seq_len"]))
    return timed_job_s(batch, found[0] if found else None, others, steps, like)


def timed_queue_s(run_results: str | os.PathLike, steps: int) -> float:
    """The GPU's queue now: the expected seconds of the timed jobs whose warm-up is done and which have not run
    (waiting_timed_records; expected_timed_job_s), and of those of the warm-ups running now (running_warmups; each
    expected as a warm-up expects its own timed job at its start, from repeat 1's record or the cells like it). A
    timed job takes its GPU alone, so a warm-up started now has its timed job run after them, whatever its own
    estimate (a warm-up running now ends first, as a rule, having started first); one that cannot be estimated
    counts nothing."""
    run = Path(run_results)
    folders = list(_warmup_folders(run))  # one scan for both kinds
    waiting = sum(expected_timed_job_s(run, cell_axes(cell), warmup, steps) or 0.0
                  for cell, warmup, _ in _waiting_warmups(run, folders))
    running = 0.0
    for cell, repeat in _running_warmups(folders):
        first = run / "cells" / cell / record_name(1) if repeat > 1 else None
        running += _timed_after_warmup_s(*_warmup_sources(run, cell_axes(cell), first))
    return waiting + running


def expected_warmup_start_s(run_results: str | os.PathLike, cell: Mapping, first: str | os.PathLike | None,
                            steps: int) -> int:
    """A warm-up's expected seconds at its start, up to the end of its timed job: the warm-up (warmup_job_s), or
    the GPU's queue of timed jobs now (timed_queue_s) where that is longer, then its timed job (as
    warmup_then_timed_s's). On an H100 with the 45 GiB cap, whose warm-ups run their steps in the timed jobs' place,
    one of 2026-12-07's parts ended with 11 warm-ups done and their timed jobs not run, and with 6 jobs cut off at the
    deadline, among them five warm-ups started 1-7 min before it: expected_warmup_s alone leaves out the wait.
    A warm-up with nothing to go by expects the queue."""
    first_record, like = _warmup_sources(run_results, cell, first)
    queue = timed_queue_s(run_results, steps)
    warmup = warmup_job_s(first_record, like)
    if warmup is None:
        return round(queue)
    return round(max(warmup, queue) + _timed_after_warmup_s(first_record, like))


@functools.lru_cache(maxsize=4096)
def _record_at(path: str, mtime_ns: int, size: int) -> dict | None:
    """A record as the file of that time and size holds it (the cache's key: a record written again is read again)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_records(paths: Collection[str | os.PathLike]) -> list[dict]:
    """The JSON records at `paths` that can be read (one being written, or left broken, is passed over). Each file
    is read once while it is unchanged: Snakemake asks every ready job what it expects (hundreds at a sweep's
    start), and the jobs of one model read the same records. The records returned are shared: not to be changed."""
    out = []
    for p in paths:
        try:
            stat = os.stat(p)
        except OSError:
            continue
        if (record := _record_at(os.fspath(p), stat.st_mtime_ns, stat.st_size)) is not None:
            out.append(record)
    return out


def cell_records(run_results: str | os.PathLike, cell: Mapping, any_of: Collection[str] = ()) -> list[Path]:
    """The record files (cell.json, repeat-K.json) of `cell` in a run's results folder; with axes `any_of`, those
    of every cell that differs from it in those axes only (itself included)."""
    folder = cell_path({**cell, **{axis: "*" for axis in any_of}})
    return sorted(p for p in Path(run_results, "cells").glob(f"{folder}/*.json")
                  if p.name == "cell.json" or p.name.startswith("repeat-"))


def waiting_timed_records(run_results: str | os.PathLike) -> list[Path]:
    """The records whose warm-up is done and whose timed job has not run since: each warm-up's warmup.json and
    cache (warmup/<cell>/r<K>/, kept until its timed job has used them) without a record of repeat K
    (cells/<cell>/<record_name(K)>) written after it, in path order. Named as targets, they make a part that only
    measures: a host kept warm keeps the warm-ups of its last part, and a session's last part that started
    more of them would lose each to the host's end, GPU time and all."""
    run = Path(run_results)
    return [record for _, _, record in _waiting_warmups(run, _warmup_folders(run))]


def _waiting_warmups(run: Path, folders: Iterable[tuple[Path, int, Path]]) -> Iterator[tuple[Path, Path, Path]]:
    """(cell folder, warmup.json, record) of each warm-up waiting_timed_records finds among `folders`
    (_warmup_folders), in their order."""
    for cell, repeat, folder in folders:
        done = folder / "warmup.json"
        if not done.is_file() or not (folder / "cache").is_dir():
            continue
        record = run / "cells" / cell / record_name(repeat)
        # A record older than the warm-up is one the warm-up was made to measure again.
        if not record.exists() or record.stat().st_mtime < done.stat().st_mtime:
            yield cell, done, record


def running_warmups(run_results: str | os.PathLike) -> list[tuple[Path, int]]:
    """(cell folder, repeat) of each warm-up running now, in path order: its cache made (a warm-up makes it as it
    begins) and no warmup.json yet. A warm-up that failed leaves neither (Snakemake removes a failed job's outputs);
    one killed at a deadline leaves its cache on that host, and counts here until a later sweep there makes it
    again: the queue then reads long, which holds a warm-up back rather than letting one start that cannot end."""
    return list(_running_warmups(_warmup_folders(Path(run_results))))


def _running_warmups(folders: Iterable[tuple[Path, int, Path]]) -> Iterator[tuple[Path, int]]:
    """running_warmups among `folders` (_warmup_folders), in their order."""
    for cell, repeat, folder in folders:
        if (folder / "cache").is_dir() and not (folder / "warmup.json").exists():
            yield cell, repeat


def _warmup_folders(run: Path) -> Iterator[tuple[Path, int, Path]]:
    """(cell folder, repeat, its folder) of each repeat's folder below warmup/, in path order. The pattern is as
    deep as a cell's path: the caches below are never walked."""
    for folder in sorted(run.glob(f"warmup/{cell_path(dict.fromkeys(AXES, '*'))}/r*")):
        if re.fullmatch(r"r[1-9][0-9]*", folder.name) and folder.is_dir():
            yield folder.parent.relative_to(run / "warmup"), int(folder.name[1:]), folder


def like_records(run_results: str | os.PathLike, cell: Mapping, *tries: Collection[str],
                 own: bool = True) -> list[Path]:
    """The record files of the cells like `cell`: those that differ from it in the axes of the first of `tries`
    that finds any (cell_records' any_of); `cell`'s own among them unless own=False (an estimate made afterwards,
    of a record that is there, reads what the workflow had before it)."""
    skip = set() if own else set(cell_records(run_results, cell))
    for axes in tries:
        found = [p for p in cell_records(run_results, cell, any_of=axes) if p not in skip]
        if found:
            return found
    return []
