"""The report's first page: what a run measured, the fastest implementation per model, context and mode, and where
its tables and figures are (reStructuredText, included by workflow/report/workflow.rst).

"Fastest" is the highest tokens/s over the measurement window (the median of its repeats, with `repeats`). Another
implementation is named beside it when the two cannot be told apart, a tie, not a lead: with repeats, when their
spreads overlap (the repeats' ranges, widened for the GPUs' differences: aggregate.add_spread; as the tables mark
ties); with one run, when its tokens/s lies within the fastest cell's own spread (at or above the slowest step of its
window). In a run with repeats, a fastest cell measured once is not judged against the others, as the tables judge
no difference with such a cell (its slowest step says little of another repeat: on an H100 under its power cap a
window's steps scatter by up to 15% while its repeats agree within 1%). In a run tabled in parts (`allow_missing`),
a row whose implementations are not all measured yet names those beside it: its "fastest" is only the fastest so
far.
"""

from __future__ import annotations

import os

import pandas as pd
from tabulate import tabulate

from . import atomic_output, log
from .aggregate import MODE_ORDER, has_repeats, read_summary, spreads_overlap, table_names

SETUP = ("kv_heads", "precision", "optimizer", "harness", "env_id")
# The ties of a fastest cell measured once in a run with repeats.
NOT_JUDGED = "not judged (measured once)"


def _listing(values) -> str:
    return ", ".join(str(v) for v in dict.fromkeys(values))


def fastest(df: pd.DataFrame) -> pd.DataFrame:
    """One row per setup, model, context and mode with an ok cell: the fastest implementation, its tokens/s, the
    others within its spread (`ties`; NOT_JUDGED for a fastest measured once in a run with repeats), the
    implementations of that row not measured yet (`not_run_yet`), the fastest's index in `df` (`row`), and the
    fastest beyond its spread (`runner_up`, `runner_up_tokens_per_sec`; None and NaN where every other is tied, or
    not judged, or there is none)."""
    ok = df[df["status"] == "ok"]
    repeated = has_repeats(ok)
    keys = [k for k in ("model", "seq_len", "mode", *SETUP) if k in ok.columns]
    pending = {key: _listing(group["attn"]) for key, group in df[df["status"] == "missing"].groupby(keys, sort=False)}
    rows = []
    for key, group in ok.groupby(keys, sort=False):
        group = group.sort_values("tokens_per_sec", ascending=False)
        best, others = group.iloc[0], group.iloc[1:]
        once = repeated and best.get("repeats", 1) < 2
        if best.get("repeats", 1) >= 2:
            judged = others[others["repeats"] >= 2]  # a cell measured once is neither tied nor beyond
            ties = judged[spreads_overlap(judged["spread_low"], judged["spread_high"], best["spread_low"],
                                          best["spread_high"])]
        elif once:
            judged = ties = others.iloc[:0]
        else:
            floor = best.get("tokens_per_sec_stats.min")
            floor = best["tokens_per_sec"] if floor is None or pd.isna(floor) else floor
            judged = others
            ties = others[others["tokens_per_sec"] >= floor]
        beyond = judged.drop(index=ties.index)
        rows.append({**dict(zip(keys, key)), "fastest": best["attn"], "tokens_per_sec": best["tokens_per_sec"],
                     "ties": NOT_JUDGED if once else ", ".join(f"{r.attn} ({r.tokens_per_sec:,.0f})"
                                                               for r in ties.itertuples()),
                     "not_run_yet": pending.get(key, ""), "row": best.name,
                     "runner_up": beyond["attn"].iloc[0] if len(beyond) else None,
                     "runner_up_tokens_per_sec": beyond["tokens_per_sec"].iloc[0] if len(beyond) else float("nan")})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    # Models in the grid's order (small before medium), not the alphabet's.
    model_rank = out["model"].map({m: i for i, m in enumerate(dict.fromkeys(df["model"]))})
    mode_rank = out["mode"].map({m: i for i, m in enumerate(MODE_ORDER)})
    return (out.assign(_a=model_rank, _m=mode_rank).sort_values(["_a", "_m", "seq_len"], kind="stable")
            .drop(columns=["_a", "_m"]))


