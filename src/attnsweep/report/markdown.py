"""What every markdown page of a run shares (tables.py, answers.py, compare.py): a cell's tokens/s as text, with its
spread where it has repeats or why it has none; the tie mark; one section per environment."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

STATUS_MARK = {
    "oom": "OOM", "unsupported": "unsupported", "diverged": "diverged", "error": "error", "missing": "not run yet",
}
DASH = "–"


def fmt(value, spec: str) -> str:
    return DASH if pd.isna(value) else format(value, spec)


def repeated(row: pd.Series) -> bool:
    return bool(row.get("repeats", 1) >= 2)


def tokens_text(row: pd.Series | None) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return STATUS_MARK.get(row["status"], row["status"])
    text = fmt(row["tokens_per_sec"], ",.0f")
    if repeated(row):  # the median of the repeats, and half their spread (aggregate.add_spread) in percent of it
        half = 50.0 * (row["spread_high"] - row["spread_low"]) / row["tokens_per_sec"]
        text += f" ±{half:.1f}%"
    return text


def with_tie(text: str, row: pd.Series | None, tie: str) -> str:
    """`text`, and "tie" where the row's `tie` column says both cells' repeats overlap (inside the spread)."""
    value = None if row is None else row.get(tie)
    return f"{text} tie" if value is True or value == 1.0 else text


def by_environment(df: pd.DataFrame, render: Callable[[pd.DataFrame], str], level: str) -> str:
    """One section per environment when cells from several were allowed to mix; the environment is named once."""
    envs = list(pd.unique(df["env_id"]))
    if len(envs) == 1:
        return f"Environment: {envs[0]}.\n\n" + render(df)
    return "\n\n".join(f"{level} Environment: {env}\n\n" + render(df[df["env_id"] == env]) for env in envs)
