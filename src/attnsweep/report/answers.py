"""What a run answers about the kernels it measured (tables/answers.md): the fastest implementation at each model and
context, compiled or eager; what a graph break costs, with and without CUDA graphs; what grouped and multi-query
attention change; the highest MFU of each model.

Every number is a column of summary.csv, judged as the tables judge it (a tie: both cells measured at least twice and
their spreads overlap, aggregate.add_spread): `tokens_per_sec` and the spread, `graphbreak_over_one_graph` and
`tie_graphbreak`, `cudagraphs_over_compiled` and `tie_cudagraphs`, `kv_heads_over_full` and `tie_kv_heads`,
`mfu_nanogpt` and `mfu_causal`. Nothing is judged anew. In a run in parts each answer is of the cells measured so
far, and says which it has not seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .. import flops
from ..vocabulary import COMPILED_MODES, CUDAGRAPH_MODES
from .aggregate import GRAPH_BREAK_SUFFIX, MODE_ORDER, PLAIN_COMPILED, has_repeats, is_grouped
from .headline import fastest
from .markdown import (DASH, GC_LEGEND, STATUS_MARK, any_gc_mark, by_environment, gc_mark, pair_mark, tokens_text,
                       with_tie)

# What tells two rows of a section apart besides model, context, mode and implementation (the tables' SETUP).
SETUP = ("precision", "optimizer", "harness")
KV_HOW = "attention.kv_heads"  # the record's word for how the kernel got grouped heads (attention.kv_heads_handling)


def _ratio(row: pd.Series | None, column: str, tie: str) -> str:
    """A ratio column as "0.85×", with "tie" where `tie` says the two cells' spreads overlap; blank where the row is
    not in the grid, its status where it has no throughput, a dash where the cell it is over has none."""
    if row is None:
        return ""
    if row["status"] != "ok":
        return STATUS_MARK.get(row["status"], row["status"])
    value = row.get(column)
    return DASH if value is None or pd.isna(value) else with_tie(f"{value:.2f}×", row, tie) + gc_mark(row)


def _keys(df: pd.DataFrame) -> list[str]:
    """model, the setup keys that take more than one value, context."""
    return ["model", *(k for k in SETUP if k in df and df[k].nunique() > 1), "seq_len"]


def _markdown(rows: list[dict]) -> str:
    table = pd.DataFrame(rows).rename(columns={"seq_len": "context"})
    align = ["right" if c == "context" else "left" for c in table.columns]
    return table.to_markdown(index=False, colalign=align, disable_numparse=True)


def fastest_anywhere(df: pd.DataFrame) -> pd.DataFrame:
    """headline.fastest over every mode at once: per model and context (multi-head cells), the implementation and
    mode with the highest tokens/s, those tied with it, and the fastest beyond its spread."""
    cells = df[~is_grouped(df)]
    return fastest(cells.assign(attn=cells["attn"] + " " + cells["mode"], mode="any"))


def _fastest_section(df: pd.DataFrame) -> str:
    best = fastest_anywhere(df)
    if best.empty:
        return "No multi-head cell ran to the end with status ok: nothing to compare."
    keys = _keys(df)
    rows = []
    for b in best.itertuples():
        row = df.loc[b.row]
        where = {k: getattr(b, k) for k in keys}
        line = where | {"fastest": f"{row['attn']} ({row['mode']})", "tok/s": tokens_text(row),
                 "tied within its spread": b.ties or "-"}
        lead = b.tokens_per_sec / b.runner_up_tokens_per_sec - 1
        line["next beyond the spread: the lead over it"] = "-" if pd.isna(lead) else (
            f"{b.runner_up} ({b.runner_up_tokens_per_sec:,.0f}): {lead:+.1%}")
        line["fastest compiled over fastest eager"] = _compiled_over_eager(df, where)
        if (best["not_run_yet"] != "").any():
            line["not run yet"] = b.not_run_yet or "-"
        rows.append(line)
    return _markdown(rows)


def _compiled_over_eager(df: pd.DataFrame, where: dict) -> str:
    """At one model and context (`where`, multi-head cells): the tokens/s of the fastest cell of any compiled mode
    over the fastest eager one's, tie-marked (markdown.pair_mark, in a run with repeats), and the two cells; "-"
    where either mode has no cell measured."""
    cells = df[~is_grouped(df) & (df["status"] == "ok")]
    for key, value in where.items():
        cells = cells[cells[key] == value]
    compiled, eager = cells[cells["mode"].isin(COMPILED_MODES)], cells[cells["mode"] == "eager"]
    if compiled.empty or eager.empty:
        return "-"
    c, e = compiled.loc[compiled["tokens_per_sec"].idxmax()], eager.loc[eager["tokens_per_sec"].idxmax()]
    mark = pair_mark(c, e) if has_repeats(df) else ""
    return f"{c['tokens_per_sec'] / e['tokens_per_sec']:.2f}×{mark} ({c['attn']} {c['mode']} / {e['attn']} eager)"


def _graph_break_section(df: pd.DataFrame) -> str:
    cells = df[~is_grouped(df) & df["mode"].isin(COMPILED_MODES)]
    breaking = sorted(a for a in set(cells["attn"]) if a.endswith(GRAPH_BREAK_SUFFIX))
    if not breaking:
        return "No cell of this run breaks the compiled graph at its attention layers (`*_graphbreak`)."
    modes = [m for m in MODE_ORDER if m in set(cells["mode"])]
    graphs = [m for m in modes if m in CUDAGRAPH_MODES]
    keys = _keys(df)
    rows = []
    for key, group in cells.groupby(keys, sort=False):
        by = {(r["attn"], r["mode"]): r for _, r in group.iterrows()}
        for attn in breaking:
            twin = attn.removesuffix(GRAPH_BREAK_SUFFIX)
            if not any((attn, m) in by for m in modes):
                continue
            line = dict(zip(keys, key)) | {"pair": f"{attn} / {twin}"}
            for m in modes:
                line[f"break: {m}"] = _ratio(by.get((attn, m)), "graphbreak_over_one_graph", "tie_graphbreak")
            for g in graphs:
                for a, with_breaks in ((attn, "with the breaks"), (twin, "one graph")):
                    line[f"{g} / {PLAIN_COMPILED}, {with_breaks}"] = _ratio(
                        by.get((a, g)), "cudagraphs_over_compiled", "tie_cudagraphs")
            rows.append(line)
    return _markdown(rows)


def _grouped_section(df: pd.DataFrame) -> str:
    grouped = is_grouped(df)
    if not grouped.any():
        return "No cell of this run has fewer key/value heads than query heads."
    kvs = sorted(set(df.loc[grouped, "kv_heads"].astype(int)), reverse=True)
    keys = [*_keys(df), "mode", "attn"]
    full = {tuple(r[k] for k in keys): r for _, r in df[~grouped].iterrows()}
    rows = []
    for key, group in df[grouped].groupby(keys, sort=False):
        by_kv = {int(r["kv_heads"]): r for _, r in group.iterrows()}
        how = group[KV_HOW].dropna().unique() if KV_HOW in group else []
        line = dict(zip(keys, key)) | {"kv heads taken": ", ".join(how) or DASH,
                                       "tok/s, a kv head per query head": tokens_text(full.get(key))}
        for kv in kvs:
            line[f"{kv} kv head{'s' if kv > 1 else ''} / every head"] = _ratio(
                by_kv.get(kv), "kv_heads_over_full", "tie_kv_heads")
        rows.append(line)
    return _markdown(rows)


def _cell_text(row: pd.Series, grouped: bool) -> str:
    kv = f", {row['kv_heads']:.0f} kv heads" if grouped else ""
    return f"{row['attn']} ({row['mode']}), {row['seq_len']}{kv}, batch {row['batch_size']:.0f}"


def _mfu_section(df: pd.DataFrame) -> str:
    if "mfu_nanogpt" not in df or not df["mfu_nanogpt"].notna().any():
        return "No cell of this run records an MFU (a GPU of known peak, status ok)."
    rows, grouped = [], is_grouped(df)
    for model, cells in df[df["mfu_nanogpt"].notna()].groupby("model", sort=False):
        best = cells.loc[cells["mfu_nanogpt"].astype(float).idxmax()]
        rows.append({"model": model, "highest MFU": f"{100 * best['mfu_nanogpt']:.1f}%",
                     "its causal MFU": _percent(best.get("mfu_causal")), "cell": _cell_text(best, grouped[best.name]),
                     "tok/s": tokens_text(best)})
        causal = cells["mfu_causal"].astype(float) if "mfu_causal" in cells else pd.Series(dtype=float)
        if causal.notna().any() and causal.idxmax() != best.name:
            other = cells.loc[causal.idxmax()]
            rows.append({"model": model, "highest MFU": f"{100 * other['mfu_nanogpt']:.1f}%",
                         "its causal MFU": _percent(other["mfu_causal"]) + " (the highest causal MFU)",
                         "cell": _cell_text(other, grouped[other.name]), "tok/s": tokens_text(other)})
    peaks = _peaks(df)
    return _markdown(rows) + (f"\n\nPeak: {peaks}." if peaks else "")


def _percent(value) -> str:
    return DASH if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def _peaks(df: pd.DataFrame) -> str:
    """The peak FLOP/s the MFUs are over, with where it comes from (the records' mfu.peak_*)."""
    if "mfu.peak_flops" not in df:
        return ""
    pairs = df[["mfu.peak_flops", "mfu.peak_source"]].dropna().drop_duplicates() if "mfu.peak_source" in df else (
        df[["mfu.peak_flops"]].dropna().drop_duplicates().assign(**{"mfu.peak_source": "not recorded"}))
    return "; ".join(f"{p / 1e12:,.0f} TFLOP/s ({s})" for p, s in pairs.itertuples(index=False))


SECTIONS: Sequence[tuple[str, str, object]] = (
    ("1. The fastest implementation at each model and context, compiled or eager",
     "The highest tokens/s of each model and context over every implementation and mode (multi-head attention{med}); "
     "beside it the cells it cannot be told from{ties}, and the fastest beyond its spread with the fastest's lead "
     "over it; then the fastest cell of any compiled mode over the fastest eager one (which of them is faster, "
     "and by how much).", _fastest_section),
    ("2. What a graph break costs, with and without CUDA graphs",
     "tokens/s of an implementation that leaves the compiled graph at every attention layer (`*_graphbreak`) over "
     "its one-graph twin, per compiled mode (break: below 1× it costs); then what CUDA graphs add to each "
     f"(tokens/s of the mode with CUDA graphs over plain `{PLAIN_COMPILED}`), with the breaks and in one graph: "
     "whether compiling into CUDA graphs wins back what the breaks cost.{tie}", _graph_break_section),
    ("3. What grouped and multi-query attention change",
     "tokens/s with fewer key/value heads over the same implementation, mode and context with one per query head; "
     "how the implementation took them (the record's `attention.kv_heads`: `native`, the kernel takes grouped heads; "
     "`repeated`, keys and values repeated to every query head before the call).{tie}", _grouped_section),
    ("4. The highest MFU of each model",
     f"Model FLOPs utilization{{med}}: tokens/s times the FLOPs a token, {flops.FORMULA}, over the GPU's dense "
     f"16-bit peak; beside it the same with {flops.CAUSAL_FORMULA}, which is lower, most at long contexts. Where "
     "another cell has the highest causal MFU, it follows.", _mfu_section),
)


def answers_markdown(df: pd.DataFrame) -> str:
    """tables/answers.md, from a summary as read_summary returns it."""
    parts = ["# What this run answers"]
    missing = int((df["status"] == "missing").sum())
    if missing:
        parts.append(f"A run in parts: {missing} of its {len(df)} cells not run yet. Each answer is of the cells "
                     "measured so far.")
    many = has_repeats(df)
    med = ", the median of a cell's repeats" if many else ""
    ties = (", tied (their spreads overlap)" if many else
            " (with one run a cell: its tokens/s at or above the fastest's slowest window step)")
    tie = " tie: the two cells' spreads overlap." if many else " With one run a cell, no tie is told."
    if any_gc_mark(df):
        parts.append(f"{GC_LEGEND} A ratio marked so is of the cell with that share, over its twin.")
    for title, text, render in SECTIONS:
        text = text.format(med=med, ties=ties, tie=tie)
        parts.append(f"## {title}\n\n{text}\n\n" + by_environment(df, render, "###"))
    return "\n\n".join(parts) + "\n"
