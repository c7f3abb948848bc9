"""Rewrite each committed run's markdown tables where the table code now renders its summary.csv otherwise, and
write those it now makes and the run lacks (a table new to the code); with --summaries, first rebuild each run's
summary.csv from the records it was made of, where the summary code now makes it otherwise (a column new to it).

A run's tables are the table code's rendering of its summary.csv (tests/test_committed_results.py checks every
committed run). tools/rerender.sh rebuilds the runs the pipeline can rebuild from their records; the others (the
sweep benchmark's, the equality checks') have no config that would, so after a change to the table code this
rewrites their tables from the summary alone, and after a change to the summary code (--summaries) their summary
from the records its rows name. Comparisons (tables/vs-OTHER.md) need both runs and are left to rerender.sh.

    python tools/rerender_tables.py [-n] [--summaries] [RESULTS]    # RESULTS: results/ by default; -n: only say
                                                                    # what is stale
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import pandas as pd

from attnsweep.cellio import load_cell
from attnsweep.report import atomic_output
from attnsweep.report.aggregate import read_summary, summarize, table_names
from attnsweep.report.tables import render_tables, write_rendered


def summary_inputs(summary: pd.DataFrame, root: Path) -> tuple[list[str], list[str], list[str]]:
    """What a run's summary.csv was made of, read back from its rows (paths relative to `root`, the repository
    root, as its `cell_path` column gives them): the first record of every row measured, the repeats folded into
    it (each repeat-K.json beside it of the same code: one of other code was left out as stale), and the paths of
    its `missing` rows."""
    measured = summary.loc[summary["status"] != "missing", "cell_path"].tolist()
    code = lambda path: load_cell(root / path)["env"]["code"]["source_sha256"]  # noqa: E731
    firsts = {first: code(first) for first in measured}
    repeats = [(Path(first).parent / repeat.name).as_posix() for first, first_code in firsts.items()
               for repeat in sorted((root / first).parent.glob("repeat-*.json")) if code(repeat) == first_code]
    return measured, repeats, summary.loc[summary["status"] == "missing", "cell_path"].tolist()


def rebuilt_summary(run: Path) -> tuple[str, str]:
    """(the summary code's summary.csv of `run`'s records, as text; what differs from the committed one, in words:
    "" where nothing). Refused (ValueError) where the rebuild folds other repeats than the committed summary did:
    then the records are not those it was made of."""
    committed = read_summary(run / "summary.csv")
    root = run.parent.parent
    measured, repeats, missing = summary_inputs(committed, root)
    with contextlib.chdir(root):  # cell_path is relative to the repository root, where the pipeline runs
        rebuilt = summarize(measured, run=run.name, missing=missing, repeats=repeats,
                            allow_mixed_env=committed.loc[committed["status"] != "missing", "env_id"].nunique() > 1)
    by_path = committed.set_index("cell_path")["repeats"]
    if folded := [p for p, n in zip(rebuilt["cell_path"], rebuilt["repeats"]) if not _same(n, by_path.get(p))]:
        raise ValueError(f"{run}/summary.csv: the records beside it fold other repeats than it did: "
                         + ", ".join(folded))
    if set(rebuilt) == set(committed):  # the column order follows the first record's keys: keep the committed one
        rebuilt = rebuilt[list(committed.columns)]
    text = rebuilt.to_csv(index=False)
    again = read_summary(io.StringIO(text))
    added, dropped = sorted(set(again) - set(committed)), sorted(set(committed) - set(again))
    new, old = again.set_index("cell_path"), committed.set_index("cell_path")
    changed = sorted(c for c in set(new) & set(old) if not _same_column(new[c], old[c]))
    said = [f"{what}: {', '.join(cols)}" for what, cols in (("new", added), ("gone", dropped), ("changed", changed))
            if cols]
    if not said and text != (run / "summary.csv").read_text():
        said = ["column order or number formatting"]
    return text, "; ".join(said)


def _same(a: object, b: object) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def _same_column(a: pd.Series, b: pd.Series) -> bool:
    try:
        pd.testing.assert_series_equal(a.reindex(b.index), b, check_dtype=False, check_exact=False, rtol=1e-12)
    except AssertionError:
        return False
    return True


def stale_tables(run: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """{table name: path} of `run`'s tables that differ from what the table code renders now (its committed ones
    and those the code makes of its summary, aggregate.table_names, missing ones included), and the texts rendered."""
    df = read_summary(run / "summary.csv")
    tables = {p.stem: p for p in sorted((run / "tables").glob("*.md")) if not p.stem.startswith("vs-")}
    tables |= {name: run / "tables" / f"{name}.md" for name in table_names(df["mode"]) if name not in tables}
    texts = render_tables(df, list(tables))
    stale = {name: path for name, path in tables.items() if not path.is_file() or path.read_text() != texts[name]}
    return stale, texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--dry-run", action="store_true", help="say what is stale, write nothing")
    parser.add_argument("--summaries", action="store_true",
                        help="first rebuild each summary.csv from the records it was made of, where it differs")
    parser.add_argument("results", nargs="?", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    verb = "stale" if args.dry_run else "rewritten"
    for summary in sorted(args.results.glob("*/summary.csv")):
        run, differs = summary.parent, ""
        if args.summaries:
            try:
                text, differs = rebuilt_summary(run)
            except ValueError as e:
                sys.exit(f"rerender_tables.py: {e}")
            if differs and not args.dry_run:
                with atomic_output(summary) as tmp:
                    tmp.write_text(text)
            print(f"{run.name}: {f'summary.csv {verb} ({differs})' if differs else 'summary.csv as built'}")
        if differs and args.dry_run:
            continue  # its tables would follow the summary not written
        stale, texts = stale_tables(run)
        if stale and not args.dry_run:
            write_rendered(texts, stale)
        names = ", ".join(p.name for p in stale.values())
        print(f"{run.name}: {f'{names} {verb}' if stale else 'tables as rendered'}")


if __name__ == "__main__":
    main()
