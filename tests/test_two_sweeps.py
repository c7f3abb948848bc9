"""tools/gpu-host/two-sweeps.sh: two sweeps on one host, the second in a patched copy, one GPU-lock folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools/gpu-host"
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]

pytestmark = pytest.mark.skipif(not (shutil.which("git") and shutil.which("taskset")), reason="needs git, taskset")

# Stand-ins for the GPU host's scripts: the sweep says where it ran, with what, and what it sees.
SETUP = 'echo setup >>"$OUT/setup.txt"\n'
SWEEP = """run=$2
echo "cwd $PWD"
echo "args ${*:2}"
echo "code $(cat src/code.txt)"
[ -L "results/$run/.gpulocks" ] && echo "locks $(readlink "results/$run/.gpulocks")"
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for rel, text in {"tools/gpu-host/two-sweeps.sh": (TOOLS / "two-sweeps.sh").read_text(),
                      "tools/gpu-host/setup.sh": SETUP, "tools/gpu-host/sweep.sh": SWEEP,
                      "src/code.txt": "old\n"}.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    subprocess.run([*GIT, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "."], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "start"], cwd=repo, check=True)
    (repo / "src/code.txt").write_text("new\n")
    (repo / "new.patch").write_text(subprocess.run(["git", "diff"], cwd=repo, capture_output=True, text=True).stdout)
    subprocess.run(["git", "checkout", "-q", "src/code.txt"], cwd=repo, check=True)
    (tmp_path / "out").mkdir()
    return repo


def two_sweeps(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "OUT": str(repo.parent / "out"), "TMPDIR": str(repo.parent)}
    return subprocess.run(["bash", "tools/gpu-host/two-sweeps.sh", "60", *args], cwd=repo, capture_output=True,
                          text=True, env=env)


def test_the_second_sweep_runs_patched_code_in_a_copy_sharing_the_first_ones_gpu_locks(checkout: Path) -> None:
    done = two_sweeps(checkout, "new.patch", "0", "0", "1", "0", "replay", "--config", "run=replay", "--",
                      "whole", "--config", "run=whole")
    assert done.returncode == 0, done.stderr
    out = checkout.parent / "out"
    a, b = (out / "replay.out").read_text(), (out / "whole.out").read_text()
    assert f"cwd {checkout}\n" in a and "args replay --config run=replay gpus=[0]" in a and "code old" in a
    assert (f"cwd {checkout.parent}/two-sweeps-b" in b and "args whole --config run=whole gpus=[1]" in b
            and "code new" in b)
    assert f"locks {checkout}/results/replay/.gpulocks" in b
    assert (out / "setup.txt").read_text() == "setup\n"  # once, before both
    assert (checkout / "src/code.txt").read_text() == "old\n"  # the checkout's code is not patched


def test_overlapping_gpus_and_a_patch_that_does_not_apply_are_refused(checkout: Path) -> None:
    overlap = two_sweeps(checkout, "-", "0,1", "0", "1", "0", "a", "--", "b")
    assert overlap.returncode == 2 and "GPU 1 is in both sweeps' lists" in overlap.stderr
    (checkout / "bad.patch").write_text("not a patch\n")
    bad = two_sweeps(checkout, "bad.patch", "0", "0", "1", "0", "a", "--", "b")
    assert bad.returncode == 1 and "bad.patch does not apply" in bad.stderr
    missing = two_sweeps(checkout, "-", "0", "0", "1", "0", "a")
    assert missing.returncode == 2
