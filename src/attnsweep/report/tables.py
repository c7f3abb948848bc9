"""Markdown tables from summary.csv: the study's layout per mode (compiled.md, eager.md, and compiled_cudagraphs.md
where the grid has that mode), the study's findings beside the run's (study.md, report.findings), what the run
answers (answers.md, report.answers) and every implementation side by side (all.md).

The study's layout: one row per model and context; the baseline's batch and tokens/s; for each flash
implementation its batch, tokens/s and speedup over the baseline; then FlashAttention-2 minus PyTorch's
FlashAttention in tokens/s and percent. A cell that did not produce a throughput shows why (OOM, unsupported, ...)
in its tokens/s column and a dash in the columns derived from it; a combination outside the grid is blank.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import pandas as pd

from .. import flops
from . import atomic_output, log
from ..vocabulary import CUDAGRAPH_MODES
from .aggregate import (BASELINE, GRAPH_BREAK_SUFFIX, HEADLINE, MODE_ORDER, PLAIN_COMPILED, REFERENCES, has_repeats,
                        is_grouped, read_summary, table_names)
from .answers import answers_markdown
from .findings import study_markdown
from .markdown import DASH, GC_LEGEND, any_gc_mark, by_environment, fmt, tokens_text, with_tie

# The implementations the study compared, in its column order.
STUDY_IMPLS = ("sdpa", "sdpa_flash", "fa2", "fa2_graphbreak")
# Setup keys that may vary within a table; shown as columns when they do.
SETUP = ("precision", "optimizer", "kv_heads", "harness")
LEGEND = (
    "OOM: out of memory at every batch size tried. unsupported: the implementation cannot run in this setup (the "
    "reason is in summary.csv). not run yet: a cell of a sweep run in parts, not measured so far. "
    f"{DASH}: not computable (a cell it depends on has no throughput). "
    "Blank: not in the grid. Speedup = tokens/s over the naive baseline of the same row. "
    f"{HEADLINE} − ref %: the difference over the reference's tokens/s; {HEADLINE} − ref % of {HEADLINE}: over "
    f"{HEADLINE}'s own, the 2023 study's Percent convention."
)


REPEATS_LEGEND = (
    "With repeats: tok/s is the median of a cell's repeats, ±half its spread in percent: the repeats' range, "
    "widened where they all ran on one GPU to the run's between-GPU spread (summary.csv: between_gpu_pct); a "
    "difference marked tie lies inside both cells' spreads; one with a cell measured once (tok/s without ±) is not "
    "judged, tie or lead."
)


def _legend(df: pd.DataFrame) -> str:
    """The legend, with the sentence on repeats where some cell was measured more than once."""
    text = f"{LEGEND} {REPEATS_LEGEND}" if has_repeats(df) else LEGEND
    return f"{text} {GC_LEGEND}" if any_gc_mark(df) else text


def batch_text(row: pd.Series | None) -> str:
    if row is None:
        return ""
    return DASH if row["status"] != "ok" else fmt(row["batch_size"], ".0f")


def _derived(spec: str, suffix: str = "") -> Callable[[pd.Series | None, str], str]:
    def cell(row: pd.Series | None, column: str) -> str:
        if row is None:
            return ""
        text = fmt(row[column], spec)
        return text if text == DASH else text + suffix

    return cell


_speedup = _derived(".2f", "×")
_diff_tok = _derived("+,.0f")
_diff_pct = _derived("+.1f", "%")


def tie_marked(row: pd.Series | None, ref: str) -> str:
    """The difference in percent, and "tie" where both cells' repeats overlap (the difference is inside the spread)."""
    return with_tie(_diff_pct(row, f"diff_vs_{ref}_pct"), row, f"tie_vs_{ref}")


def row_keys(df: pd.DataFrame) -> list[str]:
    """model, the setup keys that vary for some model (others go into the settings line), context."""
    varying = [k for k in SETUP if (df.groupby("model")[k].nunique() > 1).any()]
    return ["model", *varying, "seq_len"]


