"""How much a run's ties and leads depend on the spread rule: `fa2` against `sdpa` and `sdpa_flash`, judged as the
tables judge it and under two stricter rules.

    python benchmarks/sweep/spread_check.py results/RUN [results/RUN ...]

The tables' rule (aggregate.add_spread) keeps the range of a cell whose repeats ran on two GPUs, however narrow, and
widens a cell measured on one GPU to the run's median between-GPU range. Two repeats are a thin measure of either, and
that median mixes cells of very different scatter: where the host bounds a step, the same cell on two GPUs differs by
far more than where the GPU does. So every cell's spread is floored here (its own range kept where wider) at
- `regime`: the median between-GPU range of the run's cells in its regime, the share of the profiled step the GPU
  was busy (`gpu_busy`: under 80%, 80-90%, 90% or more);
- `run-wide`: the run's one median between-GPU range (`between_gpu_pct`), for every cell.
A verdict that changes under a rule rests on the rule, not on the measurements alone.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from attnsweep.report.aggregate import floored_spread, range_pct, spreads_overlap

# Shares of the profiled step the GPU was busy: where a step is host-bound, its tokens/s scatters between GPUs.
# The last bin is open: a profiled step can show a little more kernel time than its wall time (up to 1.04 seen).
REGIME_BINS, REGIME_LABELS = (0.0, 0.8, 0.9, math.inf), ("under 80%", "80-90%", "90% or more")
PAIR_KEYS = ["env_id", "model", "seq_len", "mode", "kv_heads", "precision", "optimizer", "harness"]
REFERENCES = ("sdpa", "sdpa_flash")


def ranges(summary: pd.DataFrame) -> pd.DataFrame:
    """The measured cells with at least two repeats: their range in percent of the median, regime, and whether the
    repeats ran on two GPUs or more (`across`)."""
    df = summary[(summary["status"] == "ok") & (summary["repeats"].fillna(0) >= 2)].copy()
    df["range_pct"] = range_pct(df)
    df["regime"] = pd.cut(df["gpu_busy"], REGIME_BINS, labels=REGIME_LABELS, right=False)
    df["across"] = df["gpus"] >= 2
    return df


def regime_floors(df: pd.DataFrame) -> pd.DataFrame:
    """Per environment and regime: the cells whose repeats ran on two GPUs or more, and their median range."""
    across = df[df["across"]]
    return across.groupby(["env_id", "regime"], observed=True)["range_pct"].agg(cells="size", median_pct="median")


def floored(df: pd.DataFrame, floor_pct: pd.Series) -> pd.DataFrame:
    """`df` with spread_low/high: each cell's own range (min to max of its repeats), floored at ±half `floor_pct`
    (percent of the median; the range alone where it is null), as the tables widen a cell (aggregate.add_spread)."""
    low, high = floored_spread(df, floor_pct)
    return df.assign(spread_low=low, spread_high=high)


def verdicts(df: pd.DataFrame) -> pd.DataFrame:
    """`fa2` against each reference at every setting both were measured at: the difference in percent and whether
    their spreads overlap (a tie)."""
    out = []
    for ref in REFERENCES:
        pair = df[df["attn"] == "fa2"].merge(df[df["attn"] == ref], on=PAIR_KEYS, suffixes=("", "_ref"))
        out.append(pd.DataFrame({
            **{k: pair[k] for k in PAIR_KEYS},
            "reference": ref,
            "diff_pct": 100.0 * (pair["tokens_per_sec"] / pair["tokens_per_sec_ref"] - 1.0),
            "tie": spreads_overlap(pair["spread_low"], pair["spread_high"], pair["spread_low_ref"],
                                   pair["spread_high_ref"]),
        }))
    return pd.concat(out, ignore_index=True)


def changed(df: pd.DataFrame, base: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """{rule: the verdicts that differ from the tables' (`base`: verdicts(df)) under it}, for the two stricter
    rules."""
    base = verdicts(df) if base is None else base
    floors = regime_floors(df)["median_pct"]
    by_regime = pd.Series([floors.get((e, r)) for e, r in zip(df["env_id"], df["regime"])], index=df.index)
    word = {True: "tie", False: "lead"}
    out = {}
    for rule, floor in (("regime", by_regime), ("run-wide", df["between_gpu_pct"])):
        other = verdicts(floored(df, floor))
        flip = base["tie"] != other["tie"]
        out[rule] = base[flip].assign(now=base.loc[flip, "tie"].map(word), under_rule=other.loc[flip, "tie"].map(word))
    return out


def report(run: Path) -> str:
    df = ranges(pd.read_csv(run / "summary.csv"))
    floors = regime_floors(df).reset_index()
    lines = [f"## {run.name}", "", "Between-GPU range by regime (cells whose repeats ran on two GPUs or more):", "",
             floors.to_markdown(index=False, floatfmt=".2f") if len(floors) else "(none)", ""]
    base = verdicts(df)
    for rule, flips in changed(df, base).items():
        lines.append(f"Floor `{rule}`: {len(flips)} of {len(base)} verdicts change.")
        if len(flips):
            cols = ["model", "seq_len", "mode", "reference", "diff_pct", "now", "under_rule"]
            lines += ["", flips[cols].to_markdown(index=False, floatfmt="+.1f")]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="results/RUN folders with a summary.csv")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not (run / "summary.csv").is_file():
            parser.error(f"{run}: no summary.csv")
        print(report(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
