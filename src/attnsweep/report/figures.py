"""Figures from summary.csv (matplotlib, Agg): the study's headline and the curves behind it.

- fa2_vs_sdpa_{compiled,eager}: FlashAttention-2's percent difference to PyTorch's FlashAttention against context,
  one colour per model, solid against `sdpa` (SDPA's default dispatch, the study's) and dashed against
  `sdpa_flash` (SDPA forced to its flash backend).
- speedup, throughput, memory: one panel per mode (rows) and model (columns), one line per implementation.

Only cells with status ok have a point; an OOM or unsupported cell is a gap in its line.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # files only, never a display: jobs run headless
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from . import log  # noqa: E402
from .aggregate import BASELINE, HEADLINE, REFERENCES, read_summary  # noqa: E402

# Panels of one figure must not mix setups: a line is one implementation in one setup (and environment).
SETUP = ("precision", "optimizer", "kv_heads", "harness", "env_id")
LINE_STYLES = ("-", "--", ":", "-.")
# 512,000 rather than 512000 or 5.12e5, as in the tables; small values (speedups, GiB) keep their decimals.
THOUSANDS = FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}")


def _variant_labels(df: pd.DataFrame, within: list[str]) -> pd.Series:
    """A short suffix naming the setup, only where it varies within one panel/line group."""
    varying = [k for k in SETUP if (df.groupby(within)[k].nunique() > 1).any()]
    if not varying:
        return pd.Series("", index=df.index)
    return df[varying].astype(str).agg(", ".join, axis=1).map(lambda s: f" ({s})")


def _context_axis(ax: plt.Axes, seq_lens) -> None:
    ticks = sorted(set(int(s) for s in seq_lens))
    ax.set_xscale("log", base=2)
    # Slanted: the study's contexts (768 next to 1024, 1536 next to 2048) collide when written level on a log axis.
    ax.set_xticks(ticks, [str(t) for t in ticks], rotation=45, ha="right", rotation_mode="anchor")
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.grid(True, alpha=0.3)


def _empty(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s", path)


def headline_figure(df: pd.DataFrame, mode: str, path: str | os.PathLike) -> None:
    """Percent difference of fa2 to sdpa (solid) and sdpa_flash (dashed) against context, one colour per model."""
    rows = df[(df["attn"] == HEADLINE) & (df["mode"] == mode)].copy()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cols = [f"diff_vs_{r}_pct" for r in REFERENCES]
    rows = rows[rows[cols].notna().any(axis=1)]
    if rows.empty:
        _empty(ax, f"no {mode} cell pair of {HEADLINE} and {' or '.join(REFERENCES)} both measured in this run")
    else:
        rows["label"] = rows["model"] + _variant_labels(rows, ["model"])
        colours = {label: f"C{i}" for i, label in enumerate(pd.unique(rows["label"]))}
        for label, line in rows.groupby("label", sort=False):
            for ref, style in zip(REFERENCES, ("-", "--")):
                ax.plot(line["seq_len"], line[f"diff_vs_{ref}_pct"], style, marker="o", color=colours[label],
                        label=f"{label} vs {ref}")
        ax.axhline(0, color="black", linewidth=0.8)
        _context_axis(ax, rows["seq_len"])
        ax.set_ylabel(f"{HEADLINE} tokens/s difference (%)")
        ax.legend(fontsize="small")
    ax.set_title(f"FlashAttention-2 vs PyTorch's FlashAttention, {mode}")
    _save(fig, path)


def panel_figure(
    df: pd.DataFrame,
    value: Callable[[pd.DataFrame], pd.Series],
    ylabel: str,
    title: str,
    path: str | os.PathLike,
    include_baseline: bool = True,
) -> None:
    """One panel per (mode, model), one line per implementation (and setup, where it varies in the panel).

    Cells without a value stay in the data as NaN, so an OOM in the middle of a line is a gap, not a straight
    segment across it.
    """
    df = df.assign(value=value(df))
    if not include_baseline:
        df = df[df["attn"] != BASELINE]
    df = df[df.groupby(["mode", "model", "attn"])["value"].transform("count") > 0]
    modes = [m for m in ("compiled", "eager") if m in set(df["mode"])] or ["compiled"]
    models = list(pd.unique(df["model"])) or ["-"]
    fig, axes = plt.subplots(len(modes), len(models), figsize=(4.2 * len(models), 3.4 * len(modes)),
                             squeeze=False)
    if df.empty:
        _empty(axes[0][0], f"no data for {ylabel} in this run")
    variant = _variant_labels(df, ["mode", "model", "attn"])
    df = df.assign(label=df["attn"] + variant, variant=variant)
    # Colour names the implementation, line style the setup (harness, precision, ...) where it varies.
    colours = {a: f"C{i % 10}" for i, a in enumerate(pd.unique(df["attn"]))}
    styles = {v: LINE_STYLES[i % len(LINE_STYLES)] for i, v in enumerate(pd.unique(df["variant"]))}
    for (i, mode), (j, model) in ((im, jm) for im in enumerate(modes) for jm in enumerate(models)):
        ax = axes[i][j]
        panel = df[(df["mode"] == mode) & (df["model"] == model)]
        if panel.empty:
            if not df.empty:
                _empty(ax, f"no data for {model}, {mode}")
            continue
        for label, line in panel.groupby("label", sort=False):
            ax.plot(line["seq_len"], line["value"], styles[line["variant"].iloc[0]], marker="o",
                    color=colours[line["attn"].iloc[0]], label=label)
        _context_axis(ax, df["seq_len"])
        ax.set_title(f"{model}, {mode}")
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(THOUSANDS)
        ax.legend(fontsize="x-small")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def write_figures(summary: str | os.PathLike, out: dict[str, str | os.PathLike]) -> None:
    """out: {'fa2_vs_sdpa_compiled', 'fa2_vs_sdpa_eager', 'speedup', 'throughput', 'memory'} -> path."""
    df = read_summary(summary)
    for mode in ("compiled", "eager"):
        headline_figure(df, mode, out[f"fa2_vs_sdpa_{mode}"])
    panel_figure(df, lambda d: d["speedup_vs_naive"], "speedup over naive", "Speedup over standard attention",
                 out["speedup"], include_baseline=False)
    panel_figure(df, lambda d: d["tokens_per_sec"].where(d["status"] == "ok"), "tokens/s", "Training throughput",
                 out["throughput"])
    panel_figure(df, lambda d: d["peak_memory_bytes"].where(d["status"] == "ok") / 2**30, "peak memory (GiB)",
                 "Peak GPU memory", out["memory"])
