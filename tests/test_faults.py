"""Faults, bad input and provenance: a sweep never loses or invents a result.

Bad config is refused before any job (Snakemake dry runs in temporary copies of the workflow); a killed sweep or a
killed cell loses only the cell that was running; bad cell files are refused by the aggregation with the file
named; a full disk or an unwritable folder leaves nothing that looks like a record.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from attnsweep import attention, cellio
from attnsweep.cli import main as cli_main
from attnsweep.codestamp import source_hash
from attnsweep.model import MODEL_CONFIGS
from attnsweep.report.aggregate import summarize
from attnsweep.vocabulary import AXES
from sweep_freeze import dead, freeze_mid_cell, reap
from workflow_copy import copy_workflow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HAS_CUDA = torch.cuda.is_available()
# The shipped profile (keep-going, rerun-incomplete, one job at a time). Snakemake finds profiles/default by itself;
# naming it makes sure these tests run with it whatever the working directory.
PROFILE = ("--workflow-profile", "profiles/default")
TEMPLATE = json.loads((REPO / "tests" / "data" / "cell_ok.json").read_text())

# Three eager cells of the tiny model on the CPU: a few seconds each, most of it starting Python.
TINY: dict = {
    "run": "tiny",
    "device": "cpu",
    "grid": {"model": ["tiny"], "seq_len": [32, 64], "attn": ["naive", "sdpa"], "mode": ["eager"],
             "precision": ["fp32"], "exclude": [{"seq_len": 64, "attn": "sdpa"}]},
    "batch": {"policy": "fixed", "size": 4},
    "steps": 6,
    "window": 3,
}
TINY_CELLS = [
    f"results/tiny/cells/model~tiny/seq_len~{s}/attn~{a}/mode~eager/kv_heads~4/precision~fp32/optimizer~adamw/"
    "harness~native/cell.json"
    for s, a in ((32, "naive"), (32, "sdpa"), (64, "naive"))
]


# ---- helpers (also used by test_status.py) ----------------------------------------------------------------------


def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *PROFILE, *args]


def job_env(**extra: str) -> dict[str, str]:
    # Jobs call `python`: the interpreter running these tests, as an activated virtual environment would.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def snakemake(repo: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_cmd(*args), cwd=repo, env=env or job_env(), capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def jobs_run(output: str, rule: str) -> int:
    """How many jobs of `rule` Snakemake's 'Job stats' table lists (0 if it has none: nothing to do). A sweep's own
    output (the profile's logger) says the cells instead: 'attnsweep: N cells to measure'."""
    if rule == "cell" and "Job stats:" not in output:
        m = re.search(r"^attnsweep: (\d+) cells to measure", output, re.M)
        return int(m.group(1)) if m else 0
    m = re.search(rf"^{rule}\s+(\d+)$", output.split("Job stats:", 1)[-1], re.M) if "Job stats:" in output else None
    return int(m.group(1)) if m else 0


def cell_files(repo: Path) -> dict[str, bytes]:
    """Every JSON under the run's cells/ (temporaries included: a leftover must show up), path -> bytes. Read while
    a sweep may run: a temporary renamed into its record between the listing and the reading is passed over."""
    root = repo / "results" / "tiny" / "cells"
    files = {}
    for p in sorted(root.rglob("*")):
        try:
            files[p.relative_to(repo).as_posix()] = p.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue
    return files


def records(repo: Path) -> dict[str, bytes]:
    """The complete cell records only (a cell being written at that moment has only its temporary)."""
    return {p: b for p, b in cell_files(repo).items() if p.endswith("/cell.json")}


def wait_for(condition: Callable[[], object], timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


def running_cell(sweep: psutil.Process, repo: Path) -> tuple[psutil.Process, Path] | None:
    """The `python -m attnsweep cell` process under `sweep` that is still training: its --out is not written."""
    try:
        procs = sweep.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for p in procs:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if cmd[1:4] == ["-m", "attnsweep", "cell"] and "--out" in cmd:  # empty while a process exits
            out = repo / cmd[cmd.index("--out") + 1]
            if not out.exists():
                return p, out
    return None


# ---- 1. bad config is refused before any job --------------------------------------------------------------------


def with_changes(config: dict, **changes) -> dict:
    """A copy of `config` with dotted keys (grid__attn=...) set."""
    config = copy.deepcopy(config)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = config
        for p in parents:
            target = target.setdefault(p, {})
        target[key] = value
    return config


VALID = {"model": ", ".join(MODEL_CONFIGS), "attn": ", ".join(attention.names())}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # wrong types: the key's path and the type it must have
        ({"grid__seq_len": ["sixty-four"]}, "config: grid.seq_len.0: 'sixty-four' is not of type 'integer'"),
        ({"grid__model": "tiny"}, "config: grid.model: 'tiny' is not of type 'array'"),
        ({"memory_cap_gib": "12GB"}, "config: memory_cap_gib: '12GB' is not of type 'number', 'null'"),
        ({"memory_cap_gib": 0}, "config: memory_cap_gib: 0 is less than or equal to the minimum of 0"),
        # unknown names, with every valid one listed (the schema's enums for the grid, the sweep's check for exclude)
        ({"grid__model": ["tiny", "gpt5"]}, f"config: grid.model.1: 'gpt5' is not one of {list(MODEL_CONFIGS)}"),
        ({"grid__attn": ["sdpa", "flash3"]}, f"config: grid.attn.1: 'flash3' is not one of {attention.names()}"),
        ({"grid__exclude": [{"attn": "flash3"}]}, f"grid: unknown attn ['flash3']; valid: {VALID['attn']}"),
        # empty grids: an empty axis, or every cell excluded
        ({"grid__attn": []}, "config: grid.attn: [] should be non-empty"),
        ({"grid__exclude": [{"seq_len": [32, 64]}]}, "grid: no cell left after max_seq_len and exclude"),
        # a throughput window longer than the run
        ({"steps": 6, "window": 10}, "window (10) must not exceed steps (6)"),
        # duplicate axis values
        ({"grid__attn": ["sdpa", "naive", "sdpa"]}, "grid.attn: duplicate values ['sdpa']"),
        # a partial aggregation asked of a sweep that measures
        ({"allow_missing": True}, "allow_missing: only with aggregate_only=True"),
    ],
)
def test_bad_config_is_refused_before_any_job(tmp_path: Path, changes: dict, message: str) -> None:
    repo = copy_workflow(tmp_path, with_changes(TINY, **changes))
    proc = snakemake(repo, "-n", check=False)
    output = proc.stdout + proc.stderr  # Snakemake prints a workflow's errors on stdout
    assert proc.returncode != 0
    assert message in output, output
    assert "Job stats:" not in output  # refused while reading the workflow, before planning any job
    assert not (repo / "results").exists()


