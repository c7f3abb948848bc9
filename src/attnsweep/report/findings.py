"""The 2023 study's findings beside a run's, point by point (tables/study.md).

The study ("FlashAttention with PyTorch Compile", docs/protocol.md, Findings) compared, compiled and eager,
PyTorch's flash attention (`sdpa_flash` here) with FlashAttention-2, whose every attention layer then broke the
compiled graph (`fa2_graphbreak` here; today's flash-attn compiles into one graph: `fa2`, so the two set side by side
show what the breaks cost), and both with standard attention (`naive`). For each of its findings this gives what
the run measured in the same comparison: the range of the differences over the cells where both ran, and, in a run
with repeats, how many are ties (inside both cells' spreads, as the tables mark them), leads and trails. Every
number comes from summary.csv's columns (`speedup_vs_naive`, `diff_vs_sdpa_flash_pct`, `tie_vs_sdpa_flash`,
`graphbreak_over_one_graph`, `tie_graphbreak`, `status`): nothing here is judged anew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from .aggregate import BASELINE, GRAPH_BREAK_SUFFIX, SAME_SETUP, has_repeats, is_grouped

REFERENCE = "sdpa_flash"
# The study's FlashAttention-2 (with its graph breaks), then today's, compared with REFERENCE.
FA2S = ("fa2_graphbreak", "fa2")
# Flash attention against the baseline: the study's kernel, then SDPA's own choice today.
FLASH = ("sdpa_flash", "sdpa")
# The study tied FlashAttention-2 to PyTorch's up to this context and saw it lead beyond.
SHORT_CONTEXT_MAX = 1536
# What else tells two cells apart (aggregate's): the rows are per model, mode and context already, and multi-head only.
SETUP = tuple(k for k in SAME_SETUP if k not in ("model", "seq_len", "mode", "kv_heads"))
STATUS_TEXT = {"oom": "out of memory", "missing": "not run yet"}


@dataclass(frozen=True)
class Finding:
    """One of the study's findings: its number in docs/protocol.md, what it said, and the cells it was about."""

    number: int
    said: str
    mode: str
    models: tuple[str, ...] | None  # None: every model
    contexts: str  # "short" (up to SHORT_CONTEXT_MAX), "long" (beyond it) or "all"
    compared: tuple[str, ...]  # implementations set against `against`
    against: str


FINDINGS = (
    Finding(1, "flash attention +14% (small, 256) to +145% (2048) over standard attention; standard attention out "
            "of memory at 4096 (small) and from 2048 (medium) on 12 GB", "compiled", None, "all", FLASH, BASELINE),
    Finding(2, "FlashAttention-2 (with graph breaks) ties PyTorch's flash attention, within about ±1.5%",
            "compiled", ("small", "medium"), "short", FA2S, REFERENCE),
    Finding(2, "FlashAttention-2 leads by +15% to +53%, mostly from the larger batches its memory allowed",
            "compiled", ("small", "medium"), "long", FA2S, REFERENCE),
    Finding(3, "FlashAttention-2 leads at every context, by +3% to +30% (8-bit AdamW)", "compiled", ("large",),
            "all", FA2S, REFERENCE),
    Finding(4, "FlashAttention-2 leads by 4-6% even at short contexts", "eager", None, "all", ("fa2",), REFERENCE),
    Finding(4, "so its compiled tie is what its graph breaks cost it (about those 4-6%)", "compiled", None, "all",
            ("fa2_graphbreak",), "fa2"),
)


def _pct(value: float) -> str:
    return f"{value:+.1f}%".replace("-", "−")


def _span(values: pd.Series, contexts: pd.Series) -> str:
    """'+1.0% (256) to +3.5% (2048)': the lowest and highest value with the context each was measured at."""
    lo, hi = values.idxmin(), values.idxmax()
    if lo == hi:
        return f"{_pct(values[lo])} ({contexts[lo]})"
    return f"{_pct(values[lo])} ({contexts[lo]}) to {_pct(values[hi])} ({contexts[hi]})"


def _contexts(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in sorted(set(values)))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _verdicts(pairs: pd.DataFrame, repeated: bool) -> str:
    """Ties, leads and trails of `pairs` (diff and tie columns), as the tables judge them."""
    if not repeated:
        return "one run a cell: ties are not told"
    judged = pairs[pairs["tie"].notna()]
    tie = judged["tie"].astype(bool)
    parts = [_count(int(tie.sum()), "tie")]
    leads, trails = judged[~tie & (judged["diff"] > 0)], judged[~tie & (judged["diff"] <= 0)]
    for label, part in (("lead", leads), ("trail", trails)):
        # Its span where it is not every context's (that one has been given already).
        span = f" ({_span(part['diff'], part['seq_len'])})" if 0 < len(part) < len(pairs) else ""
        parts.append(_count(len(part), label) + span)
    unjudged = len(pairs) - len(judged)
    if unjudged:
        parts.append(f"{unjudged} not judged (a cell measured once)")
    return ", ".join(parts)