def _settings_line(df: pd.DataFrame, shown: Sequence[str]) -> str:
    parts = []
    for key in (k for k in SETUP if k not in shown):
        if key == "kv_heads" and not is_grouped(df).any():
            parts.append("kv_heads = heads (multi-head attention)")
            continue
        per_model = df.groupby("model", sort=False)[key].first()
        if per_model.nunique() == 1:
            parts.append(f"{key} {per_model.iloc[0]}")
        else:
            parts.append(f"{key} " + ", ".join(f"{v} ({m})" for m, v in per_model.items()))
    return "Setup: " + "; ".join(parts) + "." if parts else ""


def _pivot(df: pd.DataFrame, keys: list[str], columns: dict[str, tuple[str, Callable]]) -> pd.DataFrame:
    """One output row per distinct `keys`; columns[name] = (attn, formatter(row or None, ...))."""
    out = []
    for key, group in df.groupby(keys, sort=False):
        by_attn = {r["attn"]: r for _, r in group.iterrows()}
        line = dict(zip(keys, key))
        for name, (attn, text) in columns.items():
            line[name] = text(by_attn.get(attn))
        out.append(line)
    return pd.DataFrame(out).rename(columns={"seq_len": "context"})


def study_table(df: pd.DataFrame) -> str:
    """The study's layout for the cells of one mode (and one environment)."""
    present = set(df["attn"])
    flash = [a for a in STUDY_IMPLS if a in present]
    columns: dict[str, tuple[str, Callable]] = {
        f"{BASELINE} batch": (BASELINE, batch_text),
        f"{BASELINE} tok/s": (BASELINE, tokens_text),
    }
    for a in flash:
        columns[f"{a} batch"] = (a, batch_text)
        columns[f"{a} tok/s"] = (a, tokens_text)
        columns[f"{a} speedup"] = (a, lambda r: _speedup(r, "speedup_vs_naive"))
    if HEADLINE in present:
        for ref in (r for r in REFERENCES if r in present):
            columns[f"{HEADLINE} − {ref} tok/s"] = (HEADLINE, lambda r, ref=ref: _diff_tok(r, f"diff_vs_{ref}_tok_s"))
            columns[f"{HEADLINE} − {ref} %"] = (HEADLINE, lambda r, ref=ref: tie_marked(r, ref))
            columns[f"{HEADLINE} − {ref} % of {HEADLINE}"] = (
                HEADLINE, lambda r, ref=ref: _diff_pct(r, f"diff_vs_{ref}_pct_of_self"))
    keys = row_keys(df)
    table = _pivot(df, keys, columns)
    return render_table(df, keys, table)


def _side_by_side(df: pd.DataFrame, cell: Callable[[pd.Series | None], str], setup: bool = True) -> str:
    """One column per implementation, `cell` formatting each; rows by model, varying setup and context."""
    keys = row_keys(df)
    return render_table(df, keys, _pivot(df, keys, {a: (a, cell) for a in pd.unique(df["attn"])}), setup=setup)


def wide_table(df: pd.DataFrame) -> str:
    """Every implementation side by side for one mode: tokens/s (batch, speedup over naive)."""

    def cell(row: pd.Series | None) -> str:
        text = tokens_text(row)
        if row is None or row["status"] != "ok":
            return text
        extra = [f"b{row['batch_size']:.0f}"]
        if row["attn"] != BASELINE and not pd.isna(row["speedup_vs_naive"]):
            extra.append(f"{row['speedup_vs_naive']:.2f}×")
        return f"{text} ({', '.join(extra)})"

    return _side_by_side(df, cell)


def steady_table(df: pd.DataFrame) -> str:
    """Every implementation side by side: the median of the per-step tokens/s over the window, with its spread.

    A window mean is moved by a few slow steps (host stalls of tens of milliseconds were seen on the GPU host), so a
    single run's mean can differ from its typical step by several percent; the median is not moved by them, and the
    standard deviation (as a percentage of the mean) says how uneven the window was.
    """

    def cell(row: pd.Series | None) -> str:
        if row is None or row["status"] != "ok":
            return tokens_text(row)
        median, mean, std = (row[f"tokens_per_sec_stats.{k}"] for k in ("median", "mean", "std"))
        return f"{fmt(median, ',.0f')} (±{fmt(100 * std / mean, '.1f')}%)"

    return _side_by_side(df, cell, setup=False)


