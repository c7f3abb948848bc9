"""Figures from summary.csv (matplotlib, Agg): the study's headline and the curves behind it.

- fa2_vs_sdpa_{compiled,compiled_cudagraphs,eager}: FlashAttention-2's percent difference to PyTorch's
  FlashAttention against context, one colour per model, solid against `sdpa` (SDPA's default dispatch, the study's)
  and dashed against `sdpa_flash` (SDPA forced to its flash backend); with repeats, an open marker is a tie (the
  difference lies inside both cells' spreads, as the tables mark it).
- speedup, throughput: one panel per mode (rows) and model (columns), one line per implementation, with error bars:
  with repeats, a cell's spread (its repeats' range, widened for the GPUs' differences: aggregate.add_spread);
  without, the window's slowest to fastest step. The title says which. memory: the same panels, no error bars.
  Throughput and memory start at zero, speedup has its line at 1 (no gain).

Only cells with status ok have a point; an OOM or unsupported cell is a gap in its line, and an implementation with
no point in a panel is named in its legend with its status (e.g. "flex: unsupported").
`figure_names` says which figures a grid can give data to, so a run makes no empty placeholder.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # files only, never a display: jobs run headless
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from matplotlib.lines import Line2D  # noqa: E402

from . import atomic_output, log  # noqa: E402
from .aggregate import (  # noqa: E402,F401
    BASELINE, HEADLINE, MODE_ORDER, REFERENCES, figure_names, has_repeats, read_summary,
)

# Panels of one figure must not mix setups: a line is one implementation in one setup (and environment).
SETUP = ("precision", "optimizer", "kv_heads", "harness", "env_id")
LINE_STYLES = ("-", "--", ":", "-.")
# 512,000 rather than 512000 or 5.12e5, as in the tables; small values (speedups, GiB) keep their decimals.
THOUSANDS = FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}")


FIGURES = (*(f"fa2_vs_sdpa_{m}" for m in MODE_ORDER), "speedup", "throughput", "memory")


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


def _named(absent: pd.Series) -> list[str]:
    """"attn: status" for each implementation (the index's last level) without a value."""
    return [f"{key[-1] if isinstance(key, tuple) else key}: {status}" for key, status in absent.items()]


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s", path)


def headline_figure(df: pd.DataFrame, mode: str, path: str | os.PathLike) -> plt.Figure:
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
        any_tie = False
        for label, line in rows.groupby("label", sort=False):
            for ref, style in zip(REFERENCES, ("-", "--")):
                x, y = line["seq_len"], line[f"diff_vs_{ref}_pct"]
                ax.plot(x, y, style, color=colours[label], label=f"{label} vs {ref}", marker="o")
                # Ties are known only with repeats (NaN without): drawn over the filled marker, open.
                tie = line.get(f"tie_vs_{ref}", pd.Series(index=line.index, dtype=object)).eq(True)
                if tie.any():
                    any_tie = True
                    ax.plot(x[tie], y[tie], linestyle="none", marker="o", markerfacecolor="white",
                            markeredgecolor=colours[label])
        ax.axhline(0, color="black", linewidth=0.8)
        _context_axis(ax, rows["seq_len"])
        ax.set_ylabel(f"{HEADLINE} tokens/s difference (%)")
        handles, labels = ax.get_legend_handles_labels()
        if any_tie:
            handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", color="grey"))
            labels.append("open: a tie (inside both cells' spreads)")
        ax.legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"FlashAttention-2 vs PyTorch's FlashAttention, {mode}")
    _save(fig, path)
    return fig


