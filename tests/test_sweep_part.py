"""tools/gpu-host/sweep.sh: one part of a sweep, packed into $OUT at its end and after each new cell record."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from snakemake.cli import get_argument_parser

from attnsweep import sweep

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools/gpu-host"

pytestmark = pytest.mark.skipif(not all(map(shutil.which, ("tar", "timeout", "renice", "pkill"))),
                                reason="needs tar, timeout, renice, pkill")

# Stand-ins for the GPU host: no wheels to install, one GPU whose sampler prints a row a second.
SETUP = ":\n"
NVIDIA_SMI = """#!/bin/bash
case "$*" in
*-L*) echo "GPU 0: stand-in" ;;
*-lms*) while echo "row"; do sleep 1; done ;;
*) echo "stand-in, 1, 2, 3, 4" ;;
esac
"""
# A sweep that finishes one cell at once and another a second later, then measures a third until it is stopped.
SNAKEMAKE_LONG = """#!/bin/bash
mkdir -p results/demo/cells
for c in a b; do echo '{}' >results/demo/cells/.$c; mv results/demo/cells/.$c results/demo/cells/$c.json; sleep 1; done
echo "2 of 3 steps done"
sleep 100
"""
# A sweep that measures a stale record again: removed when its cell starts, written anew when it ends.
SNAKEMAKE_REPLACE = """#!/bin/bash
mkdir -p results/demo/cells
echo '{"code": "old"}' >results/demo/cells/a.json
sleep 12
rm results/demo/cells/a.json
sleep 12
echo '{"code": "new"}' >results/demo/cells/.a && mv results/demo/cells/.a results/demo/cells/a.json
sleep 100
"""
SNAKEMAKE_SHORT = """#!/bin/bash
mkdir -p results/demo/cells && echo '{}' >results/demo/cells/a.json && echo "1 of 1 steps done"
"""


def checkout(tmp_path: Path, snakemake: str) -> tuple[Path, dict[str, str]]:
    repo, bin_, out = tmp_path / "repo", tmp_path / "bin", tmp_path / "out"
    for path, text in {repo / "tools/gpu-host/sweep.sh": (TOOLS / "sweep.sh").read_text(),
                       repo / "tools/gpu-host/waiting-targets.sh": (TOOLS / "waiting-targets.sh").read_text(),
                       repo / "tools/gpu-host/setup.sh": SETUP,
                       bin_ / "nvidia-smi": NVIDIA_SMI, bin_ / "snakemake": snakemake}.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    out.mkdir()
    return repo, {"PATH": f"{bin_}:/usr/bin:/bin", "OUT": str(out), "HOME": str(tmp_path)}


def members(tgz: Path) -> dict[str, bytes]:
    with tarfile.open(tgz) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def wall_line(files: dict[str, bytes]) -> str:
    (wall,) = [text for name, text in files.items() if name.startswith("results/demo/wall-")]
    return wall.decode()


def stopped_once(repo: Path, env: dict[str, str], packed: Callable[[dict[str, bytes]], bool]) -> dict[str, bytes]:
    """Run a part until $OUT/demo.tgz holds what `packed` looks for (60 s at most), then kill it as the device tool
    stops a call at its time limit; what $OUT/demo.tgz holds then."""
    tgz = Path(env["OUT"]) / "demo.tgz"
    part = subprocess.Popen(["bash", "tools/gpu-host/sweep.sh", "120", "demo"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tgz.exists() and packed(members(tgz))):
            time.sleep(0.5)
    finally:
        os.killpg(part.pid, signal.SIGKILL)
        part.wait()
    assert part.returncode == -signal.SIGKILL  # stopped from outside, not at its own end
    return members(tgz)


def test_a_part_stopped_from_outside_still_leaves_the_records_it_finished_in_out(tmp_path: Path) -> None:
    repo, env = checkout(tmp_path, SNAKEMAKE_LONG)
    files = stopped_once(repo, env, lambda files: "results/demo/cells/b.json" in files)
    assert {"results/demo/cells/a.json", "results/demo/cells/b.json"} <= files.keys()
    assert wall_line(files).startswith("exit running wall_s ")  # the part so far, as report.py reads it


def test_a_record_measured_again_is_packed_although_the_count_of_records_is_the_same(tmp_path: Path) -> None:
    repo, env = checkout(tmp_path, SNAKEMAKE_REPLACE)
    files = stopped_once(repo, env, lambda files: b"new" in files.get("results/demo/cells/a.json", b""))
    assert files["results/demo/cells/a.json"] == b'{"code": "new"}\n'


def test_a_part_that_ends_leaves_its_own_packing_only(tmp_path: Path) -> None:
    repo, env = checkout(tmp_path, SNAKEMAKE_SHORT)
    done = subprocess.run(["bash", "tools/gpu-host/sweep.sh", "60", "demo"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 of 1 steps done" in done.stdout
    assert sorted(p.name for p in Path(env["OUT"]).iterdir()) == ["demo.tgz"]
    files = members(Path(env["OUT"]) / "demo.tgz")
    assert "results/demo/cells/a.json" in files
    assert wall_line(files).startswith("exit 0 wall_s ")


# A sweep that finishes a cell, then ends while the snapshot it set off (10 s later) is still packing.
SNAKEMAKE_ENDS_WHILE_PACKING = """#!/bin/bash
mkdir -p results/demo/cells && echo '{}' >results/demo/cells/a.json && sleep 13
"""


def test_a_snapshot_packing_when_the_part_ends_leaves_no_archive_behind(tmp_path: Path) -> None:
    """The snapshot loop, stopped by the part's end while its tar runs, removes the archive it had not renamed yet:
    $OUT holds the part's own packing only."""
    repo, env = checkout(tmp_path, SNAKEMAKE_ENDS_WHILE_PACKING)
    # A tar that takes 6 s longer over a snapshot, so the part ends inside it (10 s to 16 s against 13 s).
    tar = Path(env["PATH"].split(":")[0]) / "tar"
    tar.write_text(f'#!/bin/bash\n{shutil.which("tar")} "$@"; code=$?\n'
                   '[[ "$*" != *.snapshot.tgz* ]] || sleep 6\nexit $code\n')
    tar.chmod(0o755)
    done = subprocess.run(["bash", "tools/gpu-host/sweep.sh", "60", "demo"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in Path(env["OUT"]).iterdir()) == ["demo.tgz"]
    assert "results/demo/cells/a.json" in members(Path(env["OUT"]) / "demo.tgz")


# A sweep that only says what it was asked to make.
SNAKEMAKE_ARGS = """#!/bin/bash
printf '%s\\n' "$@" >args.txt
"""


def test_a_part_that_only_measures_names_the_waiting_records_as_its_targets(tmp_path: Path) -> None:
    """SWEEP_WAITING_ONLY: the records whose warm-up is done and whose timed job has not run (`attnsweep status
    --waiting`, run by the host's python3) follow the part's own snakemake arguments; with none, nothing runs."""
    repo, env = checkout(tmp_path, SNAKEMAKE_ARGS)
    python3 = Path(env["PATH"].split(":")[0]) / "python3"
    python3.write_text(f"#!/bin/bash\nexec {sys.executable} \"$@\"\n")
    python3.chmod(0o755)
    env = {**env, "SWEEP_WAITING_ONLY": "1", "PYTHONPATH": str(REPO / "src")}
    (repo / "results/demo").mkdir(parents=True)
    nothing = subprocess.run(["bash", "tools/gpu-host/sweep.sh", "60", "demo", "--config", "run=demo"], cwd=repo,
                             env=env, capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 4 and "no warm-up of demo waits for its timed job" in nothing.stderr, nothing
    assert not (repo / "args.txt").exists() and not list(Path(env["OUT"]).iterdir())
    cell = sweep.cell_path({"model": "small", "seq_len": 1024, "attn": "sdpa", "mode": "compiled", "kv_heads": 12,
                            "precision": "bf16", "optimizer": "adamw", "harness": "native"})
    for repeat in ("r1", "r2"):
        (repo / f"results/demo/warmup/{cell}/{repeat}/cache").mkdir(parents=True)
        (repo / f"results/demo/warmup/{cell}/{repeat}/warmup.json").write_text("{}")
    done = subprocess.run(["bash", "tools/gpu-host/sweep.sh", "60", "demo", "--config", "run=demo"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "measuring only the 2 records whose warm-up is done" in done.stdout
    # As Snakemake reads them: the records are its targets, not more of --config's values.
    parsed = get_argument_parser().parse_args((repo / "args.txt").read_text().splitlines())
    assert sorted(parsed.targets) == [f"results/demo/cells/{cell}/cell.json",
                                      f"results/demo/cells/{cell}/repeat-2.json"]
    assert parsed.config == ["run=demo"]