def _first_value(df: pd.DataFrame, column: str) -> float | None:
    values = df[column].dropna() if column in df else pd.Series(dtype=float)
    return float(values.iloc[0]) if len(values) else None


def render_headline(df: pd.DataFrame, results: str) -> str:
    """The headline as reStructuredText; `results` is the run's folder (results/{run})."""
    counts = df["status"].value_counts()
    statuses = ", ".join(f"{n} {s}" for s, n in counts.items())
    # From a measured cell's record: a cell not run yet has none (the settings are the run's, one for all cells).
    steps, window = (_first_value(df, f"cell.{k}") for k in ("steps", "window"))
    over = f" over the last {window:.0f} of {steps:.0f} steps" if steps is not None and window is not None else ""
    device = _listing(df["env_id"].str.split(" | ", regex=False).str[0]) if "env_id" in df else "?"
    lines = [
        "What was measured",
        "-----------------",
        "",
        f"GPT-2 training throughput (tokens/s{over}) on **{device}**: "
        f"model {_listing(df['model'])}; context {_listing(sorted(df['seq_len']))}; "
        f"implementations {_listing(df['attn'])}; {_listing(df['mode'])}; precision {_listing(df['precision'])}, "
        f"optimizer {_listing(df['optimizer'])}. {len(df)} cells: {statuses}.",
        "",
    ]
    statuses = {a: _listing(group) for a, group in df.groupby("attn", sort=False)["status"]}
    # A run in parts: an implementation none of whose cells has run yet is not a finding.
    not_yet = [a for a, st in statuses.items() if st == "missing"]
    never = [a for a, st in statuses.items() if "ok" not in st.split(", ") and st != "missing"]
    if never:
        why = "; ".join(f"{a}: {statuses[a]}" for a in never)
        lines += [f"Never measured in this run: {why} (their reasons are in summary.csv and the tables).", ""]
    if not_yet:
        lines += [f"Not run yet in this run (it is tabled in parts): {', '.join(not_yet)}.", ""]
    lines += ["Fastest implementation", "----------------------", ""]
    best = fastest(df)
    if best.empty:
        lines += ["No cell ran to the end with status ok: there is nothing to compare.", ""]
    else:
        varying = [k for k in SETUP if k in best and (best.groupby("model")[k].nunique() > 1).any()]
        table = pd.DataFrame({
            "model": best["model"], "context": best["seq_len"], "mode": best["mode"],
            **{k: best[k] for k in varying},
            "fastest": best["fastest"], "tokens/s": best["tokens_per_sec"].map("{:,.0f}".format),
            "tied within its spread": best["ties"].replace("", "-"),
        })
        partial = (best["not_run_yet"] != "").any()
        if partial:
            table["not run yet"] = best["not_run_yet"].replace("", "-")
        repeated = has_repeats(df)
        lines += [
            "The highest tokens/s per model, context and mode" + (" (the median of its repeats)" if repeated else "")
            + "; beside it, "
            + ("implementations whose spread overlaps the fastest's (their repeats' ranges, widened where a cell's "
               "repeats all ran on one GPU to the run's between-GPU spread): the repeats do not separate them."
               if repeated else
               "implementations whose tokens/s lies within the fastest cell's spread (at or above its slowest window "
               "step): one run does not separate them.")
            + (" A run in parts: where a row names implementations not run yet, its fastest is only the fastest "
               "of those measured so far." if partial else ""),
            "",
            tabulate(table, headers="keys", tablefmt="rst", showindex=False, disable_numparse=True),
            "",
        ]
    first_table, *other_tables = (f"{name}.md" for name in table_names(df["mode"]))
    lines += [
        "Where the results are",
        "---------------------",
        "",
        f"- Tables (also in the sidebar, under Tables): ``{results}/tables/{first_table}``, "
        + ", ".join(f"``{name}``" for name in other_tables),
        f"- Figures (sidebar, Figures): ``{results}/figures/``",
        f"- Every cell, one row each: ``{results}/summary.csv``; the records: ``{results}/cells/``",
        "",
    ]
    return "\n".join(lines)


def write_headline(summary: str | os.PathLike, out: str | os.PathLike, results: str) -> None:
    with atomic_output(out) as tmp:
        tmp.write_text(render_headline(read_summary(summary), results))
    log.info("wrote %s", out)