def _ratio_tie_marked(column: str, tie: str) -> Callable[[pd.Series | None], str]:
    """A ratio column as "0.85×", and "tie" where the row's `tie` column says the two lie inside each other's range."""

    return lambda row: with_tie("" if row is None else _speedup(row, column), row, tie)


def break_table(df: pd.DataFrame) -> str:
    """tokens/s of each `X_graphbreak` cell over its one-graph twin `X`, per mode (with and without CUDA graphs)."""
    rows = df[df["attn"].str.endswith(GRAPH_BREAK_SUFFIX)]
    rows = rows.assign(attn=rows["mode"] + ": " + rows["attn"])
    return _side_by_side(rows, _ratio_tie_marked("graphbreak_over_one_graph", "tie_graphbreak"), setup=False)


def kv_table(df: pd.DataFrame) -> str:
    """tokens/s of each cell with fewer key/value heads than query heads over the same implementation with all."""
    rows = df[is_grouped(df)]
    return _side_by_side(rows, _ratio_tie_marked("kv_heads_over_full", "tie_kv_heads"))


def gain_table(df: pd.DataFrame, mode: str, base: str, column: str) -> str:
    """tokens/s of `mode` over `base` (the summary's ratio `column`), per implementation (cells in the grid in both
    modes only)."""
    pair = ["model", "seq_len", "attn", *SETUP]
    other = df.loc[df["mode"] == base, pair].drop_duplicates()
    rows = df[df["mode"] == mode].merge(other, on=pair)
    tie = GAIN_TIES.get(column, "")
    return _side_by_side(rows, lambda r: with_tie(_speedup(r, column), r, tie), setup=False)


# The ties of the ratios between modes that summary.csv judges (aggregate.add_comparisons).
GAIN_TIES = {"cudagraphs_over_compiled": "tie_cudagraphs"}


def _gains(modes: set[str]) -> list[tuple[str, str, str]]:
    """(mode, base, ratio column) of every comparison between modes a summary with `modes` can make: each compiled
    mode over eager, and each mode with CUDA graphs over plain compiled (what the graphs alone add)."""
    over_eager = [(m, "eager", "compiled_over_eager") for m in MODE_ORDER if m != "eager" and m in modes]
    over_compiled = [(m, PLAIN_COMPILED, "cudagraphs_over_compiled") for m in CUDAGRAPH_MODES if m in modes]
    return [g for g in over_eager + over_compiled if g[1] in modes]


def render_table(df: pd.DataFrame, keys: list[str], table: pd.DataFrame, setup: bool = True) -> str:
    """The setup line (what is constant) and the table; text columns left, numbers right."""
    align = ["left" if c in ("model", "attn", "optimizer", "precision", "harness") else "right" for c in table.columns]
    markdown = table.to_markdown(index=False, colalign=align)
    line = _settings_line(df, keys) if setup else ""
    return f"{line}\n\n{markdown}" if line else markdown


FELL_BACK = "compile.cudagraphs.fell_back"  # summary.csv's column of the record's field


def _fallback_note(cells: pd.DataFrame) -> str:
    """In a mode with CUDA graphs: the measured cells that ran partly without them (their tokens/s is not all the
    graphs'), named, or nothing."""
    if FELL_BACK not in cells:
        return ""
    fell = cells[(cells["status"] == "ok") & (cells[FELL_BACK].astype(str) == "True")]
    if fell.empty:
        return ""
    named = ", ".join(f"{r.attn} ({r.model}, {r.seq_len})" for r in fell.itertuples())
    return (f"\n\nRan partly without CUDA graphs (Inductor skipped them; its reasons are in summary.csv, "
            f"compile.cudagraphs.skip_reasons): {named}.")


def mode_markdown(df: pd.DataFrame, mode: str) -> str:
    cells = df[df["mode"] == mode]
    title = f"# Training throughput, {mode} (tokens/s)\n\n"
    if cells.empty:
        return title + f"No {mode} cells in this run.\n"
    note = _fallback_note(cells) if mode in CUDAGRAPH_MODES else ""
    shown = cells[cells["attn"].isin([BASELINE, *STUDY_IMPLS])]  # the study's columns: the legend is theirs
    return title + by_environment(cells, study_table, "##") + f"{note}\n\n{_legend(shown)}\n"