def _without(cells: pd.DataFrame, attn: str) -> str:
    """Where `attn` has no throughput among `cells`: its statuses with their contexts."""
    rows = cells[(cells["attn"] == attn) & (cells["status"] != "ok")]
    by_status = rows.groupby("status")["seq_len"].apply(list)
    return "; ".join(f"{STATUS_TEXT.get(s, s)} at {_contexts(v)}" for s, v in by_status.items())


def _compare(cells: pd.DataFrame, attn: str, against: str, repeated: bool) -> str:
    """What the run measured for `attn` against `against` over `cells` (one model, mode and setup)."""
    rows = cells[cells["attn"] == attn]
    if rows.empty or not (cells["attn"] == against).any():
        return ""
    if against == BASELINE:
        ok = rows[rows["speedup_vs_naive"].notna()]
        text = (f"{_span(100.0 * (ok['speedup_vs_naive'] - 1.0), ok['seq_len'])} ({_count(len(ok), 'context')})"
                if len(ok) else "no context where both ran")
    else:
        # A graph break against its one-graph twin, or an implementation against a reference (aggregate's columns).
        twin = attn == against + GRAPH_BREAK_SUFFIX
        diff = 100.0 * (rows["graphbreak_over_one_graph"] - 1.0) if twin else rows[f"diff_vs_{against}_pct"]
        ok = rows[diff.notna()]
        pairs = pd.DataFrame({"diff": diff[ok.index], "tie": ok["tie_graphbreak" if twin else f"tie_vs_{against}"],
                              "seq_len": ok["seq_len"]})
        text = (f"{_span(pairs['diff'], pairs['seq_len'])} ({_count(len(ok), 'context')}); "
                f"{_verdicts(pairs, repeated)}"
                if len(ok) else "no context where both ran")
    gaps = "; ".join(f"{a} {w}" for a in dict.fromkeys((attn, against)) if (w := _without(cells, a)))
    return f"`{attn}` − `{against}`: {text}" + (f"; {gaps}" if gaps else "")


def study_findings(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finding, model and setup present in `df` (a summary as read_summary returns it): the finding's
    number, what the study said, and what this run measured in the same comparison. Grouped and multi-query cells
    are left out: the study measured multi-head attention only."""
    df = df[~is_grouped(df)]
    repeated = has_repeats(df)
    # A setup that differs between models (8-bit AdamW for large) is the model's; one that varies within a model
    # splits its rows.
    varying = [k for k in SETUP if k in df and (df.groupby("model")[k].nunique() > 1).any()]
    rows = []
    for finding in FINDINGS:
        cells = df[df["mode"] == finding.mode]
        if finding.models is not None:
            cells = cells[cells["model"].isin(finding.models)]
        if finding.contexts == "short":
            cells = cells[cells["seq_len"] <= SHORT_CONTEXT_MAX]
        elif finding.contexts == "long":
            cells = cells[cells["seq_len"] > SHORT_CONTEXT_MAX]
        for key, group in cells.groupby(["model", *varying], sort=False):
            measured = [text for attn in finding.compared
                        if (text := _compare(group, attn, finding.against, repeated))]
            if not measured:
                continue
            model, *setup = key
            rows.append({"finding": finding.number, "the study (2023)": finding.said, "mode": finding.mode,
                         "model": model + (f" ({', '.join(map(str, setup))})" if setup else ""),
                         "contexts": _contexts(group["seq_len"]), "this run": "<br>".join(measured)})
    return pd.DataFrame(rows)


def study_markdown(df: pd.DataFrame) -> str:
    """tables/study.md: study_findings as a markdown table, with what its numbers mean."""
    title = "# The 2023 study's findings beside this run\n\n"
    found, repeated = study_findings(df), has_repeats(df)
    if found.empty:
        return title + ("No cell of this run compares what the study compared (`naive`, `sdpa_flash`, `sdpa`, "
                        "`fa2`, `fa2_graphbreak`, compiled or eager, multi-head).\n")
    legend = (
        "The findings are numbered as in docs/protocol.md (Findings). Percent: the first implementation's tokens/s "
        "over the second's, minus 1 (against `naive`: the speedup), at the context in brackets; the lowest and the "
        "highest over the contexts where both ran. The study's FlashAttention-2 broke the compiled graph at every "
        "attention layer: `fa2_graphbreak` is that condition, `fa2` today's flash-attn in one graph. "
        + ("Tie, lead, trail: as the tables judge a difference with repeats (a tie lies inside both cells' "
           "spreads: summary.csv's tie_vs_sdpa_flash and tie_graphbreak); a cell measured once is not judged."
           if repeated else "With one run a cell, no difference is told apart from run-to-run spread.")
    )
    # Text as written: a lone context ("1024") is not a number to right-align.
    return title + found.to_markdown(index=False, disable_numparse=True) + f"\n\n{legend}\n"