@pytest.mark.skipif(HAS_CUDA, reason="device auto picks the GPU here, not the cpu_demo section")
def test_bad_cpu_demo_key_is_named_as_written(tmp_path: Path) -> None:
    """A mistake in the cpu_demo section is reported under that section's key, where the user must fix it."""
    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    repo = copy_workflow(tmp_path, with_changes(shipped, cpu_demo__window=50, cpu_demo__steps=20))
    proc = snakemake(repo, "-n", check=False)
    assert proc.returncode != 0
    assert "cpu_demo.window (50) must not exceed cpu_demo.steps (20)" in proc.stdout + proc.stderr, proc.stdout
    assert not (repo / "results").exists()


def fake_gpu(monkeypatch: pytest.MonkeyPatch | None = None, gib: int = 16) -> str:
    """A pretend CUDA GPU of `gib` GiB: patched in this process, or (no monkeypatch) as sitecustomize source."""
    props = types.SimpleNamespace(name="Fake GPU", total_memory=gib * 2**30, major=9, minor=0)
    if monkeypatch is not None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    return (
        "import types, torch\n"
        "torch.cuda.is_available = lambda: True\n"
        f"torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(name='Fake GPU', "
        f"total_memory={gib} * 2**30, major=9, minor=0)\n"
    )


