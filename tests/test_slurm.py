"""The sweep through Snakemake's SLURM executor, against a real single-node SLURM started here.

tests/slurm/cluster.sh starts munged, slurmctld and slurmd (Debian's slurm-wlm) with a CPU-only partition; the sweep
runs with profiles/slurm under its test overlay profiles/slurm-test, which maps the GPU requests away. Checked: the
outputs match a local run of the same grid, every cell went through sbatch, a cancelled cell job is rerun by the same
command, and bad cluster settings stop the run before anything is submitted. About 4 minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from attnsweep.cellio import load_cell
from attnsweep.cluster import (ClusterSettingsError, Partition, check_jobs, job_problems, parse_sinfo,
                               scheduler_assigns_gpus)
from workflow_copy import copy_workflow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
SLURM_TEST = ["--profile", "profiles/slurm", "--workflow-profile", "profiles/slurm-test"]

# Three eager cells of the tiny model: one cell job at a time on the 2-core node (each asks for both cores).
GRID: dict = {
    "run": "tiny",
    "device": "cpu",
    "grid": {"model": ["tiny"], "seq_len": [32], "attn": ["naive", "sdpa", "sdpa_math"], "mode": ["eager"],
             "precision": ["fp32"]},
    "batch": {"policy": "fixed", "size": 4},
    "steps": 6,
    "window": 3,
}
N_CELLS = 3


# ---- the pre-submission check, without a cluster ----------------------------------------------------------------

SINFO = "gpu|gpu:h100:4(S:0-1),shard:8\ngpu|gpu:h100:8\nold|gpu:2\ndebug|(null)\n"


def test_parse_sinfo() -> None:
    parts = parse_sinfo(SINFO)
    assert parts == {"gpu": Partition(True, {"h100"}), "old": Partition(True, set()), "debug": Partition()}


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"gpu": 1, "gpu_model": "h100"}, "no SLURM partition for rule cell: set default-resources: slurm_partition"),
        ({"slurm_partition": "gpus"}, "slurm_partition 'gpus' (rule cell) is not a partition of this cluster"),
        ({"slurm_partition": "gpu", "gpu": 1, "gpu_model": "h200"}, "gpu_model 'h200' (rule cell) is not a GPU"),
        ({"slurm_partition": "debug", "gpu": 1}, "asks for gpu: 1, but partition 'debug' has no GPUs"),
    ],
)
def test_bad_settings_are_named(resources: dict, message: str) -> None:
    problems = job_problems("cell", resources, parse_sinfo(SINFO))
    assert len(problems) == 1 and message in problems[0], problems
    assert problems[0].startswith("profiles/slurm/config.yaml: ")


def test_jobs_through_slurm_take_no_gpu_slots() -> None:
    from types import SimpleNamespace

    def workflow(remote_exec: bool, non_local_exec: bool):
        return SimpleNamespace(remote_exec=remote_exec, non_local_exec=non_local_exec)

    # The submitting process (SLURM's executor) and the job inside each SLURM job (`--mode remote`): SLURM gives the
    # job its GPU. A sweep on one host (the local executor) takes slots.
    assert scheduler_assigns_gpus(workflow(False, True)) and scheduler_assigns_gpus(workflow(True, False))
    assert not scheduler_assigns_gpus(workflow(False, False))


def test_good_settings_pass() -> None:
    parts = parse_sinfo(SINFO)
    check_jobs([("cell", {"slurm_partition": "gpu", "gpu": 1, "gpu_model": "h100"}),
                ("warmup", {"slurm_partition": "old", "gpu": 1}),
                ("cell", {"slurm_partition": "debug", "gpu": 0})], parts)
    with pytest.raises(ClusterSettingsError, match="Nothing was submitted"):
        check_jobs([("cell", {})] * 3, parts)


# ---- a real SLURM -----------------------------------------------------------------------------------------------


def missing_slurm() -> str | None:
    """Why a single-node SLURM cannot be started here, or None."""
    absent = [exe for exe in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")
              if shutil.which(exe) is None]
    if absent:
        return (f"slurm-wlm/munge not installed ({', '.join(absent)} not found; .ci/run installs them with "
                "apt-get install slurm-wlm munge, which failed or was not run)")
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    reason = missing_slurm()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    subprocess.run(["bash", str(CLUSTER_SH), "start", str(state)], check=True, timeout=120)
    try:
        yield state
    finally:
        subprocess.run(["bash", str(CLUSTER_SH), "stop", str(state)], check=False, timeout=60)


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def snakemake(repo: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=repo, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def squeue() -> list[dict[str, str]]:
    """Every job the controller knows (finished ones stay for MinJobAge): id, state and the executor's comment."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k"], capture_output=True, text=True,
                         check=True).stdout
    return [dict(zip(("id", "state", "comment"), line.split("|", 2))) for line in out.splitlines()]


def cells(repo: Path) -> list[Path]:
    return sorted((repo / "results/tiny/cells").rglob("cell.json"))


