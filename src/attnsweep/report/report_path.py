"""Where `snakemake --report PATH` may write: checked when the workflow is read, so a wrong path is one sentence.

Snakemake builds the whole report first and only then opens PATH, so a folder that does not exist ends in a
FileNotFoundError traceback; and a report of this run written into another run's folder would pass for that run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def requested_report(argv: Sequence[str]) -> str | None:
    """The path given to --report on Snakemake's command line (its default, report.html, when none follows)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--report="):
            return arg.split("=", 1)[1]
        if arg == "--report":
            following = argv[i + 1] if i + 1 < len(argv) else ""
            return following if following and not following.startswith("-") else "report.html"
    return None


def snakemake_command(argv0: str) -> str:
    """How the user started Snakemake (.venv/bin/snakemake), to repeat it; `snakemake` when run as a module."""
    return argv0 if Path(argv0).name == "snakemake" else "snakemake"


def report_path_problem(argv: Sequence[str], results: str, command: str = "snakemake") -> str | None:
    """What is wrong with the --report path for the run whose folder is `results` (results/{run}), if anything.
    `argv`: Snakemake's arguments (sys.argv[1:]); `command`: how to call Snakemake in the advice."""
    path = requested_report(argv)
    if path is None:
        return None
    folder, here = Path(path).parent, Path(results)
    if not folder.is_dir():
        why = "does not exist"
    elif folder.parent == here.parent and folder != here:
        why = f"holds another run than this config's ({results}/)"
    else:
        return None
    return (f"--report {path}: the folder {folder}/ {why}. This config's results are in {results}/; "
            f"its report: {command} --report {results}/report.html")
