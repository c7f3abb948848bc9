"""tables/study.md: the 2023 study's findings beside a run's, from hand-made cell records (tests/data)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from attnsweep.report.aggregate import summarize
from attnsweep.report.findings import study_findings, study_markdown
from test_report import add_repeat, make_cell


def finding(df: pd.DataFrame, number: int, contexts: str) -> str:
    """The 'this run' text of finding `number` whose contexts are `contexts`."""
    found = study_findings(df)
    rows = found[(found["finding"] == number) & (found["contexts"] == contexts)]
    assert len(rows) == 1, found
    return rows.iloc[0]["this run"]


def cell(tmp: Path, attn: str, seq_len: int, *tps: float | None, mode: str = "compiled") -> list[Path]:
    """A cell and its repeats (None: out of memory)."""
    first, *more = tps
    path = make_cell(tmp, "ok" if first is not None else "oom", attn=attn, mode=mode, seq_len=seq_len,
                     tokens_per_sec=first)
    return [path, *(add_repeat(path, n, t) for n, t in enumerate(more, start=2))]


def test_ties_leads_and_trails_are_counted_as_the_tables_judge_them(tmp_path: Path) -> None:
    paths = [
        # 1024: fa2 inside sdpa_flash's spread (a tie); 1536: ahead of it (a lead); fa2_graphbreak behind both.
        *cell(tmp_path, "sdpa_flash", 1024, 100.0, 102.0), *cell(tmp_path, "fa2", 1024, 101.0, 103.0),
        *cell(tmp_path, "fa2_graphbreak", 1024, 80.0, 81.0),
        *cell(tmp_path, "sdpa_flash", 1536, 100.0, 101.0), *cell(tmp_path, "fa2", 1536, 110.0, 111.0),
        *cell(tmp_path, "fa2_graphbreak", 1536, 90.0, 91.0),
        # 2048: fa2 measured once, so its difference is not judged; naive out of memory.
        *cell(tmp_path, "sdpa_flash", 2048, 100.0, 100.5), *cell(tmp_path, "fa2", 2048, 120.0),
        *cell(tmp_path, "naive", 1024, 50.0, 50.5), *cell(tmp_path, "naive", 2048, None, None),
        *cell(tmp_path, "fa2", 1024, 90.0, 91.0, mode="eager"), *cell(tmp_path, "sdpa_flash", 1024, 100.0, 100.5,
                                                                       mode="eager"),
    ]
    firsts = [p for p in paths if p.name == "cell.json"]
    df = summarize(firsts, repeats=[p for p in paths if p.name != "cell.json"])

    short = finding(df, 2, "1024, 1536")
    assert ("`fa2` − `sdpa_flash`: +1.0% (1024) to +10.0% (1536) (2 contexts); "
            "1 tie, 1 lead (+10.0% (1536)), 0 trails") in short
    # Every context a trail: the span is not repeated.
    assert ("`fa2_graphbreak` − `sdpa_flash`: −20.3% (1024) to −10.0% (1536) (2 contexts); "
            "0 ties, 0 leads, 2 trails") in short
    long = finding(df, 2, "2048")
    assert "`fa2` − `sdpa_flash`: +19.7% (2048) (1 context); 0 ties, 0 leads, 0 trails, 1 not judged" in long
    # Flash attention over the baseline, and where the baseline did not run.
    assert "`sdpa_flash` − `naive`: +101.0% (1024) (1 context); naive out of memory at 2048" \
        in finding(df, 1, "1024, 1536, 2048")
    assert "`fa2` − `sdpa_flash`: −9.7% (1024) (1 context); 0 ties, 0 leads, 1 trail" in finding(df, 4, "1024")
    # What the graph breaks cost, compiled: fa2_graphbreak against its one-graph twin.
    assert finding(df, 4, "1024, 1536, 2048") == (
        "`fa2_graphbreak` − `fa2`: −21.1% (1024) to −18.1% (1536) (2 contexts); 0 ties, 0 leads, 2 trails")
    text = study_markdown(df)
    assert text.startswith("# The 2023 study's findings beside this run")
    assert "within about ±1.5%" in text and "a cell measured once is not judged" in text


def test_with_one_run_a_cell_no_difference_is_called_a_tie(tmp_path: Path) -> None:
    paths = [*cell(tmp_path, "sdpa_flash", 1024, 100.0), *cell(tmp_path, "fa2", 1024, 100.5)]
    text = finding(summarize(paths), 2, "1024")
    assert text == "`fa2` − `sdpa_flash`: +0.5% (1024) (1 context); one run a cell: ties are not told"


def test_a_run_without_the_studys_comparisons_says_so(tmp_path: Path) -> None:
    df = summarize(cell(tmp_path, "sdpa", 1024, 100.0) + cell(tmp_path, "flex", 1024, 90.0))
    assert study_findings(df).empty
    assert "No cell of this run compares what the study compared" in study_markdown(df)
