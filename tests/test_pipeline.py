"""The Snakemake workflow, checked with Snakemake itself in temporary copies of the repository.

What reruns when is decided by Snakemake's dry run (`-n`), so these tests ask it: after editing cell code, report
code or the config, after a killed sweep, in a fresh git clone. Cells really run (tiny model on the CPU, a few
steps), so the tests that need results are marked slow; the whole file takes a few minutes on 2 cores.
"""

from __future__ import annotations

import collections
import copy
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import yaml

from attnsweep.cellio import load_cell
from attnsweep.codestamp import source_hash
from attnsweep.searchlog import FROM_LOG
from attnsweep.status import check_summary, read_cells
from attnsweep.vocabulary import AXES
from sweep_freeze import freeze_mid_cell, reap
from workflow_copy import copy_workflow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HAS_CUDA = torch.cuda.is_available()
# Snakemake finds profiles/default by itself; naming it keeps the tests independent of the working directory.
PROFILE = ["--workflow-profile", "profiles/default"]

# A grid that runs in seconds: 4 eager cells of the tiny model on the CPU.
TINY: dict = {
    "run": "tiny",
    "device": "cpu",
    "grid": {
        "model": ["tiny"],
        "seq_len": [32, 64],
        "attn": ["naive", "sdpa"],
        "mode": ["eager"],
        "precision": ["fp32"],
    },
    "batch": {"policy": "fixed", "size": 4},
    "steps": 6,
    "window": 3,
}
TINY_CELLS = 4


def copy_repo(dest: Path, config: dict | None = TINY) -> Path:
    """The workflow and a copy of the package source it hashes (edits to it change the stamps), with `config`."""
    return copy_workflow(dest, config, with_source=True)