def _is_ok(row: pd.Series) -> bool:
    return row["status"] == "ok"


def _per_record_table(column: str, fmt: Callable[[float], str],
                      extra: tuple[str, Callable[[float], str]] | None = None,
                      shown: Callable[[pd.Series], bool] = _is_ok) -> Callable[[pd.DataFrame], str]:
    """Every implementation side by side: one column of the summary (a number per cell), formatted, and after it
    the `extra` (column, format) where the cell has a value there; a cell not `shown` (by default, any not ok) shows
    its status instead."""

    def table(df: pd.DataFrame) -> str:
        def cell(row: pd.Series | None) -> str:
            if row is None or not shown(row):
                return tokens_text(row)
            value = row.get(column)
            if value is None or pd.isna(value):
                return DASH
            more = None if extra is None else row.get(extra[0])
            return fmt(value) + ("" if more is None or pd.isna(more) else extra[1](more))

        return _side_by_side(df, cell, setup=False)

    return table


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


# Attention's share of its profiled step (kernel time on a GPU), the reason a faster attention kernel moves tokens/s
# by less where attention is a small part of the step.
share_table = _per_record_table("kernels.attention_share", _percent)
# The GPU's busy share of a measured step (aggregate.gpu_busy): low where the host bounds the step.
busy_table = _per_record_table("gpu_busy", _percent)
# The GPU's work per token (aggregate.kernel_ns_per_token): the kernels' speed, whatever the host's.
kernel_table = _per_record_table("kernel_ns_per_token", lambda v: f"{v:,.0f}")
# The steps before the window against it (aggregate.pre_window_change): had the cell settled?
settled_table = _per_record_table("pre_window_change", lambda v: f"{100 * v:+.1f}%")


# MFU by nanoGPT's formula, and by causal attention's work in brackets.
mfu_table = _per_record_table("mfu_nanogpt", lambda v: f"{100 * v:.1f}%",
                              ("mfu_causal", lambda v: f" ({100 * v:.1f}%)"))
# The seconds a cell's timed jobs held their GPU, + its warm-up jobs' seconds, summed over its repeats (an oom cell's
# too: its jobs took GPU time).
time_table = _per_record_table("timed_s_total", lambda v: f"{v:,.0f}", ("warmup_s_total", lambda v: f" + {v:,.0f}"),
                               shown=lambda row: row["status"] != "missing")


def time_totals(df: pd.DataFrame) -> str:
    """One sentence: the timed jobs and their seconds (on a GPU, the time each held it), and the warm-up jobs'."""
    if "timed_s_total" not in df:
        return "The records hold no job times."
    measured = df[df["status"] != "missing"]
    jobs = sum(len(json.loads(v)) for v in measured["tokens_per_sec_repeats"]) if len(measured) else 0
    timed = measured["timed_s_total"].sum()
    cells = f"{len(measured)} cell" + ("" if len(measured) == 1 else "s")
    text = (f"{cells}, {jobs} timed jobs: {timed:,.0f} s in all ({timed / max(jobs, 1):,.1f} s a job; on a GPU, the "
            "time each held its GPU)")
    warm = measured["warmup_s_total"]
    if warm.notna().any():
        text += (f"; warm-up jobs {warm.sum():,.0f} s in all (several at a time, beside the timed jobs: they add to "
                 "a sweep's wall time only where a GPU waits for one)")
    return text + ". Seconds are each job's own clock (`duration_s`, `warmup.seconds`), process start excluded."


def _mode_sections(df: pd.DataFrame, by_mode: dict[str, pd.DataFrame], column: str,
                   table: Callable[[pd.DataFrame], str], title: str) -> list[str]:
    """One section per mode, `## {mode}: {title}`, where some cell has a value in `column`; none where none has."""
    if column not in df or not df[column].notna().any():
        return []
    return [f"## {mode}: {title}\n\n" + by_environment(cells, table, "###") for mode, cells in by_mode.items()]


