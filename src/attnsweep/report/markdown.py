"""What every markdown page of a run shares (tables.py, answers.py, compare.py): a cell's tokens/s as text, with its
spread where it has repeats or why it has none; the tie mark; one section per environment."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from ..sweep import KERNEL_PACKAGES, kernel_versions

STATUS_MARK = {
    "oom": "OOM", "unsupported": "unsupported", "diverged": "diverged", "error": "error", "missing": "not run yet",
}
DASH = "–"


def fmt(value, spec: str) -> str:
    return DASH if pd.isna(value) else format(value, spec)


def repeated(row: pd.Series) -> bool:
    return bool(row.get("repeats", 1) >= 2)


# From this share of a measured window spent in Python's garbage collector (aggregate.window_gc_share) on, a cell's
# tokens/s is marked with it: a full collection of what compiling left behind costs up to 0.4 s, a tenth of a
# window, and a repeat meets it at the same step.
GC_NOTABLE = 0.01
GC_LEGEND = ("gc N%: Python's garbage collector ran for N% of the cell's measured window (the median over its "
             "repeats); its tokens/s counts those pauses.")


def gc_mark(row: pd.Series) -> str:
    """" gc 7.4%" where the row's window held at least GC_NOTABLE of garbage collection, else ""."""
    share = row.get("window_gc_share")
    return "" if share is None or pd.isna(share) or share < GC_NOTABLE else f" gc {100 * share:.1f}%"


def any_gc_mark(df: pd.DataFrame) -> bool:
    return "window_gc_share" in df and bool((df["window_gc_share"].astype(float) >= GC_NOTABLE).any())


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


def kernel_packages_text(df: pd.DataFrame) -> str:
    """The versions of the kernel packages (sweep.KERNEL_PACKAGES) that the rows' implementations ran, e.g.
    "flash-attn-4 4.0.0b18 (fa4, sdpa_fa4)": not in the environment key, which every cell shares, as only those
    implementations' cells run them. "" where no row ran one."""
    parts = []
    for dist, attns in KERNEL_PACKAGES.items():
        ran: dict[str, set[str]] = {}
        for _, row in df[df["attn"].isin(attns)].iterrows():
            version = kernel_versions(row["attn"], row["status"], {dist: row.get(f"env.versions.{dist}")})
            if dist in version:
                ran.setdefault(version[dist] or "none recorded", set()).add(row["attn"])
        parts += [f"{dist} {v} ({', '.join(a for a in attns if a in used)})" for v, used in ran.items()]
    return "; ".join(parts)


def by_environment(df: pd.DataFrame, render: Callable[[pd.DataFrame], str], level: str) -> str:
    """One section per environment when cells from several were allowed to mix; the environment is named once, with
    the kernel packages its cells ran."""

    def name(cells: pd.DataFrame, env: str) -> str:
        kernels = kernel_packages_text(cells)
        return f"{env}; {kernels}" if kernels else env

    envs = list(pd.unique(df["env_id"]))
    if len(envs) == 1:
        return f"Environment: {name(df, envs[0])}.\n\n" + render(df)
    return "\n\n".join(f"{level} Environment: {name(df[df['env_id'] == env], env)}\n\n"
                         + render(df[df["env_id"] == env]) for env in envs)
