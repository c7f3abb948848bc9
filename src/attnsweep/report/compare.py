"""One run beside another (`compare_with`): the same cells measured under other conditions, cell by cell.

`tables/vs-OTHER.md`: for every cell of both grids, each run's batch size and tokens/s, their ratio, and each run's
difference against SDPA's default and its flash backend with that run's own tie mark, so a lead that appears or
goes with the conditions (a memory cap lifted, another GPU or host) reads off one row; above the table, the
conditions the two runs' records differ in, and where the two runs rank the implementations differently: in each
group of cells that differ in the implementation only, whether both runs have the same fastest, and every pair of
implementations whose order the runs swap, with each run's lead and its tie mark. `figures/vs-OTHER.png`: the ratio
of the tokens/s against context, one panel per mode and model, one line per implementation. Both runs are read from
their summary.csv, so every number is one that run's own tables show (a lead is judged a tie as they judge one).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..vocabulary import AXES
from . import atomic_output, log
from .aggregate import MODE_ORDER, REFERENCES, read_summary, sort_rows
from .figures import panel_figure
from .markdown import DASH, GC_LEGEND, any_gc_mark, pair_mark, tokens_text
from .tables import batch_text, render_table, row_keys, tie_marked

# What a record says about how it was measured, as summary.csv names the columns: the lines above the table.
CONDITIONS = (
    ("GPU", "env.gpu_name"),
    ("torch", "env.torch"),
    ("CUDA", "env.cuda"),
    ("flash-attn", "env.versions.flash-attn"),
    ("batch policy", "cell.batch_policy"),
    ("memory cap (GiB)", "cell.memory_cap_gib"),
    ("steps", "cell.steps"),
    ("window", "cell.window"),
    ("repeats", "repeats"),
    ("cell code", "env.code.source_sha256"),
)


def comparison_paths(results: str, other: str) -> dict[str, str]:
    """Where a run's comparison with `other` goes: {"table": in its tables folder, "figure": in its figures}."""
    return {"table": f"{results}/tables/vs-{other}.md", "figure": f"{results}/figures/vs-{other}.png"}


def summary_digests(summaries: Mapping[str, str | os.PathLike]) -> dict[str, str]:
    """{run: digest of its summary.csv}: a compared run's summary, in this run's report stamp, so that the
    comparison is rendered again when that run is aggregated again."""
    return {run: hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] for run, path in summaries.items()}


def _values(df: pd.DataFrame, column: str) -> str:
    """The distinct values of `column` over a run's measured cells, as text ('none' where no record has one)."""
    if column not in df:
        return "none"
    cells = df.loc[df["status"] == "ok", column].dropna()
    if column == "env.code.source_sha256":
        cells = cells.astype(str).str[:8]
    values = sorted({_plain(v) for v in cells})
    return ", ".join(values) if values else "none"


def _plain(value) -> str:
    """12.0 -> '12' (pandas reads a column with blanks as float)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def conditions(here: pd.DataFrame, other: pd.DataFrame, other_name: str) -> str:
    """What the two runs' records differ in, then what they share."""
    differ, same = [], []
    for label, column in CONDITIONS:
        mine, theirs = _values(here, column), _values(other, column)
        if mine == theirs:
            same.append(f"{label} {mine}")
        else:
            differ.append(f"{label} {mine} here, {theirs} in {other_name}")
    lines = [f"Differ: {'; '.join(differ) if differ else 'none'}."]
    if same:
        lines.append(f"Same in both: {'; '.join(same)}.")
    return "\n\n".join(lines)


def _by_cell(df: pd.DataFrame) -> dict[tuple, pd.Series]:
    """A summary's rows by their axes (one row per cell)."""
    return {tuple(r[a] for a in AXES): r for _, r in df.iterrows()}


def ratio(mine: pd.Series, theirs: pd.Series | None) -> float:
    """tokens/s of this run's cell over the other run's; NaN unless both were measured."""
    if theirs is None or mine["status"] != "ok" or theirs["status"] != "ok":
        return float("nan")
    return mine["tokens_per_sec"] / theirs["tokens_per_sec"]