def write_config(repo: Path, config: dict) -> None:
    (repo / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def edit_config(repo: Path, **changes) -> None:
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = config
        for p in parents:
            target = target.setdefault(p, {})
        target[key] = value
    write_config(repo, config)


def snakemake(repo: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *PROFILE, *args], cwd=repo, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned(repo: Path, *args: str) -> collections.Counter:
    """Jobs per rule that a dry run would execute (Snakemake's 'Job stats'); empty if nothing is to be done."""
    out = snakemake(repo, "-n", *args).stdout
    counts: collections.Counter = collections.Counter()
    if "Job stats:" not in out:
        assert "Nothing to be done" in out, out
        return counts
    lines = out.split("Job stats:", 1)[1].splitlines()[3:]
    for line in lines:
        name, n = line.split()
        if name == "total":
            break
        counts[name] = int(n)
    return counts


def parse_cells(dry_run: str) -> list[dict]:
    """The cells in a dry run's output, from the rule's message ('cell model=tiny seq_len=32 ...')."""
    return [dict(kv.split("=", 1) for kv in m.split()) for m in re.findall(r"^Job \d+: cell (.*)$", dry_run, re.M)]


def planned_cells(repo: Path) -> list[dict]:
    return parse_cells(snakemake(repo, "-n").stdout)


def cell_paths(repo: Path, run: str = "tiny") -> list[Path]:
    return sorted((repo / "results" / run / "cells").rglob("cell.json"))


AGGREGATION = {"summary": 1, "tables": 1, "figures": 1, "headline": 1, "all": 1}
# A run from nothing: the code stamp, every cell (its rerun trigger, warm-up and timed job), the aggregation.
EVERYTHING = {"code_stamp": 1, "rerun": TINY_CELLS, "warmup": TINY_CELLS, "cell": TINY_CELLS, **AGGREGATION}


# ---- the workflow itself ----------------------------------------------------------------------------------------


def test_lint_is_clean() -> None:
    proc = snakemake(REPO, "--lint")
    text = proc.stdout + proc.stderr
    assert "Congratulations" in text and "Lints for" not in text, text


def test_every_aggregation_rule_runs_where_snakemake_runs() -> None:
    """Aggregation reads only files already there, in seconds: through a cluster executor (profiles/slurm) it must
    not become a job of its own, so every rule of aggregate.smk is in the Snakefile's localrules."""
    block = (REPO / "Snakefile").read_text().split("localrules:", 1)[1].split("\n\n", 1)[0]
    local = set(re.findall(r"^\s+(\w+),", block, flags=re.M))
    rules = set(re.findall(r"^rule (\w+):", (REPO / "workflow/rules/aggregate.smk").read_text(), flags=re.M))
    assert rules and rules <= local, f"not in localrules: {sorted(rules - local)}"

def test_snakefmt_check() -> None:
    proc = subprocess.run([str(BIN / "snakefmt"), "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grid_layout_and_excludes(tmp_path: Path) -> None:
    config = copy.deepcopy(TINY)
    config["grid"].update(
        model=["tiny", "small"], seq_len=[32, 64, 128], mode=["eager", "compiled"], kv_heads=["heads", 2],
        max_seq_len={"small": 64}, exclude=[{"model": "small", "mode": "compiled"}, {"kv_heads": 2, "attn": "sdpa"}],
    )
    repo = copy_repo(tmp_path, config)
    out = snakemake(repo, "-n").stdout
    cells = parse_cells(out)
    expected = [
        (model, seq, attn, mode, kv)
        for model, seq, attn, mode, kv in itertools.product(
            ["tiny", "small"], [32, 64, 128], ["naive", "sdpa"], ["eager", "compiled"], ["heads", 2]
        )
        if not (model == "small" and (seq > 64 or mode == "compiled")) and not (kv == 2 and attn == "sdpa")
    ]
    assert len(cells) == len(expected)
    # kv_heads 'heads' is written out per model: 4 for tiny, 12 for small
    assert {c["kv_heads"] for c in cells if c["model"] == "small"} == {"12", "2"}
    # one folder per axis
    assert ("results/tiny/cells/model~tiny/seq_len~32/attn~naive/mode~eager/kv_heads~4/precision~fp32/"
            "optimizer~adamw/harness~native/cell.json") in out


def test_the_cuda_graph_mode_gets_its_cells_table_and_figure(tmp_path: Path) -> None:
    config = copy.deepcopy(TINY)
    config["grid"].update(attn=["sdpa", "fa2"], mode=["compiled_cudagraphs", "eager"], seq_len=[32])
    repo = copy_repo(tmp_path, config)
    out = snakemake(repo, "-n").stdout
    assert sorted(c["mode"] for c in parse_cells(out)) == ["compiled_cudagraphs"] * 2 + ["eager"] * 2
    assert "/mode~compiled_cudagraphs/" in out
    # The study's two tables as always, and the mode's own; its fa2-vs-sdpa figure.
    for path in ("tables/compiled.md", "tables/compiled_cudagraphs.md", "tables/eager.md", "tables/study.md",
                 "tables/all.md",
                 "figures/fa2_vs_sdpa_compiled_cudagraphs.png", "figures/fa2_vs_sdpa_eager.png"):
        assert f"results/tiny/{path}" in out, path
    assert "figures/fa2_vs_sdpa_compiled.png" not in out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stpes": 5}, "'stpes' was unexpected"),
        ({"steps": "many"}, "steps: 'many' is not of type 'integer'"),
        ({"grid__modle": ["tiny"]}, "'modle' was unexpected"),
        ({"grid__mode": ["jit"]}, "'jit' is not one of ['eager', 'compiled', 'compiled_cudagraphs']"),
        ({"window": 7}, "window (7) must not exceed steps (6)"),
        ({"grid__seq_len": [32, 32]}, "grid.seq_len: duplicate values ['32']"),
        ({"grid__model": ["tiny", "huge"]}, "grid.model.1: 'huge' is not one of ['tiny', 'small', 'medium', 'large']"),
        ({"grid__attn": ["sdpa", "flash"]}, "grid.attn.1: 'flash' is not one of ['naive', 'sdpa',"),
        ({"grid__exclude": [{"model": "huge"}]}, "unknown model ['huge']; valid: tiny, small, medium, large"),
        ({"grid__exclude": [{"model": "tiny"}]}, "grid: no cell left"),
        ({"grid__kv_heads": [3]}, "kv_heads (3) must be >= 1 and divide the 4 heads of model 'tiny'"),
        ({"batch": {"policy": "fixed"}}, "'size' is a required property"),
        ({"allow_mixed_env": "yes"}, "allow_mixed_env: 'yes' is not of type 'boolean'"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path: Path, changes: dict, message: str) -> None:
    repo = copy_repo(tmp_path)
    edit_config(repo, **changes)
    proc = snakemake(repo, "-n", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert not (repo / "results").exists()


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_gpu_fails_at_once(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path)
    edit_config(repo, device="cuda")
    proc = snakemake(repo, "-n", check=False)
    assert proc.returncode != 0
    assert "device: cuda, but no GPU is visible" in proc.stderr + proc.stdout


@pytest.mark.skipif(HAS_CUDA, reason="device auto picks the GPU here")
def test_auto_without_gpu_is_the_announced_cpu_demo(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path, config=None)  # the shipped config/config.yaml
    proc = snakemake(repo, "-n")
    assert "CPU DEMO" in proc.stderr
    cells = parse_cells(proc.stdout)
    assert cells and all(c["model"] == "tiny" for c in cells)
    assert "results/cpu-demo/summary.csv" in proc.stdout


def test_settings_given_on_the_command_line_apply_to_the_cpu_demo(tmp_path: Path) -> None:
    """`--config run=NAME` names the demo's results folder too, and list items given as text are numbers."""
    repo = copy_repo(tmp_path, config=None)
    proc = snakemake(repo, "-n", "--config", "run=mine")
    assert "-> results/mine/" in proc.stderr and "results/mine/summary.csv" in proc.stdout
    assert "results/cpu-demo/" not in proc.stdout
    proc = snakemake(repo, "-n", "--config", "cpu_demo={grid: {seq_len: [64, 128, 256, 512]}}")
    assert sorted({int(c["seq_len"]) for c in parse_cells(proc.stdout)}) == [64, 128, 256, 512]


def test_a_typo_in_the_gpu_grid_is_refused_on_a_cpu_machine(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path, config=None)
    proc = snakemake(repo, "-n", "--config", "grid={attn: [nosuch], model: [small], seq_len: [256], mode: [eager]}",
                     check=False)
    assert proc.returncode != 0 and "grid.attn.0: 'nosuch' is not one of" in proc.stderr + proc.stdout


# ---- what reruns when (cells really run) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository with the tiny grid run to the end (and Snakemake's metadata)."""
    repo = copy_repo(tmp_path_factory.mktemp("swept"))
    snakemake(repo, "--cores", "2")  # two cores: each cell takes both, one cell at a time
    return repo


@pytest.fixture
def repo(swept: Path, tmp_path: Path) -> Path:
    """A fresh copy of the swept repository (copytree keeps mtimes), for one test to edit."""
    dest = tmp_path / "repo"
    shutil.copytree(swept, dest, symlinks=True)
    return dest


@pytest.mark.slow
def test_sweep_outputs(swept: Path) -> None:
    paths = cell_paths(swept)
    assert len(paths) == TINY_CELLS and all(load_cell(p)["status"] == "ok" for p in paths)
    summary = pd.read_csv(swept / "results/tiny/summary.csv")
    assert len(summary) == TINY_CELLS
    assert set(summary["cell_path"]) == {p.relative_to(swept).as_posix() for p in paths}
    assert (swept / "results/tiny/tables/eager.md").read_text().startswith("# Training throughput, eager")
    stamps = sorted(p.name for p in (swept / "results/tiny/stamps").iterdir())
    assert [s.split("-")[0] for s in stamps] == ["cells", "report"]
    for p in paths:
        log = swept / "results/tiny/logs/cells" / p.parent.relative_to(swept / "results/tiny/cells") / "cell.log"
        assert "ok" in log.read_text()
    # A cell is given every core of the sweep, and its training uses them (OMP_NUM_THREADS from the rule's threads).
    assert {load_cell(p)["env"]["cpu_threads"] for p in paths} == {2}
    # ... so no two cells were timed side by side.
    spans = sorted((load_cell(p)["started_at"], load_cell(p)["finished_at"]) for p in paths)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), spans


@pytest.mark.slow
def test_simulated_gpus_time_cells_side_by_side_with_their_windows_in_turn(tmp_path: Path) -> None:
    """Two simulated GPUs on the CPU (config gpus with device cpu): two timed cells at once, one per GPU, and their
    measured windows never overlap (each record says when its window was, on the host's clock)."""
    repo = copy_repo(tmp_path, {**TINY, "gpus": ["sim0", "sim1"], "steps": 40, "window": 20})
    snakemake(repo, "--cores", "4", "--resources", "gpu=2", "--set-threads", "cell=1", "warmup=1")
    recs = [load_cell(p) for p in cell_paths(repo)]
    assert len(recs) == TINY_CELLS and {r["status"] for r in recs} == {"ok"}
    assert {r["env"]["windows"] for r in recs} == {"in turn"}
    spans = sorted((r["started_at"], r["finished_at"]) for r in recs)
    assert any(start < end for (_, end), (start, _) in zip(spans, spans[1:])), f"no two timed side by side: {spans}"
    windows = sorted((r["window_conditions"]["start_unix_s"], r["window_conditions"]["end_unix_s"]) for r in recs)
    assert all(end <= start for (_, end), (start, _) in zip(windows, windows[1:])), windows
    assert sorted(p.name for p in (repo / "results/tiny/.gpulocks").glob("gpu-sim*.timed")) == [
        "gpu-sim0.timed", "gpu-sim1.timed"]


@pytest.mark.slow
def test_nothing_to_do_after_a_sweep(repo: Path) -> None:
    assert planned(repo) == {}


@pytest.mark.slow
def test_where_a_sweep_runs_its_jobs_is_not_a_change(repo: Path) -> None:
    """The GPUs a sweep uses, how many warm-ups share one and the preloaded interpreter are how jobs are scheduled,
    not what they measure: other values (a host of other GPUs, a warm host's kept Snakemake metadata) rerun nothing,
    as in a fresh clone. Snakemake would rerun every cell for a change of the jobs' params (its default trigger), and
    at a deadline it removes a record before its job is held back."""
    assert planned(repo, "--config", "gpus=[sim0,sim1]", "preload=false", "window_turns=false") == {}


@pytest.mark.slow
def test_editing_cell_code_reruns_every_cell(repo: Path) -> None:
    with open(repo / "src/attnsweep/model.py", "a") as f:
        f.write("# an edit\n")
    assert planned(repo) == EVERYTHING


@pytest.mark.slow
def test_reverting_cell_code_reruns_every_cell(repo: Path) -> None:
    """Old stamps are removed when a new one is written, so going back to earlier code is a change too."""
    model = repo / "src/attnsweep/model.py"
    original = model.read_text()
    model.write_text(original + "# an edit\n")
    old = {p.name for p in (repo / "results/tiny/stamps").glob("cells-*.json")}
    snakemake(repo, "--until", "code_stamp")
    # One cells stamp and its log are left, the log naming the stamp it replaced.
    (stamp,) = (repo / "results/tiny/stamps").glob("cells-*.json")
    (log,) = (repo / "results/tiny/logs/stamps").glob("cells-*.log")
    assert stamp.name not in old and log.stem == stamp.stem
    assert {Path(line).name for line in log.read_text().split()} == old
    model.write_text(original)
    shutil.rmtree(repo / ".snakemake")  # as in a fresh clone: only the files decide
    assert planned(repo) == EVERYTHING


@pytest.mark.slow
def test_editing_report_code_reruns_only_aggregation(repo: Path) -> None:
    with open(repo / "src/attnsweep/report/tables.py", "a") as f:
        f.write("# an edit\n")
    assert planned(repo) == {"code_stamp": 1, **AGGREGATION}


@pytest.mark.slow
def test_adding_a_seq_len_adds_only_its_cells(repo: Path) -> None:
    edit_config(repo, grid__seq_len=[32, 64, 96])
    cells = planned_cells(repo)
    assert sorted((c["seq_len"], c["attn"]) for c in cells) == [("96", "naive"), ("96", "sdpa")]
    assert planned(repo) == {"rerun": 2, "warmup": 2, "cell": 2, **AGGREGATION}


@pytest.mark.slow
def test_raising_repeats_measures_only_the_new_repeats(repo: Path) -> None:
    edit_config(repo, repeats=2)
    assert planned(repo) == {"rerun": TINY_CELLS, "warmup": TINY_CELLS, "cell_repeat": TINY_CELLS, **AGGREGATION}
    out = snakemake(repo, "--cores", "2").stderr
    # The progress lines count repeats as measurements too.
    assert f"attnsweep: {TINY_CELLS} cells and repeats to measure" in out
    assert f"[{TINY_CELLS}/{TINY_CELLS}] " in out and "(repeat 2): ok" in out, out
    repeats = sorted((repo / "results/tiny/cells").rglob("repeat-2.json"))
    assert len(repeats) == TINY_CELLS and all(load_cell(p)["status"] == "ok" for p in repeats)
    # A later repeat measures at repeat 1's batch size, taken from its record, not searched again.
    for p in repeats:
        first = load_cell(p.with_name("cell.json"))
        assert load_cell(p)["batch_size"] == first["batch_size"]
        assert load_cell(p)["batch_note"].startswith(f"repeat 1's batch size, {first['batch_size']}")
    summary = pd.read_csv(repo / "results/tiny/summary.csv")
    assert (summary["repeats"] == 2).all() and len(summary) == TINY_CELLS
    for _, r in summary.iterrows():
        first = load_cell(repo / r["cell_path"])["tokens_per_sec"]
        second = load_cell((repo / r["cell_path"]).with_name("repeat-2.json"))["tokens_per_sec"]
        assert r["tokens_per_sec"] == pytest.approx((first + second) / 2)  # the median of two
    assert "median of a cell's repeats" in (repo / "results/tiny/tables/eager.md").read_text()
    assert planned(repo) == {}


@pytest.mark.slow
def test_a_warm_up_of_a_cell_first_names_that_no_part_could_hold_starts_all_the_same(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As below, with `first` naming one cell: its later repeat's warm-up, expected longer than the whole part (the
    deadline two seconds away), comes up at the part's start and starts, its log says why; its timed job, which no
    grace covers, is held back, as are the other cells' warm-ups. The warm-up's output is left for the next part."""
    edit_config(repo, repeats=2, first=[{"seq_len": 64, "attn": "sdpa"}])
    monkeypatch.setenv("ATTNSWEEP_DEADLINE", str(int(time.time()) + 2))
    done = snakemake(repo, "--cores", "2", check=False)
    assert done.returncode != 0 and not list((repo / "results/tiny/cells").rglob("repeat-2.json"))
    logs = {log.parent.parent.relative_to(repo / "results/tiny/logs/warmup").as_posix(): log.read_text()
            for log in (repo / "results/tiny/logs/warmup").rglob("r2/warmup.log")}
    assert len(logs) == TINY_CELLS, logs
    named = next(cell for cell in logs if "/seq_len~64/attn~sdpa/" in f"/{cell}/")
    assert "started, as `first` names it" in logs[named].splitlines()[0], logs[named]
    assert all(logs[cell].startswith("attnsweep: not started: ") for cell in logs if cell != named), logs
    made = [w.parent.parent.relative_to(repo / "results/tiny/warmup").as_posix()
            for w in (repo / "results/tiny/warmup").rglob("r2/warmup.json")]
    assert made == [named], made


@pytest.mark.slow
def test_jobs_that_would_end_after_the_deadline_do_not_start(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ATTNSWEEP_DEADLINE two seconds away, no later repeat's warm-up starts: each is expected to take its
    repeat 1's warm-up attempt and timed job, and more (sweep.warmup_then_timed_s). The sweep ends at once, says why,
    makes no record and leaves no failure behind: the same command without the deadline measures them."""
    edit_config(repo, repeats=2)
    monkeypatch.setenv("ATTNSWEEP_DEADLINE", str(int(time.time()) + 2))
    began = time.monotonic()
    done = snakemake(repo, "--cores", "2", check=False)
    assert done.returncode != 0 and time.monotonic() - began < 120
    assert not list((repo / "results/tiny/cells").rglob("repeat-2.json"))
    out = done.stderr
    assert f"attnsweep: {TINY_CELLS} jobs not started, as each would have ended after ATTNSWEEP_DEADLINE" in out, out
    assert "(the first: warmup tiny " in out and "the same command runs them" in out, out
    assert "Error in rule" not in out and "CalledProcessError" not in out, out
    assert "Exiting because a job execution failed" not in out, out
    logs = sorted((repo / "results/tiny/logs/warmup").rglob("r2/warmup.log"))
    assert len(logs) == TINY_CELLS
    for log in logs:  # each estimated again at its start: no record since, and no warm-up done (an empty queue)
        expected, left, began = map(int, re.fullmatch(
            r"attnsweep: not started: expected to take about (\d+) s, (-?\d+) s left before ATTNSWEEP_DEADLINE "
            r"\(estimated again from the records at its start; (\d+) s when the sweep began\)\n",
            log.read_text()).groups())
        assert expected == began > left
    monkeypatch.setenv("ATTNSWEEP_DEADLINE", "next tuesday")
    bad = snakemake(repo, "-n", check=False)
    assert bad.returncode != 0
    assert "ATTNSWEEP_DEADLINE='next tuesday' is not a time in seconds" in bad.stdout + bad.stderr
    monkeypatch.delenv("ATTNSWEEP_DEADLINE")
    # (The rerun markers were made, and stay until a run succeeds, as after a stopped part.)
    assert planned(repo) == {"warmup": TINY_CELLS, "cell_repeat": TINY_CELLS, **AGGREGATION}
    # Repeat 1's timed jobs made 10,000 s: ten minutes away, a warm-up does not start either, as its timed job
    # could not follow (10,505 s with the stretch, and the warm-up's own seconds).
    for p in cell_paths(repo):
        p.write_text(json.dumps({**json.loads(p.read_text()), "duration_s": 10_000}))
    monkeypatch.setenv("ATTNSWEEP_DEADLINE", str(int(time.time()) + 600))
    out = snakemake(repo, "--cores", "2", check=False).stderr
    assert f"attnsweep: {TINY_CELLS} jobs not started" in out, out
    held = re.search(r"\(the first: warmup tiny .*\(repeat 2\): expected to take about (\d+) s, \d+ s left", out)
    assert held and int(held.group(1)) > 10505, out
    assert planned(repo) == {"warmup": TINY_CELLS, "cell_repeat": TINY_CELLS, **AGGREGATION}
    # Warm-ups made without the deadline (as targets, so kept): each timed job expects its repeat 1's time and more
    # (sweep.timed_job_s): none starts, and their warm-ups stay for the next run.
    monkeypatch.delenv("ATTNSWEEP_DEADLINE")
    warmups = [str((p.parent / "r2/warmup.json").relative_to(repo)).replace("/cells/", "/warmup/", 1)
               for p in cell_paths(repo)]
    snakemake(repo, "--cores", "2", *warmups)
    monkeypatch.setenv("ATTNSWEEP_DEADLINE", str(int(time.time()) + 600))
    out = snakemake(repo, "--cores", "2", check=False).stderr
    assert f"attnsweep: {TINY_CELLS} jobs not started" in out, out
    first = r"\(the first: cell_repeat tiny .*\(repeat 2\): expected to take about 10505 s, \d+ s left"
    assert re.search(first, out), out
    assert planned(repo) == {"cell_repeat": TINY_CELLS, **AGGREGATION}
    monkeypatch.delenv("ATTNSWEEP_DEADLINE")
    snakemake(repo, "--cores", "2")
    assert len(list((repo / "results/tiny/cells").rglob("repeat-2.json"))) == TINY_CELLS
    # A mode nothing of which is measured yet expects what its model's records in the other modes took
    # (sweep.WARMUP_LIKE), 10,000 s and more: its warm-ups do not start either.
    edit_config(repo, grid__mode=["eager", "compiled"])
    monkeypatch.setenv("ATTNSWEEP_DEADLINE", str(int(time.time()) + 600))
    out = snakemake(repo, "--cores", "2", check=False).stderr
    assert f"attnsweep: {TINY_CELLS} jobs not started" in out, out
    held = re.search(r"\(the first: warmup tiny \d+ \w+ compiled \(repeat 1\): expected to take about (\d+) s", out)
    assert held and int(held.group(1)) > 10505, out
    assert not list((repo / "results/tiny/cells").rglob("mode~compiled/**/*.json"))
    # Each was estimated again at its start (workflow/scripts/deadline/expected-warmup.py), from the same records.
    logs = sorted((repo / "results/tiny/logs/warmup").rglob("mode~compiled/**/r1/warmup.log"))
    assert len(logs) == TINY_CELLS
    for log in logs:
        again = re.search(r"expected to take about (\d+) s, .* \(estimated again from the records at its start; "
                          r"(\d+) s when the sweep began\)$", log.read_text())
        assert again and again.group(1) == again.group(2), log.read_text()


@pytest.mark.slow
def test_a_sweep_measures_the_first_cells_first_and_each_cells_repeats_together(tmp_path: Path) -> None:
    """Job priorities (sweep.RunPlan.priority) as Snakemake runs them, one job at a time: the cell `first` names
    leads, and every cell's second repeat comes right after its first, so a part stopped anywhere leaves whole
    cells but the one in flight."""
    repo = copy_repo(tmp_path, {**TINY, "repeats": 2, "first": [{"seq_len": 64, "attn": "sdpa"}]})
    snakemake(repo, "--cores", "2")
    files = (repo / "results/tiny/cells").rglob("*.json")
    recs = sorted(((load_cell(f), 1 if f.name == "cell.json" else 2) for f in files),
                  key=lambda rec: (rec[0]["started_at"], rec[0]["finished_at"]))
    order = [(r["cell"]["seq_len"], r["cell"]["attn"], repeat) for r, repeat in recs]
    assert len(order) == 2 * TINY_CELLS and order[:2] == [(64, "sdpa", 1), (64, "sdpa", 2)], order
    assert all(a[:2] == b[:2] for a, b in zip(order[::2], order[1::2])), order


def job_priorities(out: str) -> list[tuple[str, dict, int]]:
    """(rule, wildcards, priority) of each job a dry run lists (Snakemake prints no priority line for 0)."""
    jobs = []
    for block in re.split(r"^\[.*\]$", out, flags=re.M)[1:]:
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        priority = re.search(r"^\s+priority: (-?\d+)$", block, re.M)
        if rule and wildcards:
            jobs.append((rule.group(1), dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")),
                         int(priority.group(1)) if priority else 0))
    return jobs


def test_a_records_marker_runs_before_every_warm_up(tmp_path: Path) -> None:
    """A timed job needs its record's marker (rule rerun): the marker takes the timed job's priority, above every
    warm-up's, so that warm-ups filling the cores never hold a warmed-up cell back (at 0 a marker waited for the
    last warm-up to start)."""
    repo = copy_repo(tmp_path, {**TINY, "repeats": 2, "first": [{"seq_len": 64, "attn": "sdpa"}]})
    jobs = job_priorities(snakemake(repo, "-n").stdout)
    markers = {(w["seq_len"], w["attn"], w["record"]): p for rule, w, p in jobs if rule == "rerun"}
    warmups = [p for rule, _, p in jobs if rule == "warmup"]
    assert len(markers) == len(warmups) == 2 * TINY_CELLS, jobs
    assert min(markers.values()) > max(warmups), (markers, warmups)
    # In the order of their records' jobs: the cell `first` names, then a later repeat before a new cell.
    assert markers[("64", "sdpa", "repeat-2")] > markers[("64", "sdpa", "cell")] > markers[("32", "sdpa", "repeat-2")]
    assert markers[("32", "sdpa", "repeat-2")] > markers[("32", "sdpa", "cell")]


@pytest.mark.slow
def test_under_a_deadline_a_warm_up_expected_over_half_the_part_goes_first(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a deadline, the warm-up of the later repeat whose repeat 1 took 200 s is expected to take over half of a
    part of 300 s, and goes before the others (sweep.is_long_warmup); not in a part of 600 s, nor without a
    deadline, where every later repeat's warm-up has the same priority."""
    edit_config(repo, repeats=2)
    slow = next(p for p in cell_paths(repo) if "/seq_len~32/attn~naive/" in p.as_posix())
    slow.write_text(json.dumps({**json.loads(slow.read_text()), "duration_s": 200}))

    def warmups() -> dict[tuple[str, str], int]:
        jobs = job_priorities(snakemake(repo, "-n").stdout)
        return {(w["seq_len"], w["attn"]): p for rule, w, p in jobs if rule == "warmup"}

    same = warmups()
    assert len(same) == TINY_CELLS and len(set(same.values())) == 1, same
    monkeypatch.setenv("ATTNSWEEP_DEADLINE", str(int(time.time()) + 600))
    assert warmups() == same
    monkeypatch.setenv("ATTNSWEEP_DEADLINE", str(int(time.time()) + 300))
    short = warmups()
    assert short.pop(("32", "naive")) > max(short.values()) == same[("32", "naive")], short


@pytest.mark.slow
def test_cold_repeats_measure_at_repeat_1s_batch_size(tmp_path: Path) -> None:
    """Without the warm-up stage a later repeat's job reads repeat 1's record (`--batch-from`), as its warm-up does."""
    config = copy.deepcopy(TINY)
    config["grid"].update(seq_len=[32], attn=["naive"], mode=["eager"])
    config.update(steps=4, window=2, repeats=2, warmup={"enabled": False})
    repo = copy_repo(tmp_path, config)
    snakemake(repo, "--cores", "2")
    first = load_cell(next((repo / "results/tiny/cells").rglob("cell.json")))
    second = load_cell(next((repo / "results/tiny/cells").rglob("repeat-2.json")))
    assert second["status"] == "ok" and second["batch_size"] == first["batch_size"]
    assert second["batch_note"].startswith(f"repeat 1's batch size, {first['batch_size']}")
    assert not (repo / "results/tiny/warmup").exists()  # cold: no warm-up job ran


@pytest.mark.slow
def test_a_prior_run_gives_each_searched_cell_its_record_there(tmp_path: Path) -> None:
    """batch.prior_run: a searching repeat-1 job is given the cell's record in that run (`--batch-prior`), a cell
    the prior run lacks searches as before, and later repeats keep repeat 1's batch size (`--batch-from`)."""
    config = copy.deepcopy(TINY)
    config["grid"].update(seq_len=[32], attn=["naive"], mode=["eager"])
    config.update(steps=4, window=2)
    repo = copy_repo(tmp_path, config)
    snakemake(repo, "--cores", "2")  # run tiny, fixed batch: the prior
    edit_config(repo, run="searched", repeats=2, batch={"policy": "search", "start": 8, "prior_run": "tiny"},
                grid__seq_len=[32, 64])
    out = snakemake(repo, "-n", "-p").stdout
    prior = "--batch-prior 'results/tiny/cells/model~tiny/seq_len~32/"
    warmups = [line for line in out.splitlines() if "python -m attnsweep warmup" in line]
    assert len(warmups) == 4, out  # two cells, two repeats
    assert sum(prior in w for w in warmups) == 1 and sum("--batch-prior" in w for w in warmups) == 1
    assert sum("--batch-from 'results/searched/cells/" in w for w in warmups) == 2
    assert all("--search-log 'results/searched/searches/model~tiny/" in w for w in warmups)
    snakemake(repo, "--cores", "2")
    assert [load_cell(c)["status"] for c in cell_paths(repo, "searched")] == ["ok", "ok"]
    # Each search left its attempts in its log; a cell measured again (here: its records gone) takes them from
    # there and runs only its answer again, for the compile cache.
    record = next(c for c in cell_paths(repo, "searched") if "seq_len~64" in str(c))
    searched = [a["batch_size"] for a in load_cell(record)["batch_attempts"] if a["stage"] == "warmup"]
    log = repo / "results/searched/searches" / record.parent.relative_to(repo / "results/searched/cells") / "r1.jsonl"
    assert [json.loads(line)["batch_size"] for line in log.read_text().splitlines()] == searched
    record.unlink()
    record.with_name("repeat-2.json").unlink()
    snakemake(repo, "--cores", "2")
    again = load_cell(record)
    assert again["status"] == "ok" and again["batch_size"] == load_cell(record.with_name("repeat-2.json"))["batch_size"]
    warm = [a for a in again["batch_attempts"] if a["stage"] == "warmup"]
    assert [a["batch_size"] for a in warm] == searched + [again["batch_size"]]
    assert all(a["detail"] == FROM_LOG for a in warm[:-1]) and warm[-1]["detail"] != FROM_LOG


@pytest.mark.slow
def test_a_searching_job_is_given_where_its_peers_records_are(tmp_path: Path) -> None:
    """batch policy search: a repeat-1 job is given the paths of the cell's records with the grid's other attention
    of its memory kind (`--batch-peers`, read by the job when it starts), a later repeat only repeat 1's record."""
    config = copy.deepcopy(TINY)
    config["grid"].update(seq_len=[32], attn=["naive", "sdpa", "sdpa_math"], mode=["eager"])
    repo = copy_repo(tmp_path, config)
    edit_config(repo, repeats=2, batch={"policy": "search", "start": 8})
    out = snakemake(repo, "-n", "-p").stdout
    warmups = {line for line in out.splitlines() if "python -m attnsweep warmup" in line}
    assert len(warmups) == 6, out  # three cells, two repeats

    def peers(attn: str) -> list[str]:
        line, = [w for w in warmups if f"--attn {attn} " in w and "--batch-from" not in w]
        named = line.split("--batch-peers", 1)[1].split(" --", 1)[0] if "--batch-peers" in line else ""
        return re.findall(r"attn~(\w+)/", named)

    # naive and SDPA's math backend keep the scores (memory with the square of the context); sdpa on a GPU does not.
    assert peers("naive") == ["sdpa_math"] and peers("sdpa_math") == ["naive"] and peers("sdpa") == []
    assert sum("--batch-peers" in w for w in warmups) == 2
    snakemake(repo, "--cores", "2")  # the jobs take the option as the workflow writes it (on the CPU: no budget)
    assert [load_cell(c)["status"] for c in cell_paths(repo)] == ["ok"] * 3


@pytest.mark.slow
def test_changing_steps_reruns_every_cell(repo: Path) -> None:
    edit_config(repo, steps=7)
    assert planned(repo) == EVERYTHING


@pytest.mark.slow
def test_a_run_compared_with_another_is_rendered_again_when_the_others_summary_changes(repo: Path) -> None:
    """compare_with: tables/vs-RUN.md beside the run's own tables; the other run's summary is in the report stamp,
    so its re-aggregation renders the comparison again (and this run's tables with it), and nothing else."""
    shutil.copytree(repo / "results/tiny", repo / "results/other")
    args = ("--config", "compare_with=[other]")
    assert planned(repo, *args) == {"code_stamp": 1, **AGGREGATION, "compare": 1}
    snakemake(repo, "--cores", "1", *args)
    text = (repo / "results/tiny/tables/vs-other.md").read_text()
    assert f"{TINY_CELLS} of the {TINY_CELLS} cells of both grids are measured in both" in text, text
    assert "median 1.00×" in text and "Differ: none." in text
    assert (repo / "results/tiny/figures/vs-other.png").stat().st_size > 0
    assert planned(repo, *args) == {}
    summary = repo / "results/other/summary.csv"
    lines = summary.read_text().splitlines(keepends=True)
    summary.write_text("".join(lines[:-1]))  # the other run without one of its cells
    assert planned(repo, *args) == {"code_stamp": 1, **AGGREGATION, "compare": 1}
    snakemake(repo, "--cores", "1", *args)
    text = (repo / "results/tiny/tables/vs-other.md").read_text()
    assert f"{TINY_CELLS - 1} of the {TINY_CELLS - 1} cells of both grids" in text
    assert "Cells of this run not in other's grid (not shown): 1." in text
    bad = snakemake(repo, "-n", "--config", "compare_with=[nowhere]", check=False)
    assert bad.returncode != 0
    assert "compare_with.0: results/nowhere/summary.csv does not exist" in bad.stdout + bad.stderr

@pytest.mark.slow
def test_aggregate_only_rerenders_without_device_or_cells(repo: Path) -> None:
    """A GPU run's committed cells re-rendered on a machine without a GPU: no device check, no cell job."""
    args = ("--config", "aggregate_only=True", "device=cuda")  # device cuda would fail at once otherwise
    # The records tabled are part of an aggregate_only run's report stamp: a first render makes its own.
    assert planned(repo, *args)["code_stamp"] == 1
    snakemake(repo, "--cores", "1", *args)
    for table in (repo / "results/tiny/tables").glob("*.md"):
        table.unlink()
    assert planned(repo, *args) == {"tables": 1, "all": 1}
    snakemake(repo, "--cores", "1", *args)
    # A record that changes is seen without Snakemake's metadata (a fresh clone): the records' digest names the
    # report stamp, which file times cannot fool.
    shutil.rmtree(repo / ".snakemake")
    assert planned(repo, *args) == {}
    record = json.loads(cell_paths(repo)[1].read_text())
    record["tokens_per_sec"] *= 1.5
    cell_paths(repo)[1].write_text(json.dumps(record))
    os.utime(cell_paths(repo)[1], (0, 0))  # older than the summary: only the stamp can tell
    assert planned(repo, *args) == {"code_stamp": 1, **AGGREGATION}
    assert (repo / "results/tiny/tables/eager.md").read_text().count("| tiny") == 2
    cell_paths(repo)[0].unlink()
    (repo / "results/tiny/summary.csv").unlink()  # the summary must be rebuilt, and cannot be without the cell
    proc = snakemake(repo, "-n", *args, check=False)
    assert proc.returncode != 0 and "cell.json" in proc.stdout + proc.stderr, "a missing cell must be named"


@pytest.mark.slow
def test_allow_missing_tables_a_partial_sweep(repo: Path) -> None:
    """A sweep run in parts: the cells present are aggregated, the missing one is listed as such, not dropped."""
    args = ("--config", "aggregate_only=True", "allow_missing=True", "device=cuda")
    missing = cell_paths(repo)[0]
    missing.unlink()
    snakemake(repo, "--cores", "1", *args)
    summary = pd.read_csv(repo / "results/tiny/summary.csv")
    assert len(summary) == TINY_CELLS
    row = summary[summary["status"] == "missing"]
    assert row["cell_path"].tolist() == [missing.relative_to(repo).as_posix()]
    assert (summary["status"] == "ok").sum() == TINY_CELLS - 1
    assert "not run yet" in (repo / "results/tiny/tables/all.md").read_text()
    # `attnsweep status` takes the missing row for what it is, not for a row that lost its file.
    results = repo / "results/tiny"
    lines = check_summary(results, repo, read_cells(results)[0])
    assert lines[0] == f"summary.csv: {TINY_CELLS} rows, 1 of them cells not measured yet", lines
    assert not any("without" in line or "another row" in line for line in lines), lines
    # The sweep resumed with its own command (no allow_missing) on another machine (the files with their times, no
    # .snakemake metadata): the partial summary is present and newer than the cells it read, yet the missing cell
    # runs, and the summary is rebuilt with it.
    shutil.rmtree(repo / ".snakemake")
    assert planned(repo)["cell"] == 1
    snakemake(repo, "--cores", "1")
    summary = pd.read_csv(repo / "results/tiny/summary.csv")
    assert (summary["status"] == "ok").sum() == TINY_CELLS, summary["status"].tolist()


@pytest.mark.slow
def test_records_of_other_code_left_by_a_stopped_part_are_measured_again(repo: Path) -> None:
    """A sweep stopped part-way after a code change, resumed on another machine (no .snakemake metadata): the new
    stamp is there already, but the records the stopped part did not reach were measured by the old code or settings.
    Those run again, and only those; a partial aggregation meanwhile lists them as not measured yet."""
    paths = cell_paths(repo)
    old_code, old_settings = paths[:2], paths[2]
    for p in old_code:
        record = json.loads(p.read_text())
        record["env"]["code"]["source_sha256"] = "0" * 64
        p.write_text(json.dumps(record))
    record = json.loads(old_settings.read_text())
    record["cell"]["steps"] = 5
    old_settings.write_text(json.dumps(record))
    stale = {p.relative_to(repo).as_posix() for p in [*old_code, old_settings]}
    snakemake(repo, "--cores", "1", "--config", "aggregate_only=True", "allow_missing=True")
    summary = pd.read_csv(repo / "results/tiny/summary.csv")
    assert set(summary.loc[summary["status"] == "missing", "cell_path"]) == stale
    assert (summary["status"] == "ok").sum() == 1
    # `attnsweep status` tells them from cells not measured at all, and from a record the summary lost.
    lines = check_summary(repo / "results/tiny", repo, read_cells(repo / "results/tiny")[0])
    assert lines[0] == f"summary.csv: {TINY_CELLS} rows, 3 of them cells not measured yet (3 beside a record left " \
                       "out as stale)", lines
    left_out = {line.split(": ")[-1] for line in lines if line.startswith("left out as stale")}
    assert {"results/tiny/" + p for p in left_out} == stale, lines
    assert any("of code 00000000:" in line for line in lines), lines
    assert not any("without" in line or line.startswith("not measured yet") for line in lines), lines
    shutil.rmtree(repo / ".snakemake")
    # (code_stamp: the aggregate_only run's report stamp named the records it tabled; measuring names none.)
    assert planned(repo) == {"code_stamp": 1, "rerun": 3, "warmup": 3, "cell": 3, **AGGREGATION}
    assert {"results/tiny/cells/" + "/".join(f"{a}~{c[a]}" for a in AXES) + "/cell.json"
            for c in planned_cells(repo)} == stale
    out = snakemake(repo, "--cores", "2").stderr
    assert "3 records of other code, settings or packages are measured again" in out, out
    current = {load_cell(p)["env"]["code"]["source_sha256"] for p in cell_paths(repo)}
    assert current == {source_hash()} and {load_cell(p)["cell"]["steps"] for p in cell_paths(repo)} == {6}
    assert not (repo / "results/tiny/.rerun").exists()  # the markers go once their jobs have run
    assert planned(repo) == {}


@pytest.mark.slow
def test_an_unsupported_record_is_measured_again_once_its_packages_changed(repo: Path) -> None:
    """A cell found unsupported where a package was missing (flash-attn-4, say) runs again when the sweep is resumed
    where the packages differ; an unsupported record made with this machine's packages stays."""
    paths = cell_paths(repo)
    changed, same = paths[0], paths[1]
    for path, torch_version in ((changed, "0.0.0"), (same, None)):
        record = json.loads(path.read_text())
        record["status"], record["reason"] = "unsupported", "needs a package that was not installed"
        if torch_version:
            record["env"]["versions"]["torch"] = torch_version
        path.write_text(json.dumps(record))
    shutil.rmtree(repo / ".snakemake")
    assert {"results/tiny/cells/" + "/".join(f"{a}~{c[a]}" for a in AXES) + "/cell.json"
            for c in planned_cells(repo)} == {changed.relative_to(repo).as_posix()}
    out = snakemake(repo, "--cores", "2").stderr
    assert "1 records of other code, settings or packages are measured again" in out, out
    assert "unsupported with torch 0.0.0, now" in out, out
    assert load_cell(changed)["status"] == "ok" and load_cell(same)["status"] == "unsupported"
    assert planned(repo) == {}


@pytest.mark.slow
def test_later_repeats_and_their_kept_warm_ups_follow_a_first_record_measured_again(repo: Path) -> None:
    """Repeats measure at their cell's first record's batch size. Where that record is measured again, so are they,
    after it; and a warm-up of theirs kept on a warm host from an earlier part, made from the old record, is made
    again rather than measured after."""
    edit_config(repo, repeats=2)
    # An earlier part that made the repeats' warm-ups and stopped (kept on a warm host: --notemp).
    snakemake(repo, "--cores", "2", "--until", "warmup", "--notemp")
    kept = sorted((repo / "results/tiny/warmup").rglob("r2/warmup.json"))
    assert len(kept) == TINY_CELLS
    first = cell_paths(repo)[0]
    record = json.loads(first.read_text())
    record["status"], record["reason"] = "unsupported", "needs a package that was not installed"
    record["env"]["versions"]["torch"] = "0.0.0"
    first.write_text(json.dumps(record))
    out = snakemake(repo, "-n").stdout
    assert planned(repo) == {"rerun": 1 + TINY_CELLS, "warmup": 2, "cell": 1, "cell_repeat": TINY_CELLS,
                             **AGGREGATION}, out
    cell = first.parent.relative_to(repo / "results/tiny/cells").as_posix()
    remade = re.findall(r"output: results/tiny/warmup/(\S+)/warmup.json", out)
    assert sorted(remade) == [f"{cell}/r1", f"{cell}/r2"], out
    snakemake(repo, "--cores", "2")
    assert load_cell(first)["status"] == "ok" and load_cell(first.with_name("repeat-2.json"))["status"] == "ok"
    # Both repeats measured now: the first record measured again takes its repeat with it.
    record = json.loads(first.read_text())
    record["env"]["code"]["source_sha256"] = "0" * 64
    first.write_text(json.dumps(record))
    shutil.rmtree(repo / ".snakemake")
    assert planned(repo) == {"rerun": 2, "warmup": 2, "cell": 1, "cell_repeat": 1, **AGGREGATION}
    # So in one stage, cold, where no warm-up stands between the repeat and the first record.
    edit_config(repo, warmup__enabled=False)
    assert planned(repo) == {"rerun": 2, "cell": 1, "cell_repeat": 1, **AGGREGATION}


@pytest.mark.slow
def test_the_records_waiting_for_their_timed_jobs_are_targets_that_run_no_warm_up(repo: Path) -> None:
    """`attnsweep status --waiting` names the records whose warm-ups are done (kept on a warm host from an earlier
    part) and whose timed jobs have not run: as targets (tools/gpu-host/sweep.sh's SWEEP_WAITING_ONLY) they make a
    part that runs those timed jobs only, and once they have run none waits."""
    def waiting() -> list[str]:
        return subprocess.run([sys.executable, "-m", "attnsweep", "status", "results/tiny", "--waiting"], cwd=repo,
                              check=True, capture_output=True, text=True).stdout.splitlines()

    edit_config(repo, repeats=2)
    assert waiting() == []
    snakemake(repo, "--cores", "2", "--until", "warmup", "--notemp")
    targets = waiting()
    assert targets == [p.with_name("repeat-2.json").relative_to(repo).as_posix() for p in cell_paths(repo)]
    assert planned(repo, *targets) == {"rerun": TINY_CELLS, "cell_repeat": TINY_CELLS}  # no warm-up
    snakemake(repo, "--cores", "2", *targets)
    assert all(load_cell(repo / t)["status"] == "ok" for t in targets)
    assert waiting() == []


def test_fresh_clone_with_committed_results_reruns_no_cell(repo: Path, tmp_path: Path) -> None:
    def git(*args: str, cwd: Path = repo) -> str:
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout

    shutil.copy2(REPO / ".gitignore", repo / ".gitignore")  # keeps .snakemake/ (metadata) out, as in the real repo
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "results")
    clone = tmp_path / "clone"
    git("clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert not (clone / ".snakemake").exists()
    jobs = planned(clone)
    assert jobs["cell"] == 0 and jobs["code_stamp"] == 0, jobs
    # Snakemake's own per-file view agrees: no cell output is pending.
    rows = [ln.split("\t") for ln in snakemake(clone, "--detailed-summary").stdout.splitlines()]
    plan = {r[0]: r[-1] for r in rows if r[0].endswith("/cell.json")}
    assert len(plan) == TINY_CELLS and set(plan.values()) == {"no update"}, plan
    # Aggregation may rerun (its scripts can be newer than its outputs in a checkout); it is deterministic, so
    # running it leaves the committed results unchanged.
    snakemake(clone)
    assert git("status", "--porcelain", "--untracked-files=no", cwd=clone) == ""
    # Without .snakemake metadata, changes are still seen: they give stamps of new names, which are targets.
    with open(clone / "src/attnsweep/report/figures.py", "a") as f:
        f.write("# an edit\n")
    assert planned(clone) == {"code_stamp": 1, **AGGREGATION}
    with open(clone / "src/attnsweep/model.py", "a") as f:
        f.write("# an edit\n")
    assert planned(clone) == {"code_stamp": 2, "rerun": TINY_CELLS, "warmup": TINY_CELLS, "cell": TINY_CELLS,
                              **AGGREGATION}


# ---- crashes and kills ------------------------------------------------------------------------------------------


def start(repo: Path) -> subprocess.Popen:
    """A sweep in the background, in its own process group; its output goes to repo/snakemake.out."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(repo / "snakemake.out", "w") as out:
        return subprocess.Popen([sys.executable, "-m", "snakemake", *PROFILE], cwd=repo, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def running_cell(repo: Path) -> Path | None:
    """The output of the cell now running: its log exists, its JSON not yet."""
    for log in (repo / "results/tiny/logs/cells").rglob("cell.log"):
        out = repo / "results/tiny/cells" / log.parent.relative_to(repo / "results/tiny/logs/cells") / "cell.json"
        if not out.exists():
            return out
    return None


@pytest.mark.slow
def test_killed_sweep_resumes_with_missing_cells_only(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path)
    proc = start(repo)
    # Kill the whole sweep (Snakemake and the cell it runs) while the second cell trains. Its processes are stopped
    # first and the cell looked at again (sweep_freeze): one seen running may have written its record since, and a
    # kill sent at once could come just after that (then the next cell is waited for).
    _, frozen = freeze_mid_cell(
        repo, lambda: wait_for(lambda: len(cell_paths(repo)) >= 1 and running_cell(repo) is not None),
        lambda _: running_cell(repo) is not None)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    reap(frozen)
    done = {p.relative_to(repo).as_posix() for p in cell_paths(repo)}
    interrupted = running_cell(repo)
    assert interrupted is not None and 1 <= len(done) < TINY_CELLS
    # What a non-atomic writer would leave behind: a half-written JSON at the interrupted cell's path.
    interrupted.write_text('{"schema_version": 1, "status": "o')
    todo = planned_cells(repo)
    todo_paths = {
        "results/tiny/cells/" + "/".join(f"{a}~{c[a]}" for a in AXES) + "/cell.json" for c in todo
    }
    assert interrupted.relative_to(repo).as_posix() in todo_paths  # incomplete: rerun, never taken as done
    assert todo_paths.isdisjoint(done) and len(todo_paths) + len(done) == TINY_CELLS
    snakemake(repo, "--unlock")
    snakemake(repo)
    assert len(cell_paths(repo)) == TINY_CELLS and all(load_cell(p)["status"] == "ok" for p in cell_paths(repo))


@pytest.mark.slow
def test_crashed_cell_fails_alone_and_keeps_its_log(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path)
    proc = start(repo)
    wait_for(lambda: running_cell(repo) is not None)
    victim = running_cell(repo)
    # The cell's own process dies (as in a segfault): its job fails, the other cells still run (keep-going). Its
    # Python, not the job's shell, which starts it after the deadline check: a shell killed before it has started
    # the cell would leave the cell running on its own.
    cell_procs: list[psutil.Process] = []

    def find() -> bool:
        cell_procs.clear()
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if child.name().startswith("python") and victim.relative_to(repo).as_posix() in " ".join(
                        child.cmdline()):
                    cell_procs.append(child)
            except psutil.Error:  # exited meanwhile
                pass
        return bool(cell_procs)

    wait_for(find)
    for child in cell_procs:
        child.kill()
    assert proc.wait(timeout=600) != 0
    out = (repo / "snakemake.out").read_text()
    assert not victim.exists()
    log = repo / "results/tiny/logs/cells" / victim.parent.relative_to(repo / "results/tiny/cells") / "cell.log"
    assert log.exists()
    assert len(cell_paths(repo)) == TINY_CELLS - 1
    assert not (repo / "results/tiny/summary.csv").exists()  # never aggregated over a hole
    assert "Error in rule cell" in out
    assert "CalledProcessError" in out and "non-zero exit status 137" in out, out  # the job's exception, shown


# ---- the CPU demo, end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA, reason="device auto picks the GPU here")
def test_cpu_demo_end_to_end(tmp_path: Path) -> None:
    """device auto on a machine without a GPU: the cpu_demo grid, every output, and the HTML report."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    # The shipped demo, cut down for CI: two contexts, compiled only at the shorter one.
    config["cpu_demo"].update(
        grid={"model": ["tiny"], "seq_len": [32, 64], "attn": ["naive", "sdpa", "flex"], "mode": ["eager", "compiled"],
              "precision": ["fp32"], "exclude": [{"mode": "compiled", "seq_len": 64}]},
        steps=6, window=3,
    )
    repo = copy_repo(tmp_path, config)
    snakemake(repo)
    results = repo / "results" / "cpu-demo"
    cells = cell_paths(repo, "cpu-demo")
    assert len(cells) == 9
    statuses = collections.Counter(load_cell(p)["status"] for p in cells)
    summary = pd.read_csv(results / "summary.csv")
    assert len(summary) == 9 and collections.Counter(summary["status"]) == statuses
    assert set(summary["mode"]) == {"eager", "compiled"}
    ok = summary[summary["status"] == "ok"]
    assert (ok["tokens_per_sec"] > 0).all()
    assert ok.loc[ok["attn"] != "naive", "speedup_vs_naive"].notna().all()
    for name in ("compiled", "eager", "all"):
        text = (results / "tables" / f"{name}.md").read_text()
        assert "| model" in text and "cpu" in text
    if statuses["unsupported"]:
        assert "unsupported" in (results / "tables" / "all.md").read_text()
    # No fa2 and no GPU memory on the CPU: only the figures with data are made.
    assert sorted(p.name for p in (results / "figures").iterdir()) == ["speedup.png", "throughput.png"]
    for png in (results / "figures").iterdir():
        assert png.read_bytes()[:4] == b"\x89PNG"
    # The README's report command for the CPU demo; the study's folder does not exist here: one sentence, no trace.
    wrong = snakemake(repo, "--report", "results/study/report.html", check=False)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr + wrong.stdout
    assert "its report: snakemake --report results/cpu-demo/report.html" in wrong.stderr
    snakemake(repo, "--report", "results/cpu-demo/report.html")
    html = (results / "report.html").read_text(errors="replace")
    assert len(html) > 10_000
    for name in ("speedup.png", "compiled.md", "summary.csv", "What was measured", "Fastest implementation"):
        assert name in html
    assert planned(repo) == {}