def all_markdown(df: pd.DataFrame) -> str:
    by_mode = {m: df[df["mode"] == m] for m in MODE_ORDER if m in set(df["mode"])}
    parts = ["# Every implementation (tokens/s, batch, speedup over naive)"]
    for mode, cells in by_mode.items():
        parts.append(f"## {mode}\n\n" + by_environment(cells, wide_table, "###"))
        parts.append(
            f"## {mode}: median of the per-step tokens/s (± standard deviation over the window, % of its mean)\n\n"
            + by_environment(cells, steady_table, "###")
        )
    for mode, base, column in _gains(set(by_mode)):
        tie = "; tie: their spreads overlap (the legend below)" if column in GAIN_TIES else ""
        parts.append(f"## {mode} over {base} (tokens/s ratio{tie})\n\n"
                     + by_environment(df, lambda d, m=mode, b=base, c=column: gain_table(d, m, b, c), "###"))
    parts += _mode_sections(df, by_mode, "kernels.attention_share", share_table,
                            "attention's share of the profiled step (of its kernel time on a GPU, its operators' time "
                            "on a CPU; the naive path's matmuls not counted)")
    parts += _mode_sections(df, by_mode, "gpu_busy", busy_table,
                            "the GPU's busy share of a measured step (the profiled step's kernel time over the "
                            "window's mean step time, median over the repeats; well under 100%, the host's CPU bounds "
                            "the step and its tokens/s)")
    parts += _mode_sections(df, by_mode, "gpu_busy", kernel_table,
                            "the GPU's work per token (the profiled step's kernel time over its tokens, ns, median "
                            "over the repeats; lower is faster, and unlike tokens/s it does not depend on the host's "
                            "CPU)")
    if "graphbreak_over_one_graph" in df:
        parts.append("## A graph break's cost: tokens/s of each implementation that breaks the graph at every "
                     "attention layer over its one-graph twin (`fa2_graphbreak` over `fa2`, ...), by mode; tie: "
                     "their spreads overlap (the legend above)\n\n" + by_environment(df, break_table, "###"))
    if "kv_heads_over_full" in df:
        for mode, cells in by_mode.items():
            if is_grouped(cells).any():
                parts.append(f"## {mode}: grouped and multi-query attention, tokens/s over the same implementation "
                             "with a key/value head per query head; tie: their spreads overlap\n\n"
                             + by_environment(cells, kv_table, "###"))
    parts += _mode_sections(df, by_mode, "mfu_nanogpt", mfu_table,
                            "MFU over the GPU's dense 16-bit peak, median over the repeats; FLOPs a token "
                            f"{flops.FORMULA}, in brackets {flops.CAUSAL_FORMULA}")
    parts += _mode_sections(df, by_mode, "pre_window_change", settled_table,
                            "the steps before the window against it (tokens/s of the window's length of steps before "
                            "it, steps 1 and 2 left out, over the window's, -1; median over the repeats; near 0%, the "
                            "cell had settled before its window)")
    parts.append("## Job time: seconds of the timed jobs + of the warm-up jobs, over every repeat\n\n"
                 + time_totals(df))
    for mode, cells in by_mode.items():
        parts.append(f"### {mode}\n\n" + by_environment(cells, time_table, "####"))
    parts.append(_legend(df))
    return "\n\n".join(parts) + "\n"


def render_tables(df: pd.DataFrame, names: list[str] | None = None) -> dict[str, str]:
    """{name: markdown} of each table in `names` (a mode's, 'study', 'answers' or 'all'; by default
    aggregate.table_names of the summary's modes: compiled, eager, any other mode present, study, answers, all), from a
    summary as read_summary returns it."""
    names = table_names(df["mode"]) if names is None else names
    special = {"all": all_markdown, "study": study_markdown, "answers": answers_markdown}
    return {name: special[name](df) if name in special else mode_markdown(df, name) for name in names}


def write_tables(summary: str | os.PathLike, out: dict[str, str | os.PathLike]) -> None:
    """out: {table name: path}, the names of aggregate.table_names: a mode's table is written even when no cell of
    that mode is in the summary (it says so)."""
    write_rendered(render_tables(read_summary(summary), list(out)), out)


def write_rendered(texts: dict[str, str], out: dict[str, str | os.PathLike]) -> None:
    """Each table of `out` ({name: path}) from `texts` ({name: markdown}, render_tables'), replaced whole."""
    for name, path in out.items():
        with atomic_output(path) as tmp:
            tmp.write_text(texts[name])
        log.info("wrote %s", path)
