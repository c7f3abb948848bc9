"""Cell JSONs -> one flat table (summary.csv): every field of every cell, speedups and the study's headline.

One row per cell (its repeats folded in: the median tokens/s and the range). The axis columns (model, seq_len, attn,
...) come first, then the comparisons, the cell file's
path, and every other field of the JSON flattened with pandas.json_normalize (lists and objects as JSON text).
Comparisons are only made between cells of the same environment: throughput from two GPUs or two torch versions
is not comparable, so mixed environments are refused unless explicitly allowed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from .. import flops
from ..cellio import load_cell
from ..sweep import ENV_FIELDS as RECORD_ENV_FIELDS
from ..sweep import KERNEL_PACKAGES, cell_axes, dig, environment_of, kernel_versions, record_name, record_repeat
from ..sweep import is_grouped as sweep_is_grouped
from ..vocabulary import AXES, ATTENTION, COMPILED_MODES, CUDAGRAPH_MODES, MODELS, MODES
from . import atomic_output, log

# Cells that differ only in the attention implementation: the unit of every speedup and difference.
SAME_SETUP = ("env_id", "model", "seq_len", "mode", "precision", "optimizer", "kv_heads", "harness")
# What makes two measurements incomparable (sweep.ENV_FIELDS), as json_normalize names the columns.
ENV_FIELDS = {name: ".".join(path) for name, path in RECORD_ENV_FIELDS}
BASELINE = "naive"
# The study's question: FlashAttention-2 against PyTorch's FlashAttention, which in its code was SDPA's default
# dispatch (`sdpa`); today SDPA can also be forced to its flash backend (`sdpa_flash`). Both are compared.
HEADLINE = "fa2"
REFERENCES = ("sdpa", "sdpa_flash")
# Rows, tables and figure panels: the compiled modes first (the study's `compiled`, then with CUDA graphs), eager last.
MODE_ORDER = (*COMPILED_MODES, *(m for m in MODES if m not in COMPILED_MODES))
# The study's two tables (compiled.md, eager.md) are written by every run, empty or not; another mode's when the
# grid has it.
STUDY_MODES = ("compiled", "eager")
# The plain compiled mode: what the modes with CUDA graphs are compared with (cudagraphs_over_compiled).
PLAIN_COMPILED = "compiled"
# An implementation forced to break the graph at every attention layer is named after its one-graph twin with this
# suffix (attention._graph_breaking): graphbreak_over_one_graph compares the two.
GRAPH_BREAK_SUFFIX = "_graphbreak"


def table_names(modes: Iterable[str]) -> list[str]:
    """The markdown tables of a run whose grid has `modes`: one per mode, in MODE_ORDER, the study's findings beside
    the run's (`study`), what the run answers (`answers`), and `all`."""
    modes = set(modes)
    return [*(m for m in MODE_ORDER if m in STUDY_MODES or m in modes), "study", "answers", "all"]


def figure_names(grid: dict, device: str) -> list[str]:
    """The figures that can have data for a grid (the config's `grid`: lists per axis) run on `device`.

    fa2 against sdpa needs fa2 and one of its references in that mode; the speedup needs the naive baseline and
    something to compare with it; peak memory is recorded on a GPU only (`device` is cpu, cuda or, for a run only
    re-aggregated, the config's own value). Excludes are not looked at: a figure they leave empty says so.
    """
    attns, modes = set(grid["attn"]), set(grid["mode"])
    names = [f"fa2_vs_sdpa_{m}" for m in MODE_ORDER
             if m in modes and HEADLINE in attns and attns & set(REFERENCES)]
    if BASELINE in attns and len(attns) > 1:
        names.append("speedup")
    names.append("throughput")
    if device != "cpu":
        names.append("memory")
    return names


def gpu_uuid(record: Mapping) -> str | None:
    """The UUID of the GPU a record ran on (None: not recorded, e.g. on a CPU or by older code)."""
    return ((record.get("env") or {}).get("gpu") or {}).get("uuid")


def env_id(row: pd.Series) -> str:
    """A readable key for the environment of one cell,
    e.g. 'NVIDIA H100 | torch 2.9.0 | flash-attn 2.8.3 | cuda 12.8'."""

    def get(field: str) -> str:
        value = row.get(ENV_FIELDS[field])
        return "none" if value is None or pd.isna(value) else str(value)

    gpu = get("gpu")
    if gpu == "none":
        gpu = str(row.get("env.device_type", "cpu"))
    return " | ".join([gpu, *(f"{k} {get(k)}" for k in ENV_FIELDS if k != "gpu")])


