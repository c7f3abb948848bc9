"""Rewrite each committed run's markdown tables where the table code now renders its summary.csv otherwise, and
write those it now makes and the run lacks (a table new to the code).

A run's tables are the table code's rendering of its summary.csv (tests/test_committed_results.py checks every
committed run). tools/rerender.sh rebuilds the runs the pipeline can rebuild from their records; the others (the
sweep benchmark's, the equality checks') have no config that would, so after a change to the table code this
rewrites their tables from the summary alone. Comparisons (tables/vs-OTHER.md) need both runs and are left to
rerender.sh.

    python tools/rerender_tables.py [-n] [RESULTS]    # RESULTS: results/ by default; -n: only say what is stale
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attnsweep.report.aggregate import read_summary, table_names
from attnsweep.report.tables import render_tables, write_rendered


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
    parser.add_argument("-n", "--dry-run", action="store_true", help="say which tables are stale, write nothing")
    parser.add_argument("results", nargs="?", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    for summary in sorted(args.results.glob("*/summary.csv")):
        stale, texts = stale_tables(summary.parent)
        if stale and not args.dry_run:
            write_rendered(texts, stale)
        names = ", ".join(p.name for p in stale.values())
        verb = "stale" if args.dry_run else "rewritten"
        print(f"{summary.parent.name}: {f'{names} {verb}' if stale else 'tables as rendered'}")


if __name__ == "__main__":
    main()