def test_cell_refuses_a_memory_cap_larger_than_the_gpu(tmp_path: Path, monkeypatch, capsys) -> None:
    """The cell checks the cap against the GPU before building anything (faked 16 GiB GPU, no training)."""
    fake_gpu(monkeypatch, gib=16)
    out = tmp_path / "cell.json"
    with pytest.raises(SystemExit) as e:
        cli_main(["cell", "--model", "tiny", "--attn", "sdpa", "--seq-len", "32", "--batch-size", "2",
                  "--device", "cuda", "--memory-cap-gib", "24", "--out", str(out)])
    assert e.value.code == 2
    assert "--memory-cap-gib 24.0 exceeds the GPU's 16.0 GiB" in capsys.readouterr().err
    assert not out.exists()


def test_pipeline_refuses_a_memory_cap_larger_than_the_gpu_before_any_job(tmp_path: Path) -> None:
    # Snakemake's process sees a 16 GiB GPU through a pretend nvidia-smi (it only plans here: -n; no CUDA needed).
    repo = copy_workflow(tmp_path, with_changes(TINY, device="cuda", memory_cap_gib=24))
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(
        '#!/bin/sh\ncase "$*" in *-L*) echo "GPU 0: Fake GPU (UUID: GPU-0)";; *) echo "Fake GPU, 16384";; esac\n'
    )
    (fake / "nvidia-smi").chmod(0o755)
    path = os.pathsep.join([str(BIN), str(fake), os.environ["PATH"]])
    proc = snakemake(repo, "-n", check=False, env=job_env(PATH=path))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "memory_cap_gib: 24 GiB exceeds the 16.0 GiB of Fake GPU" in output, output
    assert "Job stats" not in output and not (repo / "results").exists()


