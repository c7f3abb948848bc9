"""What every markdown page of a run shares (tables.py, answers.py, compare.py): a cell's tokens/s as text, with its
spread where it has repeats or why it has none; the tie mark; one section per environment."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from ..sweep import kernel_packages_text
from .aggregate import row_versions, spreads_overlap

STATUS_MARK = {
    "oom": "OOM", "unsupported": "unsupported", "diverged": "diverged", "error": "error", "missing": "not run yet",
}
DASH = "–"


def fmt(value, spec: str) -> str:
    return DASH if pd.isna(value) else format(value, spec)


def repeated(row: pd.Series) -> bool:
    return bool(row.get("repeats", 1) >= 2)


def pair_mark(a: pd.Series, b: pd.Series) -> str:
    """How two cells' tokens/s compare, as the tables judge: " tie" where both were measured at least twice and
    their spreads overlap, " not judged" where either was measured once, "" where one leads beyond the spread."""
    if not (repeated(a) and repeated(b)):
        return " not judged"
    return " tie" if bool(spreads_overlap(a["spread_low"], a["spread_high"], b["spread_low"], b["spread_high"])) else ""


# From this share of a measured window spent in Python's garbage collector (aggregate.window_gc_share) on, a cell's
# tokens/s is marked with it: a full collection took 0.27-0.37 s on the H200, up to a twelfth of a window, at the
# same step in each repeat of a cell, so the repeats' spread does not show it.
GC_NOTABLE = 0.01
GC_LEGEND = ("gc N%: Python's garbage collector ran for N% of the cell's measured window (the median over its "
             "repeats); its tokens/s counts those pauses.")


def gc_mark(row: pd.Series) -> str:
    """" gc 7.4%" where the row's window held at least GC_NOTABLE of garbage collection, else ""."""
    share = row.get("window_gc_share")
    return "" if share is None or pd.isna(share) or share < GC_NOTABLE else f" gc {100 * share:.1f}%"


def any_gc_mark(df: pd.DataFrame) -> bool:
    """Whether any row of `df` is marked (gc_mark), so its table needs GC_LEGEND."""
    return any(gc_mark(row) for _, row in df.iterrows())


def tokens_text(row: pd.Series | None) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return STATUS_MARK.get(row["status"], row["status"])
    text = fmt(row["tokens_per_sec"], ",.0f")
    if repeated(row):  # the median of the repeats, and half their spread (aggregate.add_spread) in percent of it
        half = 50.0 * (row["spread_high"] - row["spread_low"]) / row["tokens_per_sec"]
        text += f" ±{half:.1f}%"
    return text + gc_mark(row)


def with_tie(text: str, row: pd.Series | None, tie: str) -> str:
    """`text`, and "tie" where the row's `tie` column says both cells' repeats overlap (inside the spread)."""
    value = None if row is None else row.get(tie)
    return f"{text} tie" if value is True or value == 1.0 else text


def by_environment(df: pd.DataFrame, render: Callable[[pd.DataFrame], str], level: str) -> str:
    """One section per environment when cells from several were allowed to mix; the environment is named once, with
    the kernel packages its cells ran."""

    def name(cells: pd.DataFrame, env: str) -> str:
        kernels = kernel_packages_text((row["attn"], row["status"], row_versions(row)) for _, row in cells.iterrows())
        return f"{env}; {kernels}" if kernels else env

    envs = list(pd.unique(df["env_id"]))
    if len(envs) == 1:
        return f"Environment: {name(df, envs[0])}.\n\n" + render(df)
    return "\n\n".join(f"{level} Environment: {name(df[df['env_id'] == env], env)}\n\n"
                         + render(df[df["env_id"] == env]) for env in envs)