def kernel_us(record: dict) -> float | None:
    """The profiled step's kernel time on the GPU, in microseconds (None off a GPU or without a profile)."""
    kernels = record.get("kernels") or {}
    if kernels.get("source") != "CUDA kernels":
        return None
    if kernels.get("busy_us") is not None:
        return float(kernels["busy_us"])
    # Records from before `busy_us`: attention's kernel time over attention's share of the step's.
    share = kernels.get("attention_share")
    attention_us = sum(k["time_us"] for k in kernels.get("attention") or [])
    return attention_us / share if share and attention_us else None


def _tokens_per_step(record: dict) -> int:
    return record["batch_size"] * record["cell"]["seq_len"]


def gpu_busy(record: dict) -> float | None:
    """The share of a measured step's wall time the GPU spent running kernels: the profiled step's kernel time over
    the window's mean step time. Well under 1, the host (Python, kernel launches) bounds the step, and the cell's
    tokens/s follows the host's CPU as much as the GPU. None off a GPU or without a profile."""
    busy_us = kernel_us(record)
    if record.get("status") != "ok" or not record.get("tokens_per_sec") or busy_us is None:
        return None
    step_s = _tokens_per_step(record) / record["tokens_per_sec"]
    return round(busy_us / 1e6 / step_s, 3)


def kernel_ns_per_token(record: dict) -> float | None:
    """The GPU's work per token: the profiled step's kernel time over the step's tokens, in nanoseconds. It does not
    depend on the host's speed as tokens/s does where the host bounds the step (gpu_busy well under 1), so it ranks
    implementations by their kernels alone. None off a GPU, without a profile, or for a cell that did not run."""
    busy_us = kernel_us(record)
    if record.get("status") != "ok" or busy_us is None or not record.get("batch_size"):
        return None
    return round(busy_us * 1e3 / _tokens_per_step(record), 3)


def block_tokens_per_sec(record: dict, first: int, steps: int) -> float:
    """Tokens/s over `steps` steps from step `first` (1-based), as the record's window is computed: the steps' tokens
    over their synchronized times."""
    times = record["step_times_s"][first - 1:first - 1 + steps]
    return len(times) * _tokens_per_step(record) / sum(times)


# Steps that do once what later steps do not, left out of pre_window_change: the first loads (or compiles) the
# compiled code; the second records the CUDA graphs (CUDA graph trees record on a function's second call) and ends
# lazy set-up: on the H200 (h200-modern's records) it took 1.9-24 times a window step with CUDA graphs (median 3.3),
# which alone moved some of those cells' steps-before-the-window by -34% to -41%, and up to 2.3 times (median 1.0)
# compiled or eager.
ONE_TIME_STEPS = 2


def pre_window_change(record: dict) -> float | None:
    """Tokens/s of the steps just before the measured window against the window's, as a fraction (0 = the same): the
    `window` steps before it, the ONE_TIME_STEPS left out: steps 76-100 of 125 (what a run of 100 steps would have
    measured), steps 3-25 of 50. Near 0, the cell had settled before its window, which a run with fewer steps relies
    on. None without step times or with fewer than 5 steps before the window."""
    times = record.get("step_times_s")
    window = (record.get("tokens_per_sec_stats") or {}).get("n")
    if record.get("status") != "ok" or not times or not window or not record.get("tokens_per_sec"):
        return None
    first = max(ONE_TIME_STEPS + 1, len(times) - 2 * window + 1)
    if len(times) - window - first + 1 < 5:
        return None
    return round(block_tokens_per_sec(record, first, len(times) - window - first + 1) / record["tokens_per_sec"] - 1, 4)


def mfu_nanogpt(record: dict) -> float | None:
    """The record's MFU (flops.FORMULA: nanoGPT's, the attention term without causal discount), or None."""
    value = (record.get("mfu") or {}).get("value")
    return None if record.get("status") != "ok" or value is None else round(value, 4)


