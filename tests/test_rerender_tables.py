"""tools/rerender_tables.py: a committed run's stale tables rewritten from its summary.csv, and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