def pairs(here: pd.DataFrame, other: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """(this run's row, the other run's row) of every cell in both grids, in this run's table order."""
    theirs = _by_cell(other)
    return [(r, theirs[key]) for _, r in sort_rows(here).iterrows() if (key := tuple(r[a] for a in AXES)) in theirs]


def compare_rows(both: list[tuple[pd.Series, pd.Series]], other_name: str) -> pd.DataFrame:
    """One row per pair: the axes, then batch, tokens/s and the differences, `other`'s first."""
    rows = []
    for mine, theirs in both:
        line = {a: mine[a] for a in AXES}
        line[f"batch {other_name} → here"] = f"{batch_text(theirs)} → {batch_text(mine)}"
        line[f"tok/s {other_name}"] = tokens_text(theirs)
        line["tok/s here"] = tokens_text(mine)
        gain = ratio(mine, theirs)
        line[f"here / {other_name}"] = DASH if pd.isna(gain) else f"{gain:.2f}×"
        for ref in REFERENCES:
            line[f"− {ref} % ({other_name} → here)"] = (
                "" if mine["attn"] == ref else f"{tie_marked(theirs, ref)} → {tie_marked(mine, ref)}"
            )
        rows.append(line)
    return pd.DataFrame(rows)


def _gain_line(both: list[tuple[pd.Series, pd.Series]], other_name: str) -> str:
    ratios = pd.Series([ratio(mine, theirs) for mine, theirs in both], dtype=float).dropna()
    if ratios.empty:
        return f"No cell is measured in both runs yet ({len(both)} cells in both grids)."
    return (f"{len(ratios)} of the {len(both)} cells of both grids are measured in both: tokens/s here over "
            f"{other_name}'s, median {ratios.median():.2f}×, {ratios.min():.2f}-{ratios.max():.2f}×.")


# A group of cells whose implementations are ranked against each other: every axis but the attention.
GROUP_AXES = tuple(a for a in AXES if a != "attn")


def ranked_groups(both: list[tuple[pd.Series, pd.Series]]) -> dict[tuple, list[tuple[pd.Series, pd.Series]]]:
    """{group (GROUP_AXES' values): its pairs}: the cells measured in both runs, by group, where a group has two or
    more of them (something to rank)."""
    groups: dict[tuple, list[tuple[pd.Series, pd.Series]]] = {}
    for mine, theirs in both:
        if mine["status"] == "ok" and theirs["status"] == "ok":
            groups.setdefault(tuple(mine[a] for a in GROUP_AXES), []).append((mine, theirs))
    return {key: pairs_ for key, pairs_ in groups.items() if len(pairs_) >= 2}


def lead_text(a: pd.Series, b: pd.Series) -> str:
    """`a`'s tokens/s over `b`'s of one run in percent; "tie" where both were measured at least twice and their
    spreads overlap (as the tables judge), "not judged" where either was measured once."""
    return f"{100 * (a['tokens_per_sec'] / b['tokens_per_sec'] - 1):+.1f}%" + pair_mark(a, b)


def swapped_pairs(groups: Mapping[tuple, list[tuple[pd.Series, pd.Series]]], other_name: str) -> pd.DataFrame:
    """One row per pair of implementations of a group that the two runs rank the other way round: the group's axes
    (GROUP_AXES), the faster here, the slower here, its lead here and the same pair's lead in the other run (below 0:
    the other way round), each with that run's tie mark."""
    rows = []
    for key, members in groups.items():
        for i, (mine_a, theirs_a) in enumerate(members):
            for mine_b, theirs_b in members[i + 1:]:
                here_gap = mine_a["tokens_per_sec"] - mine_b["tokens_per_sec"]
                if here_gap * (theirs_a["tokens_per_sec"] - theirs_b["tokens_per_sec"]) >= 0:
                    continue
                (fast, slow), (fast_there, slow_there) = (
                    ((mine_a, mine_b), (theirs_a, theirs_b)) if here_gap > 0 else
                    ((mine_b, mine_a), (theirs_b, theirs_a)))
                rows.append({**dict(zip(GROUP_AXES, key)), "faster here": fast["attn"], "than": slow["attn"],
                             "lead here": lead_text(fast, slow),
                             f"the same in {other_name}": lead_text(fast_there, slow_there)})
    return pd.DataFrame(rows)


def telling_axes(keys: pd.DataFrame) -> list[str]:
    """The axes (columns of `keys`, groups' GROUP_AXES values) that tell the groups apart: the model where there are
    several, and each other axis that takes more than one value within a model (one that follows the model, such as
    GPT-2 large's 8-bit AdamW, says nothing more)."""
    return [a for a in keys.columns
            if (keys[a].nunique() > 1 if a == "model" else keys.groupby("model")[a].nunique().max() > 1)]


def _ranking_text(both: list[tuple[pd.Series, pd.Series]], other_name: str) -> str:
    """How the two runs rank the implementations of each group: how many groups have the same fastest (those that
    do not named), and the pairs the runs swap (swapped_pairs), as a table."""
    groups = ranked_groups(both)
    if not groups:
        return "No group of cells that differ in the implementation only has two measured in both runs."
    named = telling_axes(pd.DataFrame(list(groups), columns=list(GROUP_AXES)))
    differ = []
    for key, members in groups.items():
        fastest_here = max(members, key=lambda m: m[0]["tokens_per_sec"])[0]["attn"]
        fastest_there = max(members, key=lambda m: m[1]["tokens_per_sec"])[1]["attn"]
        if fastest_here != fastest_there:
            group = ", ".join(f"{'context' if axis == 'seq_len' else axis} {value}"
                              for axis, value in zip(GROUP_AXES, key) if axis in named)
            differ.append(f"{group}: " * bool(group) + f"{fastest_here} here, {fastest_there} in {other_name}")
    swaps = swapped_pairs(groups, other_name)
    text = (f"Groups of cells that differ in the implementation only, with two or more measured in both runs: "
            f"{len(groups)}; with the same fastest in both: {len(groups) - len(differ)}"
            + (f" (not: {'; '.join(differ)})" if differ else "") + ". ")
    if swaps.empty:
        return text + "No pair of implementations is ranked the other way round."
    keys = telling_axes(swaps[list(GROUP_AXES)])
    # pairs() gives the cells in the tables' order, so the groups and their pairs come in it.
    table = swaps[[*keys, "faster here", "than", "lead here", f"the same in {other_name}"]].rename(
        columns={"seq_len": "context"})
    return (text + "Groups where the runs rank a pair of implementations the other way round: "
            f"{swaps[list(GROUP_AXES)].drop_duplicates().shape[0]}, {len(swaps)} pairs (a lead marked tie lies inside "
            "both cells' spreads in that run, not judged where either was measured once there):\n\n"
            + table.to_markdown(index=False, disable_numparse=True))


def comparison_markdown(here: pd.DataFrame, other: pd.DataFrame, here_name: str, other_name: str) -> str:
    """The comparison of run `here_name` with `other_name`, from their summaries (read_summary)."""
    title = f"# {here_name} beside {other_name}, cell by cell (tokens/s)\n\n"
    both = pairs(here, other)
    rows = compare_rows(both, other_name)
    if rows.empty:
        return title + f"No cell of {here_name}'s grid is in {other_name}'s.\n"
    only = len(here) - len(rows)
    parts = [conditions(here, other, other_name), _gain_line(both, other_name), _ranking_text(both, other_name)]
    if only:
        parts.append(f"Cells of this run not in {other_name}'s grid (not shown): {only}.")
    for mode in [m for m in MODE_ORDER if m in set(rows["mode"])]:
        cells = rows[rows["mode"] == mode].drop(columns="mode")
        keys = row_keys(here[here["mode"] == mode])
        shown = cells[[*keys, "attn", *(c for c in cells.columns if c not in AXES)]]
        parts.append(f"## {mode}\n\n" + render_table(here[here["mode"] == mode], keys, shown.rename(
            columns={"seq_len": "context"})))
    parts.append(
        "Each run's tokens/s is the median of its repeats, ±half its spread, as in its own tables; here / "
        f"{other_name}: the ratio of the medians. − ref %: the difference over the reference implementation's "
        "tokens/s in that run, tie where it lies inside both cells' spreads in that run (not judged where either "
        "cell was measured once there). OOM, unsupported, not run yet: that run's status of the cell; –: not "
        "computable."
        + (f" {GC_LEGEND}" if any_gc_mark(here) or any_gc_mark(other) else "")
    )
    return title + "\n\n".join(parts) + "\n"


def comparison_figure(here: pd.DataFrame, other: pd.DataFrame, here_name: str, other_name: str,
                      path: str | os.PathLike) -> plt.Figure:
    """tokens/s here over the other run's, cell by cell, against context (a line at 1: the same); a cell not
    measured in both is a gap, and an implementation with none in a panel is named in its legend."""
    theirs = _by_cell(other)
    ratios = [ratio(mine, theirs.get(tuple(mine[a] for a in AXES))) for _, mine in here.iterrows()]
    status = ["not measured in both" if pd.isna(r) else "ok" for r in ratios]
    df = here.copy().assign(vs_ratio=ratios, status=status)  # copy: consolidated, as write_figures reads it
    return panel_figure(df, lambda d: d["vs_ratio"], f"tokens/s over {other_name}'s",
                        f"{here_name} over {other_name}, cell by cell", path, reference=1.0)


def write_comparison(summary: str | os.PathLike, other_summary: str | os.PathLike,
                     out: Mapping[str, str | os.PathLike], here_name: str, other_name: str) -> None:
    """out: {"table": path, "figure": path} (comparison_paths)."""
    here, other = read_summary(summary), read_summary(other_summary)
    with atomic_output(out["table"]) as tmp:
        tmp.write_text(comparison_markdown(here, other, here_name, other_name))
    log.info("wrote %s", out["table"])
    plt.close(comparison_figure(here, other, here_name, other_name, out["figure"]))
