"""The committed GPU results are what the code makes of the committed cells: nothing in them is typed in by hand.

Every cell record under results/ passes the schema check. Each run's summary.csv is rebuilt from its cell files (plus
its `missing` rows, for a sweep run in parts) and must hold the same values; its markdown tables are re-rendered from
that summary and must equal the committed ones byte for byte. A hand-edited number, a cell left out of a summary, a
cell file edited after its tables were made, or a table left stale after the table code changed fails here.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from attnsweep.cellio import load_cell
from attnsweep.report.aggregate import read_summary, summarize
from attnsweep.report.compare import comparison_markdown
from attnsweep.report.tables import render_tables

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"


def committed_files(repo: Path = REPO) -> list[Path]:
    """The files under results/ that git tracks: a user's own runs (the CPU demo, a run of their grid) are not
    checked, since nothing guarantees they are complete or current. Outside a git checkout (an unpacked archive)
    every file under results/ is taken as committed, since there is nothing else to tell them apart by."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", "results"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in (repo / "results").rglob("*") if p.is_file())
    return sorted(repo / name for name in listed.split("\0") if name)


COMMITTED = committed_files()
# Every JSON under results/ is a cell record, except the pipeline's code stamps and tools/harness_gap.py's probes.
NOT_CELLS = {"stamps", "gap"}
CELL_FILES = [
    p for p in COMMITTED if p.suffix == ".json" and not NOT_CELLS & set(p.relative_to(RESULTS).parts)
]
RUNS = sorted(p.parent.name for p in COMMITTED if p.name == "summary.csv" and p.parent.parent == RESULTS)


def committed_cells(run: str, name: str = "cell.json") -> list[Path]:
    return [p for p in CELL_FILES if p.match(name) and p.is_relative_to(RESULTS / run / "cells")]


def test_there_are_committed_results_to_check():
    # Guards the parametrized tests below against passing vacuously if results/ moved or emptied.
    assert len(CELL_FILES) >= 40
    assert {"h100-harness", "h100-study-12gib"} <= set(RUNS)


@pytest.mark.parametrize("path", CELL_FILES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_committed_cell_record_is_valid(path):
    record = load_cell(path)  # raises naming the file and the field
    assert record["status"] in {"ok", "oom", "unsupported", "diverged"}, f"{path}: status {record['status']}"
    if record["status"] == "ok":
        assert record["tokens_per_sec"] > 0
        assert record["loss"]["fell"], f"{path}: the loss did not fall"


def test_only_committed_runs_are_checked(tmp_path):
    """A run the user made (untracked, here half-written) is not a committed result; outside git all are."""
    (tmp_path / "results" / "mine").mkdir(parents=True)
    (tmp_path / "results" / "mine" / "summary.csv").write_text("half written")
    assert committed_files(tmp_path) == [tmp_path / "results" / "mine" / "summary.csv"]  # not a git checkout
    (tmp_path / "results" / "kept").mkdir()
    (tmp_path / "results" / "kept" / "summary.csv").write_text("tracked")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "results/kept"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "kept"], cwd=tmp_path, check=True)
    assert committed_files(tmp_path) == [tmp_path / "results" / "kept" / "summary.csv"]


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Through CSV and back, columns sorted: the column order follows the first record's key order, not content."""
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    buf.seek(0)
    back = read_summary(buf)
    return back[sorted(back.columns)]