def wildcards(cell: Path, repo: Path) -> str:
    """The executor's name for a cell job (its comment and log folder): the axis values joined by '_'."""
    parts = cell.parent.relative_to(repo / "results/tiny/cells").parts
    return "_".join(p.split("~", 1)[1] for p in parts)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        # the shipped profile as it is: the partition is left for the user to fill in
        ((), "no SLURM partition for rule cell: set default-resources: slurm_partition (partitions of this "
             "cluster: debug)"),
        (("--default-resources", "slurm_partition=gpus"), "slurm_partition 'gpus' (rule cell) is not a partition"),
        (("--default-resources", "slurm_partition=debug"),
         "gpu_model 'h100' (rule cell) is not a GPU model of partition 'debug'"),
    ],
)
def test_bad_cluster_settings_stop_before_submission(cluster: Path, tmp_path: Path, args: tuple,
                                                     message: str) -> None:
    repo = copy_workflow(tmp_path, GRID)
    before = squeue()
    proc = snakemake(repo, "--workflow-profile", "profiles/slurm", *args)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in text, text
    assert squeue() == before, "a job was submitted"
    assert not cells(repo)


@pytest.mark.slow
def test_sweep_through_slurm(cluster: Path, tmp_path: Path) -> None:
    """Cells as SLURM jobs; one cancelled while it waits is failed, and the same command again runs it alone."""
    local = copy_workflow(tmp_path / "local", GRID)
    # As profiles/slurm runs cells: one cold job each (no warm-up stage).
    proc = snakemake(local, "--workflow-profile", "profiles/default", "--cores", "2",
                     "--config", "warmup={enabled: false}")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    repo = copy_workflow(tmp_path / "slurm", GRID)
    with open(repo / "snakemake.out", "w") as out:
        sweep = subprocess.Popen([sys.executable, "-m", "snakemake", *SLURM_TEST], cwd=repo, env=env(), stdout=out,
                                 stderr=subprocess.STDOUT)
    # Cell jobs take both cores, so while one runs the others wait in the queue: cancel one of those.
    victim: dict[str, str] | None = None
    deadline = time.monotonic() + 300
    while victim is None:
        assert time.monotonic() < deadline and sweep.poll() is None, (repo / "snakemake.out").read_text()
        pending = [j for j in squeue() if j["state"] == "PENDING" and j["comment"].startswith("rule_cell_")]
        victim = pending[-1] if pending else None
        time.sleep(0.5)
    subprocess.run(["scancel", victim["id"]], check=True)
    assert sweep.wait(timeout=600) != 0
    first = (repo / "snakemake.out").read_text()
    assert f"SLURM-job '{victim['id']}' failed, SLURM status is: 'CANCELLED'" in first, first
    assert len(cells(repo)) == N_CELLS - 1
    assert not (repo / "results/tiny/summary.csv").exists()  # never aggregated over a hole

    proc = snakemake(repo, *SLURM_TEST)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    second = proc.stdout + proc.stderr
    rerun = re.findall(r"submitted with SLURM jobid (\d+)", second)
    assert len(rerun) == 1, "only the cancelled cell runs again"

    # Every cell went through sbatch: a completed SLURM job whose comment and log name the cell.
    jobs = {j["id"]: j for j in squeue()}
    assert jobs[victim["id"]]["state"] == "CANCELLED"
    for cell in cells(repo):
        name = wildcards(cell, repo)
        logs = list((repo / ".snakemake/slurm_logs/rule_cell" / name).glob("*.log"))
        done = [log.stem for log in logs if jobs.get(log.stem, {}).get("state") == "COMPLETED"]
        assert len(done) == 1, (name, [log.name for log in logs])
        assert jobs[done[0]]["comment"] == f"rule_cell_wildcards_{name}"
    # The aggregation ran on this host, not as a job.
    assert not [j for j in jobs.values() if not j["comment"].startswith("rule_cell_")], jobs

    # The same outputs as the local run.
    assert [c.relative_to(repo) for c in cells(repo)] == [c.relative_to(local) for c in cells(local)]
    assert {load_cell(c)["status"] for c in cells(repo)} == {load_cell(c)["status"] for c in cells(local)} == {"ok"}
    # Each cell had the two cores of its job, and took no GPU slot: SLURM gave it its device.
    assert {load_cell(c)["env"]["cpu_threads"] for c in cells(repo)} == {2}
    assert not (repo / "results/tiny/.gpulocks").exists() and (local / "results/tiny/.gpulocks").is_dir()
    keys = ["cell_path", "model", "seq_len", "attn", "mode", "status"]
    ours, theirs = (pd.read_csv(r / "results/tiny/summary.csv") for r in (repo, local))
    assert list(ours.columns) == list(theirs.columns)
    assert ours[keys].sort_values("cell_path").values.tolist() == theirs[keys].sort_values("cell_path").values.tolist()
    for folder in ("tables", "figures"):
        produced = sorted(p.name for p in (repo / "results/tiny" / folder).iterdir())
        assert produced == sorted(p.name for p in (local / "results/tiny" / folder).iterdir()) and produced
    rows = [[line.split("|")[1:3] for line in (r / "results/tiny/tables/all.md").read_text().splitlines()
             if line.startswith("| tiny")] for r in (repo, local)]
    assert rows[0] == rows[1] and rows[0]