def test_resuming_a_run_in_another_environment_is_refused_before_any_job(tmp_path: Path) -> None:
    """A run folder whose kept cells were measured elsewhere (another GPU, torch, ...): the new cells could never be
    tabled with them, so the sweep is refused while Snakemake reads the workflow, naming what differs."""
    repo = copy_workflow(tmp_path, TINY)
    snakemake(repo, "--cores", "1", "--until", "code_stamp")  # the stamp of this code and settings, no cell
    rec = copy.deepcopy(TEMPLATE)
    # Of this code and settings, measured elsewhere: kept (a record of other code would be measured again).
    rec["cell"].update(model="tiny", seq_len=32, attn="naive", mode="eager", kv_heads=4, precision="fp32",
                       optimizer="adamw", harness="native", run="tiny", batch_policy="fixed", steps=6, window=3,
                       device="cpu", seed=0)
    rec.update(batch_size=4)
    rec["env"].update(gpu_name="Elsewhere GPU", torch="1.0.0", code={"source_sha256": source_hash()})
    kept = repo / TINY_CELLS[0]
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps(rec))
    proc = snakemake(repo, "-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "results/tiny holds cells measured in another environment than this machine's" in output, output
    assert "gpu Elsewhere GPU (1 of 1 cells) there, none here" in output
    assert f"torch 1.0.0 (1 of 1 cells) there, {torch.__version__} here" in output
    assert "allow_mixed_env" in output and "Job stats:" not in output
    # Allowed explicitly: the two cells not measured yet are planned, the kept one stays.
    allowed = snakemake(repo, "-n", "--config", "allow_mixed_env=True").stdout
    assert jobs_run(allowed, "cell") == 2
    # After a settings (or code) change every cell is measured again here: nothing is kept, nothing to refuse.
    changed = snakemake(repo, "-n", "--config", "steps=7").stdout
    assert jobs_run(changed, "cell") == 3


# ---- 2. kill and resume -----------------------------------------------------------------------------------------


def start_sweep(repo: Path, log: Path) -> subprocess.Popen:
    """The sweep in its own process group (as from a terminal), output to `log`."""
    with open(log, "w") as f:
        return subprocess.Popen(snakemake_cmd(), cwd=repo, env=job_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def cell_in_training(sweep: subprocess.Popen, repo: Path, log: Path, after_one_done: bool = False):
    """Wait for a cell process that is training (and, if asked, another cell done); fail fast if the sweep ends."""

    def found():
        assert sweep.poll() is None, f"the sweep ended before the kill:\n{log.read_text()}"
        # Done means a record in place: a temporary being written does not count.
        if after_one_done and not records(repo):
            return None
        return running_cell(psutil.Process(sweep.pid), repo)

    return wait_for(found)


@pytest.mark.slow
def test_sigkilled_sweep_resumes_without_rerunning_or_inventing_cells(tmp_path: Path) -> None:
    # More steps than the other tests: the cells must still be training when the kill comes.
    repo = copy_workflow(tmp_path / "repo", {**TINY, "steps": 40})
    sweep = start_sweep(repo, tmp_path / "first.log")
    # Kill while a cell trains and at least one other is done. The cells' processes are stopped first and the cell
    # looked at again (sweep_freeze): one seen training may have written its record since, and a kill sent at once
    # could come just after that (then the next cell is waited for).
    (victim, victim_out), frozen = freeze_mid_cell(
        repo, lambda: cell_in_training(sweep, repo, tmp_path / "first.log", after_one_done=True),
        lambda found: not found[1].exists())
    done = records(repo)
    mtimes = {p: (repo / p).stat().st_mtime_ns for p in done}
    os.killpg(sweep.pid, signal.SIGKILL)  # Snakemake and its jobs, as a lost terminal or the OOM killer would
    sweep.wait()
    assert wait_for(lambda: dead(victim), timeout=10), "the cell of a killed sweep must die with it"
    reap(frozen)
    assert 1 <= len(done) < len(TINY_CELLS) and set(done) < set(TINY_CELLS)
    assert not victim_out.exists()

    # The same command again. Snakemake's lock survives SIGKILL; it may refuse (naming --unlock) but then it
    # must not have run or touched anything.
    again = snakemake(repo, check=False)
    if again.returncode != 0:
        assert "--unlock" in again.stderr and jobs_run(again.stdout + again.stderr, "cell") == 0, again.stderr
        assert records(repo) == done
        snakemake(repo, "--unlock")
        again = snakemake(repo)
    output = again.stdout + again.stderr

    # Every cell exactly once, each a complete record (nothing else: no temporary or half-written file).
    final = cell_files(repo)
    assert sorted(final) == TINY_CELLS
    for path in final:
        cellio.load_cell(repo / path)
    # No completed cell ran again: same bytes, same mtime; only the others ran.
    assert {p: final[p] for p in done} == done
    assert {p: (repo / p).stat().st_mtime_ns for p in done} == mtimes
    assert jobs_run(output, "cell") == len(TINY_CELLS) - len(done), output
    summary = (repo / "results" / "tiny" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(TINY_CELLS)


@pytest.mark.slow
def test_killed_cell_fails_alone_keeps_its_log_and_is_rerun_next_time(tmp_path: Path) -> None:
    repo = copy_workflow(tmp_path / "repo", {**TINY, "steps": 40})
    sweep = start_sweep(repo, tmp_path / "first.log")
    victim, victim_out = cell_in_training(sweep, repo, tmp_path / "first.log")
    victim.kill()  # the cell's own process dies (as in a segfault); Snakemake lives on
    assert sweep.wait(timeout=300) != 0
    output = (tmp_path / "first.log").read_text()

    rel = victim_out.relative_to(repo / "results" / "tiny" / "cells")
    log = repo / "results" / "tiny" / "logs" / "cells" / rel.parent / "cell.log"
    assert "Error in rule cell" in output and log.relative_to(repo).as_posix() in output
    assert log.exists(), "a failed cell keeps its log"
    others = cell_files(repo)
    assert sorted(others) == sorted(set(TINY_CELLS) - {victim_out.relative_to(repo).as_posix()})  # keep-going
    for path in others:
        cellio.load_cell(repo / path)
    assert not (repo / "results" / "tiny" / "summary.csv").exists()  # never aggregated over a hole

    # The next run (no lock left: Snakemake exited normally) runs the failed cell only.
    again = snakemake(repo)
    assert jobs_run(again.stdout + again.stderr, "cell") == 1
    assert {p: cell_files(repo)[p] for p in others} == others
    assert sorted(cell_files(repo)) == TINY_CELLS


# ---- 3. bad data in ---------------------------------------------------------------------------------------------


def write_cell(root: Path, run: str = "fixture", env: dict | None = None, tps: float = 100_000.0, **cell) -> Path:
    """A valid record from tests/data/cell_ok.json with `cell` and `env` fields changed, in a folder of its own."""
    rec = copy.deepcopy(TEMPLATE)
    rec["cell"].update(cell, run=run)
    rec["tokens_per_sec"] = tps
    for key, value in (env or {}).items():
        target = rec["env"]
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    c = rec["cell"]
    path = root / "/".join(f"{a}~{c[a]}" for a in AXES) / f"{run}-cell.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


@pytest.fixture
def cells(tmp_path: Path) -> list[Path]:
    """Four good cells of one run and one environment."""
    return [write_cell(tmp_path / "cells", attn=a, seq_len=s) for a in ("naive", "sdpa") for s in (512, 1024)]


BAD_FILES: dict[str, Callable[[str], bytes]] = {
    "truncated": lambda text: text[: len(text) // 2].encode(),
    "empty": lambda text: b"",
    "not JSON": lambda text: b"<html>502 Bad Gateway</html>",
    "other schema version": lambda text: json.dumps({**json.loads(text), "schema_version": 2}).encode(),
    "JSON but not a cell": lambda text: json.dumps({"rows": [1, 2, 3]}).encode(),
    "a field of the wrong type": lambda text: json.dumps({**json.loads(text), "tokens_per_sec": "fast"}).encode(),
    "not UTF-8": lambda text: b"\xff\xfe" + text.encode("utf-16-le"),
}


@pytest.mark.parametrize("damage", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_cell_file_is_refused_by_name(cells: list[Path], damage: Callable[[str], bytes]) -> None:
    bad = cells[1]
    bad.write_bytes(damage(bad.read_text()))
    with pytest.raises(ValueError) as e:
        summarize(cells)
    assert str(bad) in str(e.value)


def test_cell_from_another_run_is_refused_by_name(cells: list[Path], tmp_path: Path) -> None:
    foreign = write_cell(tmp_path / "cells", run="other-run", attn="fa2", seq_len=1024)
    with pytest.raises(ValueError, match=re.escape(str(foreign))):
        summarize([*cells, foreign])


def test_one_cell_twice_is_refused_naming_both_files(cells: list[Path], tmp_path: Path) -> None:
    twin = tmp_path / "twin" / "cell.json"
    twin.parent.mkdir()
    shutil.copy2(cells[0], twin)
    with pytest.raises(ValueError) as e:
        summarize([*cells, twin])
    assert str(cells[0]) in str(e.value) and str(twin) in str(e.value)


@pytest.mark.parametrize(
    ("env", "differs"),
    [
        ({"gpu_name": "NVIDIA A100-SXM4-80GB"}, "gpu"),
        ({"cuda": "12.4"}, "cuda"),
        ({"torch": "2.8.0+cu128", "versions.torch": "2.8.0"}, "torch"),
        ({"versions.flash-attn": "2.7.4"}, "flash-attn"),
    ],
)
def test_cells_from_another_environment_are_refused_or_grouped(cells: list[Path], tmp_path: Path, env: dict,
                                                               differs: str) -> None:
    odd = [write_cell(tmp_path / "elsewhere", env=env, attn=a, seq_len=1024, tps=t)
           for a, t in (("naive", 25_000.0), ("sdpa", 50_000.0))]
    with pytest.raises(ValueError) as e:
        summarize([*cells, *odd])
    msg = str(e.value)
    assert "allow_mixed_env" in msg and all(str(p) in msg for p in [*cells, *odd])
    # Allowed explicitly: separate environments, and no comparison across them.
    df = summarize([*cells, *odd], allow_mixed_env=True)
    assert df["env_id"].nunique() == 2
    sdpa_elsewhere = df["cell_path"].isin([p.as_posix() for p in odd]) & (df["attn"] == "sdpa")
    # 2.0 against the naive cell of its own environment; 0.5 would be against the other environment's
    assert df.loc[sdpa_elsewhere, "speedup_vs_naive"].tolist() == [pytest.approx(2.0)]


def test_refusal_names_a_version_missing_on_one_side(cells: list[Path], tmp_path: Path) -> None:
    # the others have flash-attn 2.8.3; this one ran where it was not installed
    odd = write_cell(tmp_path / "elsewhere", env={"versions.flash-attn": None}, attn="naive", seq_len=1024)
    with pytest.raises(ValueError, match="they differ in flash-attn"):
        summarize([*cells, odd])


# ---- 5. disk and permissions ------------------------------------------------------------------------------------


class FullDisk:
    """A file object whose writes fail with ENOSPC after the first, as on a disk that fills up mid-record."""

    def __init__(self, f):
        self.f, self.writes = f, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(text)

    def __getattr__(self, name):
        return getattr(self.f, name)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


FAILURES: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "write": lambda mp: mp.setattr(cellio.os, "fdopen", lambda fd, mode: FullDisk(open(fd, mode))),
    "fsync": lambda mp: mp.setattr(cellio.os, "fsync", no_space),
    "rename": lambda mp: mp.setattr(cellio.os, "replace", no_space),
}


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
@pytest.mark.parametrize("failing", FAILURES.values(), ids=FAILURES.keys())
def test_full_disk_leaves_no_partial_record(tmp_path: Path, monkeypatch, failing, existing: bool) -> None:
    target = tmp_path / "cell.json"
    if existing:
        target.write_text('{"old": true}')
    failing(monkeypatch)
    with pytest.raises(OSError) as e:
        cellio.write_json_atomic(target, {"status": "ok", "step_times_s": [0.1] * 1000})
    assert e.value.errno == errno.ENOSPC
    # All or nothing: no new file, the old one untouched, no temporary left to be mistaken for a record.
    assert [p.name for p in tmp_path.iterdir()] == (["cell.json"] if existing else [])
    if existing:
        assert target.read_text() == '{"old": true}'


def test_folder_under_a_regular_file_fails_for_root_too(tmp_path: Path) -> None:
    """chmod does not stop root (CI); a path through a regular file fails for every user."""
    (tmp_path / "results").write_text("a file where a folder should be")
    with pytest.raises(OSError):
        cellio.write_json_atomic(tmp_path / "results" / "cells" / "cell.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 500")
def test_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cells"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            cellio.write_json_atomic(folder / "cell.json", {"a": 1})
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_cli_says_which_file_it_cannot_write_and_why(tmp_path: Path, capsys) -> None:
    """A real (short) cell whose record cannot be written: one clear line and exit 1, not a traceback."""
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    out = blocker / "cells" / "cell.json"
    rc = cli_main(["cell", "--model", "tiny", "--attn", "naive", "--mode", "eager", "--seq-len", "16",
                   "--batch-size", "1", "--precision", "fp32", "--device", "cpu", "--steps", "2", "--window", "1",
                   "--no-profile", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"cannot write the record to {out}: Not a directory" in err and "status ok" in err, err
    assert "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


def test_cli_full_disk_message(tmp_path: Path, monkeypatch, capsys) -> None:
    # The measurement is canned (the template record): this is about the write, not the training.
    monkeypatch.setattr("attnsweep.cell.run_cell",
                        lambda spec, first=None, prior=None, peers=(): copy.deepcopy(TEMPLATE))
    monkeypatch.setattr(cellio.os, "replace", no_space)
    out = tmp_path / "cells" / "cell.json"
    rc = cli_main(["cell", "--model", "tiny", "--attn", "naive", "--seq-len", "16", "--batch-size", "1",
                   "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"cannot write the record to {out}: No space left on device (errno {errno.ENOSPC})" in err, err
    assert list((tmp_path / "cells").iterdir()) == []
