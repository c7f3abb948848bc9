"""tools/gpu-host/device-tree.sh: a slim branch for device calls, and back with the results the calls brought."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from attnsweep import sweep

SCRIPT = Path(__file__).resolve().parents[1] / "tools/gpu-host/device-tree.sh"
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=check)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A repository with two runs' results (one with an HTML report) and a tools folder."""
    for rel, text in {"results/old/cells/a.json": "{}", "results/replay/cells/b.json": "{}",
                      "results/replay/report.html": "<html>", "results/README.md": "page", "src/x.py": ""}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    run(tmp_path, *GIT, "init", "-q", "-b", "main")
    run(tmp_path, *GIT, "add", ".")
    run(tmp_path, *GIT, "commit", "-qm", "start")
    return tmp_path


def test_slim_keeps_only_the_named_runs_and_back_replays_their_commits(checkout: Path) -> None:
    out = run(checkout, "bash", str(SCRIPT), "slim", "replay").stdout
    assert "MiB" in out and "the limit is 64 MiB" in out
    assert not (checkout / "results/old").exists() and not (checkout / "results/replay/report.html").exists()
    assert (checkout / "results/replay/cells/b.json").exists() and (checkout / "src/x.py").exists()
    # A call's results, unpacked and committed on the slim branch; one more left uncommitted.
    (checkout / "results/replay/cells/c.json").write_text("{}")
    run(checkout, *GIT, "add", "results")
    run(checkout, *GIT, "commit", "-qm", "part 1")
    (checkout / "results/replay/cells/d.json").write_text("{}")
    run(checkout, "bash", str(SCRIPT), "back")
    assert run(checkout, "git", "symbolic-ref", "--short", "HEAD").stdout.strip() == "main"
    assert "device-tree" not in run(checkout, "git", "branch").stdout
    assert run(checkout, "git", "log", "-1", "--format=%s").stdout.strip() == "part 1"
    for rel in ("results/old/cells/a.json", "results/replay/report.html", "results/replay/cells/c.json",
                "results/replay/cells/d.json"):
        assert (checkout / rel).exists(), rel
    assert run(checkout, "git", "status", "--porcelain").stdout.strip() == "?? results/replay/cells/d.json"


def test_slim_keeps_of_a_run_only_read_its_summary_and_records(checkout: Path) -> None:
    """--reads: of a run the resumed one reads (its batch.prior_run, its compare_with), only summary.csv and the cell
    records go to the host; back restores the rest; a run with no summary is refused before anything changes."""
    prior = {"results/prior/summary.csv": "model\n", "results/prior/cells/m~x/cell.json": "{}",
             "results/prior/logs/cells/m~x/cell.log": "log", "results/prior/tables/all.md": "table"}
    for rel, text in prior.items():
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text(text)
    run(checkout, *GIT, "add", ".")
    run(checkout, *GIT, "commit", "-qm", "a prior run")
    refused = run(checkout, "bash", str(SCRIPT), "slim", "replay", "--reads", "old", check=False)
    assert refused.returncode == 2 and "results/old/summary.csv does not exist" in refused.stderr
    assert not (checkout / ".git/device-tree-from").exists()
    run(checkout, "bash", str(SCRIPT), "slim", "replay", "--reads", "prior")
    kept = sorted(p.relative_to(checkout).as_posix() for p in (checkout / "results/prior").rglob("*") if p.is_file())
    assert kept == ["results/prior/cells/m~x/cell.json", "results/prior/summary.csv"]
    assert (checkout / "results/replay/cells/b.json").exists() and not (checkout / "results/old").exists()
    run(checkout, "bash", str(SCRIPT), "back")
    assert all((checkout / rel).read_text() == text for rel, text in prior.items())


def test_slim_refuses_a_tree_with_changes_and_back_refuses_when_not_slim(checkout: Path) -> None:
    (checkout / "src/x.py").write_text("changed")
    slim = run(checkout, "bash", str(SCRIPT), "slim", "replay", check=False)
    assert slim.returncode == 1 and "not clean" in slim.stderr
    back = run(checkout, "bash", str(SCRIPT), "back", check=False)
    assert back.returncode == 1 and "not slim" in back.stderr
    assert run(checkout, "git", "symbolic-ref", "--short", "HEAD").stdout.strip() == "main"