def mfu_causal(record: dict) -> float | None:
    """MFU counting the work causal attention does (flops.CAUSAL_FORMULA: the attention term halved), from the
    record's tokens/s, parameters and shape; lower than `mfu_nanogpt` by the attention term's half, most at long
    contexts."""
    value, m = mfu_nanogpt(record), record.get("mfu") or {}
    if value is None or not m.get("flops_per_token"):
        return None
    cfg = record["model_config"]
    causal = flops.causal_flops_per_token(
        n_params_non_embedding=record["params"]["non_embedding"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
        head_dim=cfg["n_embd"] // cfg["n_head"], seq_len=record["cell"]["seq_len"])
    return round(m["value"] * causal / m["flops_per_token"], 4)


def window_gc_share(record: dict) -> float | None:
    """The share of the measured window's wall time that Python's garbage collector ran (the record's
    window_conditions.gc.seconds over window_conditions.wall_s). The window's tokens/s counts those pauses; where
    the host bounds the step (graph breaks, CUDA graphs' replay from Python), most of a pause is a step's delay, so
    a cell with a large share may read slower than it runs between collections. None without the window's
    conditions."""
    conditions = record.get("window_conditions") or {}
    seconds, wall = (conditions.get("gc") or {}).get("seconds"), conditions.get("wall_s")
    if record.get("status") != "ok" or seconds is None or not wall:
        return None
    return round(seconds / wall, 4)


# Per-record measures folded over a cell's repeats as their median (add_repeats).
PER_RECORD = {"gpu_busy": gpu_busy, "kernel_ns_per_token": kernel_ns_per_token,
              "pre_window_change": pre_window_change, "mfu_nanogpt": mfu_nanogpt, "mfu_causal": mfu_causal,
              "window_gc_share": window_gc_share}


def _flatten(records: list[dict]) -> pd.DataFrame:
    df = pd.json_normalize(records)
    # A field that is an object in some records and null in others leaves a column of nulls beside its dotted
    # children (e.g. tokens_per_sec_stats next to tokens_per_sec_stats.mean): drop it.
    df = df.drop(columns=[c for c in df.columns if any(o.startswith(c + ".") for o in df.columns)])
    # Lists (step times, batch attempts, ...) and empty objects survive json_normalize as Python objects:
    # store them as JSON so summary.csv can be read back without guessing.
    for col in df.columns:
        if df[col].map(lambda v: isinstance(v, (list, dict))).any():
            df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    return df


def _refuse_if(bad: pd.Series, paths: list[Path], what: str) -> None:
    """ValueError listing the files of the rows in `bad`, if any."""
    if bad.any():
        files = "\n".join(f"  {p}" for p, b in zip(paths, bad) if b)
        raise ValueError(f"{what}:\n{files}")


def load_cells(paths: Iterable[str | os.PathLike], run: str | None = None) -> pd.DataFrame:
    """Read and validate every cell (a truncated or foreign file raises ValueError naming it).

    Every cell must belong to `run` (or, if None, all to one run), and each cell may appear only once: a record
    copied in from another sweep, or two files of one cell, would otherwise be averaged in silently.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no cell files to aggregate")
    records = [load_cell(p) for p in paths]
    runs = pd.Series([r["cell"]["run"] or "" for r in records])  # "" for a cell run by hand without --run
    expected = run if run is not None else runs.mode().iloc[0]
    _refuse_if(runs != expected, paths, f"cell records from another run than {expected!r}")
    df = _flatten(records)
    for column, measure in PER_RECORD.items():
        df[column] = [measure(r) for r in records]
    axes = df[[f"cell.{a}" for a in AXES]].set_axis(list(AXES), axis=1)
    df = df.drop(columns=axes.columns.map(lambda a: f"cell.{a}"))
    df = pd.concat([axes, df], axis=1)
    df.insert(len(AXES), "cell_path", [p.as_posix() for p in paths])
    df.insert(len(AXES), "env_id", df.apply(env_id, axis=1))
    _refuse_if(df.duplicated([*AXES, "env_id"], keep=False).to_numpy(), paths, "one cell in more than one file")
    log.info("read %d cells", len(df))
    return df


def add_repeats(df: pd.DataFrame, paths: Iterable[str | os.PathLike], run: str | None = None) -> pd.DataFrame:
    """Fold repeats 2, 3, ... (`repeat-N.json` beside each cell's `cell.json`, repeat 1) into the cells' rows.

    Every row gets `tokens_per_sec_repeats` (each repeat's tokens/s in order, null where a repeat was not ok, as JSON),
    `repeats` (how many were ok), their range (`tokens_per_sec_min`, `_max`) and, as `tokens_per_sec`, their median.
    A cell whose first repeat is not ok keeps that status; later repeats are listed and change nothing else.
    What the cell cost, over all its repeats: `timed_s_total` (the timed jobs' own clocks, `duration_s`: the time
    each held its GPU) and `warmup_s_total` (the warm-up jobs', which share the GPUs; null without warm-ups).
    """
    df = df.copy()
    by_folder: dict[str, list[tuple[int, dict]]] = {}
    for p in paths:
        p = Path(p)
        record = load_cell(p)
        if run is not None and (record["cell"]["run"] or "") != run:
            raise ValueError(f"cell records from another run than {run!r}:\n  {p}")
        by_folder.setdefault(p.parent.as_posix(), []).append((record_repeat(p.stem), record))
    first_env = dict(zip((Path(c).parent.as_posix() for c in df["cell_path"]), df["env_id"]))  # by cell folder
    if strays := sorted(set(by_folder) - set(first_env)):
        listing = "\n".join(f"  {s}" for s in strays)
        raise ValueError(f"repeats of cells that have no first record (cell.json):\n{listing}")
    # One cell's repeats in two environments cannot be one median; allow_mixed_env tables whole cells apart, so
    # such a cell is refused either way.
    repeats = [(folder, n, record) for folder, later in by_folder.items() for n, record in later]
    envs = _flatten([record for *_, record in repeats]).apply(env_id, axis=1) if repeats else []
    mixed = [f"  {folder}/{record_name(n)}: {env}; its cell.json: {first_env[folder]}"
             for (folder, n, _), env in zip(repeats, envs) if env != first_env[folder]]
    # The same for the kernel package its implementation runs, where both records ran it.
    first_kernels = dict(zip((Path(c).parent.as_posix() for c in df["cell_path"]),
                             df.apply(_row_kernel_versions, axis=1) if len(df) else []))
    for folder, n, record in repeats:
        ran = kernel_versions(record["cell"]["attn"], record["status"], dig(record, ("env", "versions")))
        first = first_kernels[folder]
        mixed += [f"  {folder}/{record_name(n)}: {dist} {v or _NONE}; its cell.json: {first[dist] or _NONE}"
                  for dist, v in ran.items() if dist in first and first[dist] != v]
    if mixed:
        listing = "\n".join(sorted(mixed))
        raise ValueError(f"repeats measured in another environment than their cell's first record:\n{listing}")
    all_values, counts, lows, highs, medians, gpus = [], [], [], [], [], []
    folded: dict[str, list] = {column: [] for column in PER_RECORD}
    firsts = {column: df[column] if column in df else pd.Series(None, index=df.index, dtype=float)
              for column in PER_RECORD}
    timed = df["duration_s"].astype(float) if "duration_s" in df else pd.Series(float("nan"), index=df.index)
    warm = df["warmup.seconds"].astype(float) if "warmup.seconds" in df else pd.Series(float("nan"), index=df.index)
    first_gpu = df["env.gpu.uuid"] if "env.gpu.uuid" in df else pd.Series(None, index=df.index, dtype=object)
    for i, (path, status, tps) in enumerate(zip(df["cell_path"], df["status"], df["tokens_per_sec"])):
        later = sorted(by_folder.get(Path(path).parent.as_posix(), []), key=lambda t: t[0])
        for column, measure in PER_RECORD.items():
            values = [v for v in (firsts[column].iloc[i], *(measure(r) for _, r in later))
                      if v is not None and pd.notna(v)]
            folded[column].append(float(pd.Series(values).median()) if values and status == "ok" else None)
        for _, r in later:
            timed.iloc[i] += r.get("duration_s") or 0.0
            warm.iloc[i] += ((r.get("warmup") or {}).get("seconds") or 0.0)
        values = [tps if status == "ok" else None,
                  *(r["tokens_per_sec"] if r["status"] == "ok" else None for _, r in later)]
        ok = [v for v in values if v is not None] if status == "ok" else []
        uuids = [] if status != "ok" else [
            first_gpu.iloc[i], *(gpu_uuid(r) for _, r in later if r["status"] == "ok")]
        gpus.append(len({u for u in uuids if isinstance(u, str)}))
        all_values.append(json.dumps(values))
        counts.append(len(ok))
        lows.append(min(ok) if ok else None)
        highs.append(max(ok) if ok else None)
        medians.append(float(pd.Series(ok).median()) if ok else None)
    df["tokens_per_sec"] = medians
    df["repeats"], df["tokens_per_sec_min"], df["tokens_per_sec_max"] = counts, lows, highs
    df["tokens_per_sec_repeats"] = all_values
    df["gpus"] = gpus  # the GPUs its ok repeats ran on (0: none recorded, e.g. on a CPU)
    for column, values in folded.items():
        df[column] = values  # the median over the ok repeats
    df["timed_s_total"], df["warmup_s_total"] = timed, warm
    if by_folder:
        log.info("folded %d repeats into %d cells", sum(map(len, by_folder.values())), len(by_folder))
    return df


def has_repeats(df: pd.DataFrame) -> bool:
    """Whether some cell of a summary was measured more than once (its spreads, ties and ± say so)."""
    return "repeats" in df and bool((df["repeats"].fillna(0) >= 2).any())


def add_spread(df: pd.DataFrame) -> pd.DataFrame:
    """Each cell's spread (`spread_low`, `spread_high`), what ties are judged on: the range of its repeats, widened
    where they all ran on one GPU to at least ±half the environment's between-GPU spread (`between_gpu_pct`).

    Two GPUs of one kind do not run at one speed: on the H200s lent for this project, a cell's repeats on two GPUs
    differed by a median 1.7% (up to 3.4%), repeats back to back on one GPU by a median 0.4% (the whole-GPU run's
    14 and 39 cells, mostly GPU-bound). A range measured on one GPU leaves that
    out, and the cell it is compared with may have run on another; a cell whose repeats ran on two GPUs has its own
    measure of it, and keeps its range. `between_gpu_pct` is the median range, in percent of the median, of the
    cells whose repeats ran on two GPUs or more (null where there is none: the ranges are then compared as they are,
    and a run whose cells each stayed on one GPU says nothing about the GPUs' differences).
    """
    df = df.copy()
    across = (df["gpus"] >= 2) & (df["repeats"] >= 2) & df["tokens_per_sec"].notna()
    df["between_gpu_pct"] = range_pct(df).where(across).groupby(df["env_id"]).transform("median")
    df["spread_low"], df["spread_high"] = floored_spread(df, df["between_gpu_pct"].where(df["gpus"] == 1))
    return df


def range_pct(df: pd.DataFrame) -> pd.Series:
    """Each cell's range over its repeats (max - min tokens/s), in percent of its median."""
    tps = df["tokens_per_sec"].astype(float)
    return 100.0 * (df["tokens_per_sec_max"].astype(float) - df["tokens_per_sec_min"].astype(float)) / tps


def floored_spread(df: pd.DataFrame, floor_pct: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(low, high): each cell's range over its repeats, widened to at least ±half `floor_pct` (percent of its
    median tokens/s) around the median; the range alone where `floor_pct` is null."""
    tps = df["tokens_per_sec"].astype(float)
    half = floor_pct.astype(float) / 200.0 * tps
    low = pd.concat([df["tokens_per_sec_min"].astype(float), tps - half], axis=1).min(axis=1)
    high = pd.concat([df["tokens_per_sec_max"].astype(float), tps + half], axis=1).max(axis=1)
    return low, high


def spreads_overlap(low: pd.Series, high: pd.Series, ref_low: pd.Series, ref_high: pd.Series) -> pd.Series:
    """Whether two spreads overlap: a difference inside both is a tie, not a lead."""
    return (low <= ref_high) & (ref_low <= high)


def row_versions(row: pd.Series) -> dict[str, str | None]:
    """The versions of the kernel packages (KERNEL_PACKAGES) in a summary row's environment: its record's
    env.versions, flattened into columns."""
    return {dist: row.get(f"env.versions.{dist}") for dist in KERNEL_PACKAGES}


def _row_kernel_versions(row: pd.Series) -> dict[str, str | None]:
    """sweep.kernel_versions of a summary row (its record's env.versions flattened into columns)."""
    return kernel_versions(row["attn"], row["status"], row_versions(row))


def check_environments(df: pd.DataFrame, allow_mixed: bool) -> None:
    """Refuse cells from different GPUs or software, naming what differs and the files, unless allowed."""
    _check_kernel_packages(df, allow_mixed)
    groups = df.groupby("env_id", sort=False)["cell_path"].apply(list)
    if len(groups) <= 1:
        return
    # dropna=False: a version set in some cells and missing (None) in others is a difference too.
    differing = [k for k, col in ENV_FIELDS.items() if col in df and df[col].nunique(dropna=False) > 1]
    listing = "\n".join(
        f"  {env} ({len(files)} cells):\n" + "\n".join(f"    {f}" for f in files) for env, files in groups.items()
    )
    if not allow_mixed:
        raise ValueError(
            f"cells were measured in {len(groups)} different environments (they differ in {', '.join(differing)}); "
            "their throughputs are not comparable. Rerun the odd ones out, or set allow_mixed_env: true to get "
            f"tables grouped by environment.\n{listing}"
        )
    log.warning("mixing %d environments (allow_mixed_env): tables are grouped by environment\n%s",
                len(groups), listing)


def _check_kernel_packages(df: pd.DataFrame, allow_mixed: bool) -> None:
    """Refuse cells of one implementation family that ran two versions of its kernel package (KERNEL_PACKAGES: the
    versions only those cells' environment holds, so env_id does not tell them apart), unless allowed."""
    versions = df.apply(_row_kernel_versions, axis=1) if len(df) else pd.Series(dtype=object)
    for dist in KERNEL_PACKAGES:
        files: dict[str | None, list[str]] = {}
        for path, ran in zip(df["cell_path"], versions):
            if dist in ran:
                files.setdefault(ran[dist], []).append(path)
        if len(files) <= 1:
            continue
        listing = "\n".join(f"  {dist} {v or _NONE} ({len(f)} cells):\n" + "\n".join(f"    {p}" for p in f)
                             for v, f in files.items())
        if not allow_mixed:
            raise ValueError(f"cells ran {len(files)} versions of {dist}; their throughputs are not comparable. "
                             f"Rerun the odd ones out, or set allow_mixed_env: true to table them as they are.\n"
                             f"{listing}")
        log.warning("mixing %d versions of %s (allow_mixed_env): the tables do not tell them apart\n%s",
                    len(files), dist, listing)


def machine_environment(device_type: str) -> dict[str, str | None]:
    """ENV_FIELDS as a cell measured on this machine now would record them (the cell's own provenance call), and
    the versions of the KERNEL_PACKAGES installed here (None: not installed)."""
    import torch

    from ..provenance import environment

    env = environment(torch.device(device_type), None)
    return {**environment_of({"env": env}), **{d: env["versions"].get(d) for d in KERNEL_PACKAGES}}


_NONE = "none"


def environment_conflict(paths: Iterable[str | os.PathLike], here: dict[str, str | None]) -> str | None:
    """How the cells at `paths` differ from the environment `here` (ENV_FIELDS, and the KERNEL_PACKAGES' versions
    where a cell ran one and `here` has it installed), in words; None if none differs.

    Asked before a sweep measures anything: a cell measured here could not be tabled beside cells measured
    elsewhere (check_environments refuses the mix), so finding that out after the sweep would waste its GPU time.
    A file that is not a valid record is passed over: a half-written one is rerun (Snakemake marks its job
    incomplete), and any other is refused by name when the cells are aggregated.
    """
    differing: dict[str, dict[str | None, int]] = {}
    records = []
    for path in paths:
        try:
            records.append(load_cell(path))
        except (ValueError, OSError):
            continue
    for record in records:
        there = environment_of(record)
        for name in ENV_FIELDS:
            if there[name] != here[name]:
                counts = differing.setdefault(name, {})
                counts[there[name]] = counts.get(there[name], 0) + 1
        # A kernel package's cells, where both ran a version of it: without it here they are not measured here.
        ran = kernel_versions(dig(record, ("cell", "attn")), record.get("status"), dig(record, ("env", "versions")))
        for dist, version in ran.items():
            if version is not None and here.get(dist) is not None and version != here[dist]:
                counts = differing.setdefault(dist, {})
                counts[version] = counts.get(version, 0) + 1
    if not differing:
        return None
    return "; ".join(
        f"{name} {', '.join(f'{v or _NONE} ({n} of {len(records)} cells)' for v, n in values.items())} there, "
        f"{here[name] or _NONE} here"
        for name, values in differing.items()
    )


def kept_cells_conflict(paths: Sequence[str | os.PathLike], device_type: str, run_dir: str) -> str | None:
    """Why the cells kept from an earlier part of a run cannot be resumed on this machine, or None.

    The summary refuses cells of two environments, and would say so only after the sweep had spent its GPU time on
    the new cells: asked when Snakemake reads the workflow instead (only then is torch started there)."""
    if not paths:
        return None
    conflict = environment_conflict(paths, machine_environment(device_type))
    if conflict is None:
        return None
    return (
        f"{run_dir} holds cells measured in another environment than this machine's: {conflict}. Throughputs from "
        "two environments are not comparable, so the new cells could not be tabled with the old. Measure into "
        "another run (--config run=NAME), move the old cells away, or set allow_mixed_env: true to get tables "
        "grouped by environment; to re-table the cells there are without measuring, use aggregate_only=True."
    )


def _reference(df: pd.DataFrame, keys: Sequence[str], where: pd.Series, column: str = "tokens_per_sec",
               keys_of: pd.DataFrame | None = None) -> pd.Series:
    """For every row, `column` of the row with the same `keys` that satisfies `where` (NaN if there is none); with
    `keys_of`, each row looks its keys up there (e.g. another implementation's name) instead of in `df`."""
    ref = df.loc[where, [*keys, column]].rename(columns={column: "_ref"})
    own = df if keys_of is None else keys_of
    return own[list(keys)].merge(ref, on=list(keys), how="left")["_ref"].set_axis(df.index)


def add_comparisons(df: pd.DataFrame) -> pd.DataFrame:
    """Speedup over naive, compiled over eager, CUDA graphs over plain compiled, and each row's difference to sdpa
    and sdpa_flash.

    compiled_over_eager is on the rows of every compiled mode (each over the eager cell of the same setup);
    cudagraphs_over_compiled on the rows of a mode with CUDA graphs (over `compiled`), with its tie (tie_cudagraphs),
    and only in a summary that has such rows: a run without them keeps the columns it always had.
    Only cells with status ok have a tokens_per_sec, so any comparison with an OOM/unsupported cell is NaN (blank).
    On the fa2 rows, diff_vs_sdpa_* and diff_vs_sdpa_flash_* are the study's headline numbers.
    """
    df = df.copy()
    tps = df["tokens_per_sec"].astype(float)
    df["speedup_vs_naive"] = tps / _reference(df, SAME_SETUP, df["attn"] == BASELINE)
    other_mode = [k for k in SAME_SETUP if k != "mode"] + ["attn"]
    eager = _reference(df, other_mode, df["mode"] == "eager")
    df["compiled_over_eager"] = (tps / eager).where(df["mode"].isin(COMPILED_MODES))
    with_graphs = df["mode"].isin(CUDAGRAPH_MODES)
    if with_graphs.any():
        plain = lambda c: _reference(df, other_mode, df["mode"] == PLAIN_COMPILED, c)  # noqa: E731
        df["cudagraphs_over_compiled"] = (tps / plain("tokens_per_sec")).where(with_graphs)
        df["tie_cudagraphs"] = _tie(df, plain, with_graphs)
    for ref in REFERENCES:
        is_ref = df["attn"] == ref
        ref_tps = _reference(df, SAME_SETUP, is_ref)
        df[f"diff_vs_{ref}_tok_s"] = tps - ref_tps
        df[f"diff_vs_{ref}_pct"] = 100.0 * (tps / ref_tps - 1.0)
        # The 2023 study's "Percent" column divided the difference by FA2's own tokens/s: kept beside ours.
        df[f"diff_vs_{ref}_pct_of_self"] = 100.0 * (1.0 - ref_tps / tps)
        df[f"tie_vs_{ref}"] = _tie(df, lambda c, is_ref=is_ref: _reference(df, SAME_SETUP, is_ref, c), ~is_ref)
    # A graph break's cost: each `X_graphbreak` row over `X`, its one-graph twin, in the same setup and mode.
    breaking = df["attn"].str.endswith(GRAPH_BREAK_SUFFIX)
    if breaking.any():
        # Each row's own name as the key to be found, and its twin's name as the key it looks up.
        named, looking = df.assign(_twin=df["attn"]), df.assign(_twin=df["attn"].str.removesuffix(GRAPH_BREAK_SUFFIX))
        one_graph = lambda c: _reference(named, [*SAME_SETUP, "_twin"], ~breaking, c, keys_of=looking)  # noqa: E731
        df["graphbreak_over_one_graph"] = (tps / one_graph("tokens_per_sec")).where(breaking)
        df["tie_graphbreak"] = _tie(df, one_graph, breaking)
    # Grouped-query and multi-query attention: a row with fewer kv heads than query heads over the same
    # implementation with every kv head, in the same setup.
    grouped = is_grouped(df)
    if grouped.any():
        full = lambda c: _reference(df, [k for k in SAME_SETUP if k != "kv_heads"] + ["attn"],  # noqa: E731
                                    ~grouped, c)
        df["kv_heads_over_full"] = (tps / full("tokens_per_sec")).where(grouped)
        df["tie_kv_heads"] = _tie(df, full, grouped)
    return df


def is_grouped(df: pd.DataFrame) -> pd.Series:
    """Rows with fewer key/value heads than query heads (sweep.is_grouped, from the vocabulary's models: a `missing`
    row has no model_config)."""
    return pd.Series([sweep_is_grouped(m, k) for m, k in zip(df["model"], df["kv_heads"])], index=df.index, dtype=bool)


def _tie(df: pd.DataFrame, ref: Callable[[str], pd.Series], applies: pd.Series) -> pd.Series:
    """Per row where `applies`: whether its tokens/s and its reference row's (`ref(column)`: that row's column) tie,
    i.e. both were measured at least twice and their spreads (add_spread) overlap; unknown (blank) with fewer
    repeats."""
    low, high = df["spread_low"].astype(float), df["spread_high"].astype(float)
    ref_low, ref_high = ref("spread_low").astype(float), ref("spread_high").astype(float)
    known = (df["repeats"].fillna(0) >= 2) & (ref("repeats").fillna(0) >= 2)
    tie = spreads_overlap(low, high, ref_low, ref_high)
    return tie.where(known & applies & ref("tokens_per_sec").notna() & df["tokens_per_sec"].notna())


def _order(values: pd.Series, preferred: Sequence) -> pd.Categorical:
    """Known names in their registry order, then any others alphabetically."""
    seen = list(dict.fromkeys(values))
    cats = [v for v in dict.fromkeys(preferred) if v in seen] + sorted(v for v in seen if v not in preferred)
    return pd.Categorical(values, categories=cats, ordered=True)


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Environment, model (small to large), setup, mode, context, implementation (registry order, naive first)."""
    key = {
        "env_id": lambda s: _order(s, []),
        "model": lambda s: _order(s, list(MODELS)),
        "mode": lambda s: _order(s, MODE_ORDER),
        "attn": lambda s: _order(s, [BASELINE, *ATTENTION]),
    }
    by = ["env_id", "model", "precision", "optimizer", "kv_heads", "harness", "mode", "seq_len", "attn"]
    return df.sort_values(by, key=lambda s: key[s.name](s) if s.name in key else s, kind="stable").reset_index(
        drop=True
    )


MISSING_REASON = "not measured yet (a sweep run in parts)"


def missing_rows(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One `missing` row per cell path not measured yet, its axes read from the path
    (`.../model~small/.../cell.json`)."""
    rows = []
    for p in paths:
        parts = cell_axes(p)
        absent = [a for a in AXES if a not in parts]
        if absent:
            raise ValueError(f"{p}: not a cell path (no {', '.join(absent)} in it)")
        rows.append({**{a: parts[a] for a in AXES}, "status": "missing", "reason": MISSING_REASON,
                     "cell_path": Path(p).as_posix()})
    df = pd.DataFrame(rows, columns=[*AXES, "status", "reason", "cell_path"])
    for axis in ("seq_len", "kv_heads"):
        df[axis] = df[axis].astype(int)
    return df


def summarize(
    paths: Iterable[str | os.PathLike], *, allow_mixed_env: bool = False, run: str | None = None,
    missing: Iterable[str | os.PathLike] = (), repeats: Iterable[str | os.PathLike] = (),
) -> pd.DataFrame:
    """One row per cell, with the comparisons; `missing` cell paths (not measured yet) become `missing` rows;
    `repeats` (records of repeats 2, 3, ...) are folded into their cells' rows (add_repeats)."""
    df = add_repeats(load_cells(paths, run), repeats, run)
    check_environments(df, allow_mixed_env)
    df = add_spread(df)
    absent = missing_rows(missing)
    if len(absent):
        # A missing cell has no environment: it joins the one environment of the cells present (refused above
        # if there are several and mixing is not allowed), so it sits in its place in that environment's tables.
        absent["env_id"] = df["env_id"].iloc[0] if df["env_id"].nunique() == 1 else "missing"
        df = pd.concat([df, absent], ignore_index=True)
    df = sort_rows(add_comparisons(df))
    first = [*AXES, "status", "reason", "batch_size", "tokens_per_sec", "repeats", "tokens_per_sec_min",
             "tokens_per_sec_max", "gpus", "spread_low", "spread_high", "between_gpu_pct", "speedup_vs_naive",
             "compiled_over_eager",
             *(["cudagraphs_over_compiled", "tie_cudagraphs"] if "cudagraphs_over_compiled" in df else []),
             *(f"diff_vs_{r}_{u}" for r in REFERENCES for u in ("tok_s", "pct", "pct_of_self")),
             *(f"tie_vs_{r}" for r in REFERENCES), "env_id", "cell_path"]
    return df[first + [c for c in df.columns if c not in first]]


def write_summary(
    paths: Iterable[str | os.PathLike], out: str | os.PathLike, *, allow_mixed_env: bool = False,
    run: str | None = None, missing: Iterable[str | os.PathLike] = (), repeats: Iterable[str | os.PathLike] = (),
) -> None:
    df = summarize(paths, allow_mixed_env=allow_mixed_env, run=run, missing=missing, repeats=repeats)
    with atomic_output(out) as tmp:
        df.to_csv(tmp, index=False)
    log.info("wrote %s: %d rows, %s", out, len(df), df["status"].value_counts().to_dict())


def read_summary(path: str | os.PathLike) -> pd.DataFrame:
    """summary.csv as written by write_summary (what tables and figures start from)."""
    return pd.read_csv(path, dtype={"env_id": str, "model": str, "attn": str, "mode": str, "status": str})
