"""tools/rerender_tables.py: a committed run's stale tables rewritten from its summary.csv, and nothing else; with
--summaries, its summary.csv first rebuilt from the records its rows name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "rerender_tables.py"


def run_script(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True)
    return done.stdout


def test_a_stale_table_is_named_then_rewritten_and_a_comparison_left(tmp_path: Path) -> None:
    run = tmp_path / "results" / "r"
    shutil.copytree(REPO / "results" / "h200-eq-cold", run, ignore=shutil.ignore_patterns("cells", "logs"))
    (run / "tables" / "vs-other.md").write_text("a comparison, not this script's\n")
    compiled = run / "tables" / "compiled.md"
    rendered = compiled.read_text()
    compiled.write_text(rendered.replace("tokens/s", "tokens a second", 1))
    untouched = {p.name: p.read_text() for p in (run / "tables").glob("*.md")}

    assert run_script("-n", str(run.parent)) == "r: compiled.md stale\n"
    assert {p.name: p.read_text() for p in (run / "tables").glob("*.md")} == untouched

    assert run_script(str(run.parent)) == "r: compiled.md rewritten\n"
    assert compiled.read_text() == rendered
    assert (run / "tables" / "vs-other.md").read_text() == "a comparison, not this script's\n"
    assert run_script(str(run.parent)) == "r: tables as rendered\n"


def test_a_table_new_to_the_code_is_written_for_a_run_that_lacks_it(tmp_path: Path) -> None:
    run = tmp_path / "results" / "r"
    shutil.copytree(REPO / "results" / "h200-eq-cold", run, ignore=shutil.ignore_patterns("cells", "logs"))
    study = run / "tables" / "study.md"
    rendered = study.read_text()
    study.unlink()

    assert run_script("-n", str(run.parent)) == "r: study.md stale\n"
    assert not study.exists()
    assert run_script(str(run.parent)) == "r: study.md rewritten\n"
    assert study.read_text() == rendered


def copied_run(tmp_path: Path) -> Path:
    """results/h200-eq-cold with its records, under its own name (its summary's cell paths name it), in a tree of
    its own: some of its cells have a second repeat, some not."""
    run = tmp_path / "results" / "h200-eq-cold"
    shutil.copytree(REPO / "results" / "h200-eq-cold", run, ignore=shutil.ignore_patterns("logs", "benchmarks"))
    return run


def test_a_summary_column_new_to_the_code_is_added_from_the_records_and_the_tables_follow(tmp_path: Path) -> None:
    run = copied_run(tmp_path)
    summary = run / "summary.csv"
    built = summary.read_text()
    old = pd.read_csv(summary).drop(columns=["window_gc_share"])
    old.loc[0, "tokens_per_sec"] *= 2  # a number the code would not make of the records either
    old.to_csv(summary, index=False)
    stale = summary.read_text()

    out = run_script("-n", "--summaries", str(run.parent))
    assert out == "h200-eq-cold: summary.csv stale (new: window_gc_share; changed: tokens_per_sec)\n"
    assert summary.read_text() == stale

    out = run_script("--summaries", str(run.parent))
    assert out.splitlines()[0] == "h200-eq-cold: summary.csv rewritten (new: window_gc_share; changed: tokens_per_sec)"
    assert summary.read_text() == built
    assert run_script("--summaries", str(run.parent)) == (
        "h200-eq-cold: summary.csv as built\nh200-eq-cold: tables as rendered\n")


def test_a_summary_whose_records_fold_other_repeats_is_refused_and_kept(tmp_path: Path) -> None:
    run = copied_run(tmp_path)
    repeat = sorted((run / "cells").rglob("repeat-2.json"))[0]
    repeat.unlink()
    before = (run / "summary.csv").read_text()

    done = subprocess.run([sys.executable, str(SCRIPT), "--summaries", str(run.parent)], capture_output=True,
                          text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("rerender_tables.py: ") and "fold other repeats than it did" in done.stderr
    assert repeat.relative_to(tmp_path).parent.as_posix() in done.stderr
    assert (run / "summary.csv").read_text() == before