def panel_figure(
    df: pd.DataFrame,
    value: Callable[[pd.DataFrame], pd.Series],
    ylabel: str,
    title: str,
    path: str | os.PathLike,
    include_baseline: bool = True,
    spread: bool = False,
    reference: float | None = None,
) -> plt.Figure:
    """One panel per (mode, model), one line per implementation (and setup, where it varies in the panel).

    Cells without a value stay in the data as NaN, so an OOM in the middle of a line is a gap, not a straight
    segment across it. An implementation without any value in a panel is a legend entry naming its status.
    spread: error bars, relative to the cell's tokens/s and applied to the value: with repeats in the run, the cell's
    spread (spread_low/high: its repeats' range, widened to the run's between-GPU spread where its repeats all ran on
    one GPU, so also for a cell measured once); without, the window's slowest and fastest step (the
    per-step spread, not a run-to-run one). The title says which. reference: a horizontal line there (1 for a
    speedup); without one, the axis starts at zero, so the height of a line is its size.
    """
    df = df.assign(value=value(df))
    if not include_baseline:
        df = df[df["attn"] != BASELINE]
    has_value = df.groupby(["mode", "model", "attn"])["value"].transform("count") > 0
    # What ran nowhere in its panel (e.g. flex on the CPU: unsupported; a speedup without its baseline: ok, but none
    # computable): named, not left out without a word. Every model of the run keeps its column; a mode without any
    # value (eager speedups where the grid has no eager baseline) is said below the panels instead of a row of them.
    absent = df[~has_value].groupby(["mode", "model", "attn"], sort=False)["status"].agg(
        lambda s: "/".join(sorted({"ok, none computable" if v == "ok" else v for v in s.astype(str)})))
    in_grid = set(zip(df["mode"], df["model"]))
    absent_panels = set(absent.index.droplevel("attn"))
    valued = set(df.loc[has_value, "mode"])
    modes = [m for m in MODE_ORDER if m in valued] or ["compiled"]
    unvalued = {mode for mode, _ in in_grid} - valued
    valueless = [f"{m}: no value for any model ({', '.join(sorted(set(_named(absent[m]))))})"
                 for m in MODE_ORDER if m in unvalued]
    models = list(pd.unique(df["model"])) or ["-"]
    df = df[has_value]
    repeated = has_repeats(df)
    low_high = (("spread_low", "spread_high") if repeated
                else ("tokens_per_sec_stats.min", "tokens_per_sec_stats.max"))
    if spread and set(low_high) <= set(df.columns):
        tps, (low, high) = df["tokens_per_sec"], (df[c] for c in low_high)
        df = df.assign(err_low=(df["value"] * (1 - low / tps)).clip(lower=0).fillna(0),
                       err_high=(df["value"] * (high / tps - 1)).clip(lower=0).fillna(0))
        title += (" (error bars: a cell's spread over its repeats)" if repeated
                  else " (error bars: the window's slowest to fastest step)")
    else:
        spread = False
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
        missing = _named(absent[mode][model]) if (mode, model) in absent_panels else []
        if panel.empty:
            if not df.empty:
                _empty(ax, "\n".join([f"no data for {model}, {mode}", *missing]) if (mode, model) in in_grid
                       else f"{model}, {mode}: not in this run's grid")
            continue
        for label, line in panel.groupby("label", sort=False):
            style = dict(fmt=styles[line["variant"].iloc[0]], marker="o", color=colours[line["attn"].iloc[0]],
                         label=label)
            if spread:
                ax.errorbar(line["seq_len"], line["value"], yerr=[line["err_low"], line["err_high"]], capsize=3,
                            **style)
            else:
                ax.errorbar(line["seq_len"], line["value"], **style)
        if reference is None:
            ax.set_ylim(bottom=0)
        else:
            ax.axhline(reference, color="black", linewidth=0.8)
        _context_axis(ax, df["seq_len"])
        ax.set_title(f"{model}, {mode}")
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(THOUSANDS)
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], linestyle="none", marker="x", color="grey") for _ in missing]
        ax.legend(handles, labels + missing, fontsize="x-small")
    fig.suptitle(title)
    if valueless:
        fig.text(0.5, 0, "\n".join(valueless), ha="center", va="top", fontsize="small")
    fig.tight_layout()
    _save(fig, path)
    return fig


def write_figures(summary: str | os.PathLike, out: dict[str, str | os.PathLike]) -> dict[str, plt.Figure]:
    """out: figure name (of FIGURES; those `figure_names` chose) -> path. Returns the figures drawn, by name."""
    df = read_summary(summary).copy()  # consolidated: the columns as read make every assign warn of fragmentation
    draw: dict[str, Callable[[str | os.PathLike], plt.Figure]] = {
        **{f"fa2_vs_sdpa_{mode}": (lambda path, mode=mode: headline_figure(df, mode, path))
           for mode in MODE_ORDER},
        "speedup": lambda path: panel_figure(
            df, lambda d: d["speedup_vs_naive"], "speedup over naive", "Speedup over standard attention", path,
            include_baseline=False, spread=True, reference=1.0),
        "throughput": lambda path: panel_figure(
            df, lambda d: d["tokens_per_sec"].where(d["status"] == "ok"), "tokens/s", "Training throughput", path,
            spread=True),
        "memory": lambda path: panel_figure(
            df, lambda d: d["peak_memory_bytes"].where(d["status"] == "ok") / 2**30, "peak memory (GiB)",
            "Peak GPU memory", path),
    }
    unknown = sorted(set(out) - set(draw))
    if unknown:
        raise ValueError(f"unknown figure names {unknown}; known: {', '.join(FIGURES)}")
    return {name: draw[name](path) for name, path in out.items()}