def test_unpack_replaces_the_run_folders_so_what_the_host_deleted_goes_here_too(
        checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    run(checkout, "bash", str(SCRIPT), "slim", "replay")
    # The host's copy after a part: a new record, and the old code stamp replaced by a new one.
    (checkout / "results/replay/stamps").mkdir()
    (checkout / "results/replay/stamps/cells-old.json").write_text("{}")
    run(checkout, *GIT, "add", "results")
    run(checkout, *GIT, "commit", "-qm", "old stamp")
    outside = tmp_path_factory.mktemp("call")  # the checkout is tmp_path itself
    host = outside / "host"
    shutil.copytree(checkout / "results", host / "results")
    (host / "results/replay/stamps/cells-old.json").unlink()
    (host / "results/replay/stamps/cells-new.json").write_text("{}")
    (host / "results/replay/cells/c.json").write_text("{}")
    tgz = outside / "replay.tgz"
    run(host, "tar", "czf", str(tgz), "results/replay")
    out = run(checkout, "bash", str(SCRIPT), "unpack", str(tgz), "part 1").stdout
    assert "part 1" in out
    assert not (checkout / "results/replay/stamps/cells-old.json").exists()
    for rel in ("results/replay/stamps/cells-new.json", "results/replay/cells/c.json"):
        assert (checkout / rel).exists(), rel
    assert run(checkout, "git", "status", "--porcelain").stdout.strip() == ""
    run(checkout, "bash", str(SCRIPT), "back")
    assert not (checkout / "results/replay/stamps/cells-old.json").exists()
    assert (checkout / "results/replay/cells/c.json").exists() and (checkout / "results/replay/report.html").exists()
    wrong = run(checkout, "bash", str(SCRIPT), "unpack", str(tgz), "again", check=False)
    assert wrong.returncode == 1 and "not slim" in wrong.stderr


def record(code: str) -> str:
    """A cell record as far as unpack reads it: the code it was measured with."""
    return json.dumps({"status": "ok", "env": {"code": {"source_sha256": code}}})


def test_unpack_refuses_a_tarball_from_a_call_that_began_before_the_last_unpack(
        checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two calls in a row, the second sent before the first's tarball was unpacked: the second tarball lacks the first
    call's records. Unpacking it after the first would delete them; unpack refuses and names one, and --replace
    replaces anyway. A record of other code the tarball lacks (the host deletes a stale record when it starts
    measuring it again) is no reason to refuse, though the tarball holds other records of that code unchanged."""
    (checkout / "results/replay/cells/stale.json").write_text(record("old"))
    (checkout / "results/replay/cells/stale-too.json").write_text(record("old"))
    run(checkout, *GIT, "add", "results")
    run(checkout, *GIT, "commit", "-qm", "a stale record")
    run(checkout, "bash", str(SCRIPT), "slim", "replay")
    outside = tmp_path_factory.mktemp("calls")

    def call(name: str, *records: str) -> Path:
        """A call's tarball: the run folder as the checkout had it when the call was sent, plus its new records."""
        host = outside / name
        shutil.copytree(checkout / "results", host / "results")
        (host / "results/replay/cells/stale.json").unlink()  # measured again: its job began, and the part ended
        for rel in records:
            (host / "results/replay/cells" / rel).write_text(record("now"))
        tgz = outside / f"{name}.tgz"
        run(host, "tar", "czf", str(tgz), "results/replay")
        return tgz

    first, second = call("first", "one.json"), call("second", "two.json")  # both sent from the same tree
    out = run(checkout, "bash", str(SCRIPT), "unpack", str(first), "part 1").stdout
    assert "part 1" in out and not (checkout / "results/replay/cells/stale.json").exists()
    refused = run(checkout, "bash", str(SCRIPT), "unpack", str(second), "part 2", check=False)
    assert refused.returncode == 1 and "results/replay/cells/one.json" in refused.stderr, refused.stderr
    assert (checkout / "results/replay/cells/one.json").exists()
    assert not (checkout / "results/replay/cells/two.json").exists()
    assert run(checkout, "git", "log", "-1", "--format=%s").stdout.strip() == "part 1"
    run(checkout, "bash", str(SCRIPT), "unpack", "--replace", str(second), "part 2")
    assert not (checkout / "results/replay/cells/one.json").exists()
    assert (checkout / "results/replay/cells/two.json").exists()


def test_slim_code_sends_an_earlier_commits_code_with_this_branchs_results(checkout: Path) -> None:
    """--code REV: a run whose records are of an earlier cell code continues with that code; every file outside
    results/ is as at REV (one REV lacks is gone, one it had is back), the kept run as on the branch, and back replays
    only the calls' results onto the branch, whose code stays its own. An unknown REV changes nothing."""
    earlier = run(checkout, "git", "rev-parse", "HEAD").stdout.strip()
    (checkout / "src/x.py").write_text("newer code")
    (checkout / "src/y.py").write_text("new module")
    (checkout / "results/replay/cells/e.json").write_text("{}")  # measured after REV, at REV's code
    run(checkout, *GIT, "add", ".")
    run(checkout, *GIT, "commit", "-qm", "newer code, and a record")
    wrong = run(checkout, "bash", str(SCRIPT), "slim", "--code", "nosuchrev", "replay", check=False)
    assert wrong.returncode == 2 and "--code nosuchrev is not a commit" in wrong.stderr
    assert run(checkout, "git", "symbolic-ref", "--short", "HEAD").stdout.strip() == "main"
    run(checkout, "bash", str(SCRIPT), "slim", "--code", earlier[:8], "replay")
    assert (checkout / "src/x.py").read_text() == "" and not (checkout / "src/y.py").exists()
    assert (checkout / "results/replay/cells/e.json").exists() and not (checkout / "results/old").exists()
    assert run(checkout, "git", "status", "--porcelain").stdout.strip() == ""
    (checkout / "results/replay/cells/f.json").write_text("{}")
    run(checkout, *GIT, "add", "results")
    run(checkout, *GIT, "commit", "-qm", "part 1")
    run(checkout, "bash", str(SCRIPT), "back")
    assert (checkout / "src/x.py").read_text() == "newer code" and (checkout / "src/y.py").exists()
    assert (checkout / "results/replay/cells/f.json").exists() and (checkout / "results/old/cells/a.json").exists()
    assert run(checkout, "git", "log", "-1", "--format=%s").stdout.strip() == "part 1"


def test_size_judges_the_files_4_kib_blocks_against_the_limit(checkout: Path) -> None:
    """The device tool refused a call of 60.8 MiB of files, 66.0 MiB in 4 KiB blocks: `size` exits 1 where the
    blocks of the tree and the carried folders are over 64 MiB."""
    (checkout / ".gitignore").write_text("/carried/\n")
    carried = checkout / "carried"
    carried.mkdir()
    with open(carried / "wheels.bin", "wb") as f:
        f.truncate(60 * 2**20)  # 60 MiB
    fits = run(checkout, "bash", str(SCRIPT), "size", "carried")
    assert fits.returncode == 0 and "the limit is 64 MiB\n" in fits.stdout
    for i in range(1100):  # 1,100 small files: 4.3 MiB of blocks, a few KiB of bytes
        (carried / f"log-{i}.txt").write_text("x")
    over = run(checkout, "bash", str(SCRIPT), "size", "carried", check=False)
    assert over.returncode == 1 and "over it in blocks, the tool would refuse the call" in over.stdout, over.stdout
    assert over.stdout.split(" MiB")[0].endswith(" 60.0")  # its bytes alone would be under the limit


SIDE_SWEEP = SCRIPT.parent / "side-sweep.sh"


@pytest.fixture
def side(checkout: Path) -> tuple[Path, str]:
    """A checkout whose run `old` continues at an earlier commit's code (its sweep.sh a stand-in that says where it
    ran), slim for `replay` at newer code, with `old` packed as a side run: (checkout, the earlier commit)."""
    (checkout / ".gitignore").write_text("/.sidetree/\n/.gpuwheels/\n")
    (checkout / "tools/gpu-host").mkdir(parents=True)
    (checkout / "tools/gpu-host/sweep.sh").write_text('echo "sweep in $PWD: $*"; ls -a results\n')
    (checkout / "results/old/report.html").write_text("<html>")
    (checkout / "results/old/cells/a.json").write_text(record("old"))
    run(checkout, *GIT, "add", ".")
    run(checkout, *GIT, "commit", "-qm", "the old run's code")
    earlier = run(checkout, "git", "rev-parse", "HEAD").stdout.strip()
    (checkout / "src/x.py").write_text("newer code")
    run(checkout, *GIT, "commit", "-qam", "newer code")
    run(checkout, "bash", str(SCRIPT), "slim", "replay")
    out = run(checkout, "bash", str(SCRIPT), "side", earlier[:8], "old").stdout
    assert f"the code of {earlier[:8]}, results/old of main" in out
    return checkout, earlier


def test_side_packs_an_earlier_commits_code_with_the_branch_befores_results(side: tuple[Path, str]) -> None:
    checkout, earlier = side
    assert (checkout / ".sidetree/old.rev").read_text().strip() == earlier
    with tarfile.open(checkout / ".sidetree/old.tgz") as tgz:
        names = {m.name.removeprefix("./") for m in tgz.getmembers() if m.isfile()}
        assert tgz.extractfile("./src/x.py").read() == b""  # the earlier code, not the branch's
    assert "results/old/cells/a.json" in names and "tools/gpu-host/sweep.sh" in names
    assert "results/old/report.html" not in names and not any(n.startswith("results/replay") for n in names)
    assert run(checkout, "git", "status", "--porcelain").stdout.strip() == ""  # .sidetree is ignored
    bad = run(checkout, "bash", str(SCRIPT), "side", earlier, "nosuchrun", check=False)
    assert bad.returncode == 2 and "main has no results/nosuchrun" in bad.stderr


def test_side_sweep_runs_the_side_runs_own_sweep_and_keeps_its_tree_on_a_warm_host(
        side: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    checkout, earlier = side
    host = tmp_path_factory.mktemp("host")
    (checkout / ".gpuwheels").mkdir()
    env = {**os.environ, "SIDETREE_DIR": str(host), "OUT": str(host)}
    done = subprocess.run(["bash", str(SIDE_SWEEP), "30", "old", "--config", "run=old"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    tree = host / "old"
    assert f"sweep in {tree}: 30 old --config run=old" in done.stdout
    assert f"old at {earlier[:7]}" in done.stdout  # git describe of the worktree at the earlier commit
    assert (tree / "src/x.py").read_text() == "" and (tree / "results/old/cells/a.json").exists()
    assert (tree / ".gpuwheels").resolve() == (checkout / ".gpuwheels").resolve()
    # The host kept warm: its part's records stay, though the tarball does not hold them.
    (tree / "results/old/cells/b.json").write_text(record("old"))
    again = subprocess.run(["bash", str(SIDE_SWEEP), "30", "old"], cwd=checkout, env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "kept from this host's last part" in again.stdout
    assert (tree / "results/old/cells/b.json").exists()
    shutil.rmtree(host / "old")
    (checkout / ".sidetree/old.tgz").unlink()
    missing = subprocess.run(["bash", str(SIDE_SWEEP), "30", "old"], cwd=checkout, env=env, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 7 and "no .sidetree/old.tgz" in missing.stderr


def test_side_sweep_waiting_only_names_the_side_runs_waiting_records_for_a_sweep_sh_that_predates_it(
        side: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """SWEEP_WAITING_ONLY=1 on a warm host: this checkout's `attnsweep status --waiting` finds the side tree's done
    warm-ups, and their records go to the side run's own sweep.sh as targets, before its options; with none waiting,
    nothing runs (exit 4)."""
    checkout, _ = side
    host, bin_dir = tmp_path_factory.mktemp("host"), tmp_path_factory.mktemp("bin")
    (bin_dir / "python3").write_text(f'#!/bin/bash\nexec {sys.executable} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "SIDETREE_DIR": str(host), "OUT": str(host), "SWEEP_WAITING_ONLY": "1",
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(SCRIPT.parents[2] / "src")}

    def side_sweep() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SIDE_SWEEP), "30", "old", "--config", "run=old", "repeats=2"],
                              cwd=checkout, env=env, capture_output=True, text=True, timeout=120)

    nothing = side_sweep()  # a fresh tree from the tarball: no warm-up there
    assert nothing.returncode == 4 and "no warm-up of old waits for its timed job" in nothing.stderr, nothing
    assert "sweep in" not in nothing.stdout
    cell = sweep.cell_path({"model": "small", "seq_len": 1024, "attn": "sdpa", "mode": "compiled", "kv_heads": 12,
                            "precision": "bf16", "optimizer": "adamw", "harness": "native"})
    warmup = host / f"old/results/old/warmup/{cell}/r2"
    (warmup / "cache").mkdir(parents=True)
    (warmup / "warmup.json").write_text("{}")
    done = side_sweep()
    assert done.returncode == 0, done.stderr
    assert "measuring only the 1 records whose warm-up is done" in done.stdout
    tree = host / "old"
    assert (f"sweep in {tree}: 30 old results/old/cells/{cell}/repeat-2.json --config run=old repeats=2"
            in done.stdout), done.stdout


def test_unpack_side_commits_on_the_branch_before_and_packs_the_side_run_again(
        side: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """A side call's tarball goes onto the branch the slim tree came from (the run is not in the slim tree), with
    unpack's check, and the side run's tarball is made again from it; back then replays the slim branch's commits
    onto that branch, side commits and all."""
    checkout, earlier = side
    outside = tmp_path_factory.mktemp("sidecall")
    host = outside / "host"
    with tarfile.open(checkout / ".sidetree/old.tgz") as tgz:
        tgz.extractall(host, filter="data")
    (host / "results/old/cells/b.json").write_text(record("old"))
    part = outside / "old.tgz"
    run(host, "tar", "czf", str(part), "results/old")
    out = run(checkout, "bash", str(SCRIPT), "unpack", "--side", str(part), "side part 1").stdout
    assert "side part 1" in out and not (checkout / "results/old").exists()  # the slim tree as it was
    assert run(checkout, "git", "log", "-1", "--format=%s", "main").stdout.strip() == "side part 1"
    assert run(checkout, "git", "show", "main:results/old/report.html").stdout == "<html>"  # kept
    assert run(checkout, "git", "cat-file", "-e", "main:results/old/cells/b.json", check=False).returncode == 0
    with tarfile.open(checkout / ".sidetree/old.tgz") as tgz:
        assert "./results/old/cells/b.json" in tgz.getnames()
    assert len(run(checkout, "git", "worktree", "list").stdout.splitlines()) == 1
    # A tarball of a call sent before that one was unpacked lacks b.json: refused.
    (host / "results/old/cells/b.json").unlink()
    (host / "results/old/cells/c.json").write_text(record("old"))
    run(host, "tar", "czf", str(part), "results/old")
    refused = run(checkout, "bash", str(SCRIPT), "unpack", "--side", str(part), "side part 2", check=False)
    assert refused.returncode == 1 and "results/old/cells/b.json" in refused.stderr, refused.stderr
    assert run(checkout, "git", "log", "-1", "--format=%s", "main").stdout.strip() == "side part 1"
    assert len(run(checkout, "git", "worktree", "list").stdout.splitlines()) == 1
    (checkout / "results/replay/cells/d.json").write_text("{}")
    run(checkout, *GIT, "add", "results")
    run(checkout, *GIT, "commit", "-qm", "part 1")
    run(checkout, "bash", str(SCRIPT), "back")
    assert (checkout / "results/old/cells/b.json").exists() and (checkout / "results/replay/cells/d.json").exists()
    assert (checkout / "src/x.py").read_text() == "newer code"


def test_slim_leaves_out_the_jobs_logs_and_back_takes_those_a_call_wrote_anew(checkout: Path) -> None:
    """The kept run's logs/ and benchmarks/ stay here (thousands of small files no call reads). A call brings back
    those of its jobs: a new job's, and one measured again, whose log the branch before has otherwise: after back
    the call's is there, and every log the call did not touch is as it was."""
    for rel in ("logs/cells/b.log", "logs/cells/e.log", "benchmarks/cells/b.tsv"):
        (checkout / "results/replay" / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / "results/replay" / rel).write_text("before")
    run(checkout, *GIT, "add", ".")
    run(checkout, *GIT, "commit", "-qm", "logs")
    out = run(checkout, "bash", str(SCRIPT), "slim", "replay").stdout
    assert "the limit is 64 MiB" in out
    assert not (checkout / "results/replay/logs").exists() and not (checkout / "results/replay/benchmarks").exists()
    for rel, text in {"logs/cells/b.log": "measured again", "logs/cells/c.log": "new", "cells/c.json": "{}"}.items():
        (checkout / "results/replay" / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / "results/replay" / rel).write_text(text)
    run(checkout, *GIT, "add", "results")
    run(checkout, *GIT, "commit", "-qm", "part 1")
    run(checkout, "bash", str(SCRIPT), "back")
    logs = checkout / "results/replay/logs/cells"
    assert (logs / "b.log").read_text() == "measured again" and (logs / "c.log").read_text() == "new"
    assert (logs / "e.log").read_text() == "before"
    assert (checkout / "results/replay/benchmarks/cells/b.tsv").read_text() == "before"
    assert run(checkout, "git", "status", "--porcelain").stdout.strip() == ""
    assert run(checkout, "git", "log", "-1", "--format=%s").stdout.strip() == "part 1"
