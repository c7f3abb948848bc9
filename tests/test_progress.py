"""What a sweep prints (the `attnsweep` logger plugin the shipped profile selects): the cells to measure, one line
per finished cell with its status and tokens/s, cells done/total and the time left, where the results are; Ctrl-C is
one line, not tracebacks. Snakemake's own output stays in its log file. Two tiny sweeps, about 40 s on 2 cores.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from snakemake_logger_plugin_attnsweep import cell_outcome, duration
from test_pipeline import BIN, PROFILE, TINY, copy_repo, running_cell, snakemake, start, wait_for

# Two cells, a few steps each.
TWO = copy.deepcopy(TINY)
TWO["grid"].update(seq_len=[32], attn=["naive", "sdpa"])
TWO.update(steps=4, window=2)


def test_duration_and_cell_outcome(tmp_path: Path) -> None:
    assert [duration(s) for s in (9.4, 65, 3725)] == ["9 s", "1 min 05 s", "1 h 02 min"]
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"status": "ok", "tokens_per_sec": 2090.4}))
    assert cell_outcome(ok) == "ok, 2,090 tokens/s"
    unsupported = tmp_path / "u.json"
    unsupported.write_text(json.dumps({"status": "unsupported", "reason": "flex has no backward pass on the CPU"}))
    assert cell_outcome(unsupported) == "unsupported (flex has no backward pass on the CPU)"


@pytest.mark.slow
def test_a_sweep_prints_one_line_per_cell_and_where_the_results_are(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path, TWO)
    out = snakemake(repo).stderr
    assert "attnsweep: 2 cells to measure" in out
    lines = re.findall(r"^\[(\d)/2\] tiny 32 (naive|sdpa) eager: ok, [\d,]+ tokens/s \((\d+ s)(; about .* left)?\)$",
                       out, re.M)
    assert [(done, bool(eta)) for done, _, _, eta in lines] == [("1", True), ("2", False)], out
    assert "Results are in results/tiny/:" in out
    assert "report    snakemake --report results/tiny/report.html" in out
    # Snakemake's per-job blocks and its final list of inputs are not on the terminal, but in its log.
    assert "Reason:" not in out and "localrule all" not in out and "steps (100%) done" not in out
    logfile = re.search(r"^Snakemake's full log: (\S+)", out, re.M).group(1)
    assert "Reason:" in Path(logfile).read_text() and logfile.startswith(str(repo / ".snakemake" / "log"))
    # Snakemake's own output, on request.
    rerun = snakemake(repo, "-R", "headline", "--logger-attnsweep-snakemake-output").stderr
    assert "Finished jobid" in rerun and "Results are in" not in rerun


@pytest.mark.slow
def test_ctrl_c_is_one_line(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path, TWO)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(repo / "snakemake.out", "w") as log:
        # Its own process group, with SIGINT's default action even where the test runner ignores it.
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", *PROFILE], cwd=repo, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: running_cell(repo) is not None)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group, Snakemake and its cell
    proc.wait(timeout=120)
    out = (repo / "snakemake.out").read_text()
    assert "attnsweep: interrupted; stopping the cell in progress" in out
    assert "The same command resumes" in out
    assert "Traceback" not in out and "Error in rule" not in out and "WorkflowError" not in out, out


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_says_so_without_error_reports(tmp_path: Path) -> None:
    """`timeout` (a part's deadline, tools/gpu-host/sweep.sh) signals the whole process group: the cell in progress
    dies of SIGTERM. That is a stop, not a fault: one line, no Snakemake error report."""
    repo = copy_repo(tmp_path, TWO)
    proc = start(repo)
    wait_for(lambda: running_cell(repo) is not None)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    out = (repo / "snakemake.out").read_text()
    assert re.search(r"^\[1/2\] tiny 32 \w+ eager: stopped by SIGTERM \(no record; the same command measures it "
                     r"again\)$", out, re.M), out
    assert "Error in rule" not in out and "RuleException" not in out and "(1 stopped)" in out, out


def test_a_cells_label_names_what_differs_from_the_first_cell_but_not_each_models_own_head_count() -> None:
    from types import SimpleNamespace

    from snakemake_logger_plugin_attnsweep import LogHandler

    state = SimpleNamespace(first_cell=None)
    axes = dict(seq_len="1024", attn="sdpa", mode="compiled", precision="fp16", optimizer="adamw", harness="native")

    def label(**wildcards: str) -> str:
        return LogHandler.cell_label(state, {"wildcards": {**axes, **wildcards}})

    assert label(model="small", kv_heads="12") == "small 1024 sdpa compiled"
    # Multi-head attention is each model's own head count: medium's 16 is no difference from small's 12.
    assert label(model="medium", kv_heads="16") == "medium 1024 sdpa compiled"
    assert label(model="medium", kv_heads="4") == "medium 1024 sdpa compiled kv_heads=4"
    assert label(model="small", kv_heads="12", precision="bf16", repeat="2") == \
        "small 1024 sdpa compiled precision=bf16 (repeat 2)"