@pytest.mark.parametrize("run", RUNS)
def test_summary_is_rebuilt_from_the_committed_cells(run, monkeypatch):
    committed = read_summary(RESULTS / run / "summary.csv")
    missing = committed.loc[committed["status"] == "missing", "cell_path"].tolist()
    # A cell listed as missing beside its record, and a repeat of other code than its cell's first record, were
    # left out as stale (a run in parts resumed after a code change: sweep.stale_to_leave_out). Each is of another
    # code than every record tabled.
    code = lambda p: load_cell(p)["env"]["code"]["source_sha256"]  # noqa: E731
    stale_firsts = {str(p) for p in committed_cells(run) if p.relative_to(REPO).as_posix() in missing}
    with_stale_first = {str(p) for p in committed_cells(run, "repeat-*.json")
                        if str(p.with_name("cell.json")) in stale_firsts}
    stale_repeats = {str(p) for p in committed_cells(run, "repeat-*.json")
                     if str(p) not in with_stale_first and code(p) != code(p.with_name("cell.json"))}
    left_out = stale_firsts | stale_repeats | with_stale_first
    tabled = {code(p) for p in [*committed_cells(run), *committed_cells(run, "repeat-*.json")]
              if str(p) not in left_out}
    assert all(code(Path(p)) not in tabled for p in stale_firsts | stale_repeats), run
    present = [p for p in committed_cells(run) if str(p) not in left_out]
    monkeypatch.chdir(REPO)  # cell_path in a summary is relative to the repository root, where the pipeline runs
    repeats = [p.relative_to(REPO) for p in committed_cells(run, "repeat-*.json") if str(p) not in left_out]
    rebuilt = summarize([p.relative_to(REPO) for p in present], run=run, missing=missing, repeats=repeats)
    assert len(rebuilt) == len(committed), (
        f"{run}: {len(committed)} rows committed, {len(present)} cells and {len(missing)} missing rows committed"
    )
    pd.testing.assert_frame_equal(_canonical(rebuilt), _canonical(committed), check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("run", RUNS)
def test_tables_are_rendered_from_the_committed_summary(run):
    for name, text in render_tables(read_summary(RESULTS / run / "summary.csv")).items():
        committed = (RESULTS / run / "tables" / f"{name}.md").read_text()
        assert committed == text, f"results/{run}/tables/{name}.md is not what the table code makes of summary.csv"



def test_comparisons_are_rendered_from_both_committed_summaries():
    """Every committed tables/vs-OTHER.md (compare_with) is what the comparison code makes of its run's and OTHER's
    summaries."""
    paths = sorted(p for run in RUNS for p in (RESULTS / run / "tables").glob("vs-*.md"))
    assert paths, "no committed comparison (results/RUN/tables/vs-OTHER.md)"
    for path in paths:
        run, other = path.parent.parent.name, path.stem.removeprefix("vs-")
        text = comparison_markdown(read_summary(RESULTS / run / "summary.csv"),
                                   read_summary(RESULTS / other / "summary.csv"), run, other)
        assert path.read_text() == text, f"results/{run}/tables/{path.name} is not what the comparison code makes"


def test_rerender_covers_every_run_with_a_report_or_a_comparison_and_its_arguments_are_accepted():
    """tools/rerender.sh (after a change to the report code, or new records in a run in parts): each run's arguments
    pass the config check (a dry run of each), and it names every run that commits an HTML report or a comparison,
    so that re-rendering leaves none of them behind."""
    env = {**os.environ, "SNAKEMAKE": str(Path(sys.executable).parent / "snakemake")}
    done = subprocess.run(["bash", "tools/rerender.sh", "-n"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    named = {line.removeprefix("== ") for line in done.stdout.splitlines() if line.startswith("== ")}
    needed = {p.parent.name for p in COMMITTED if p.name == "report.html"} | {
        p.parent.parent.name for p in COMMITTED if p.parent.name == "tables" and p.name.startswith("vs-")}
    assert needed and needed <= named, f"tools/rerender.sh leaves out {sorted(needed - named)}"

def _markdown_tables(text: str, header_start: str) -> list[list[dict[str, str]]]:
    """The rows of each markdown table whose header line starts with `header_start`, as {column: cell text}."""
    lines = text.splitlines()
    tables = []
    for at in (i for i, line in enumerate(lines) if line.startswith(header_start)):
        header = [c.strip() for c in lines[at].strip("|").split("|")]
        rows = []
        for line in lines[at + 2:]:
            if not line.startswith("|"):
                break
            rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
        tables.append(rows)
    return tables


def _cell(summary: pd.DataFrame, **axes) -> pd.Series:
    sel = summary
    for axis, value in axes.items():
        sel = sel[sel[axis] == value]
    assert len(sel) == 1, axes
    return sel.iloc[0]


@pytest.mark.parametrize("run, index", [("h200-study-12gib", 0), ("h200", 1)])
def test_front_page_tables_quote_the_h200_runs(run: str, index: int):
    """The README's two tables of the H200 (the 12 GiB replay, then the whole GPU) are typed by hand: every number in
    them must be the run's committed summary's, formatted as the pipeline's tables give it (median ± half its spread,
    aggregate.add_spread; a difference inside both spreads a tie). A batch cell gives the batch most of the row's
    implementations ran, and each other one's in brackets ("64 (`fa2_graphbreak`: 56)")."""
    summary = read_summary(RESULTS / run / "summary.csv")
    tables = _markdown_tables((REPO / "README.md").read_text(), "| model | context | batch | sdpa | sdpa_flash |")
    assert len(tables) == 2
    rows = tables[index]
    assert len(rows) == 7
    for row in rows:
        at = {"model": row["model"], "seq_len": int(row["context"]), "mode": "compiled"}
        common, *others = row["batch"].split(" (")
        matches = [re.fullmatch(r"`(\w+)`: (\d+)\)?", o) for o in others]
        assert all(matches), f"batch cell {row['batch']!r}: not 'N' or 'N (`attn`: M)'"
        batch_of = dict(m.groups() for m in matches)
        for attn in ("sdpa", "sdpa_flash", "fa2", "fa2_graphbreak"):
            c = _cell(summary, attn=attn, **at)
            assert c["repeats"] == 2 and batch_of.get(attn, common) == f"{c['batch_size']:.0f}", (row, attn)
            half = 50 * (c["spread_high"] - c["spread_low"]) / c["tokens_per_sec"]
            assert row[attn] == f"{c['tokens_per_sec']:,.0f} ±{half:.1f}%", (row, attn)
        fa2 = _cell(summary, attn="fa2", **at)
        for ref in ("sdpa_flash", "sdpa"):
            tie = " tie" if fa2[f"tie_vs_{ref}"] == True else ""  # noqa: E712 -- NaN where not known
            assert row[f"fa2 − {ref}"].replace("−", "-") == f"{fa2[f'diff_vs_{ref}_pct']:+.1f}%{tie}", (row, ref)


def test_history_page_table_quotes_the_h100_replay():
    """The history page's table of the H100 replay (medians of the per-step tokens/s, with their spread)."""
    summary = read_summary(RESULTS / "h100-study-12gib" / "summary.csv")
    rows = _markdown_tables((RESULTS / "history.md").read_text(), "| context | batch | sdpa | sdpa_flash | fa2 |")[0]
    assert rows
    quoted = 0
    for row in rows:
        for attn in ("sdpa", "sdpa_flash", "fa2", "fa2_graphbreak"):
            if not row[attn]:
                continue
            c = _cell(summary, model="small", seq_len=int(row["context"]), attn=attn, mode="compiled")
            median, mean, std = (c[f"tokens_per_sec_stats.{k}"] for k in ("median", "mean", "std"))
            assert row[attn] == f"{median:,.0f} (±{100 * std / mean:.1f}%)", (row["context"], attn)
            assert row["batch"] == f"{c['batch_size']:.0f}"
            quoted += 1
    assert quoted == len(summary[(summary["model"] == "small") & (summary["status"] == "ok")])
