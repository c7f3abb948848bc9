"""tools/gpu-host/ab-code.sh: the checkout's cell code against a candidate copy of src/, cell by cell (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from attnsweep import codestamp

ROOT = Path(__file__).resolve().parents[1]
# The host's setup.sh installs wheels; here the test's interpreter has them, and src/ goes on the path as there.
SETUP = 'export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"\n'
CELL = ["--model", "tiny", "--attn", "sdpa", "--mode", "eager", "--seq-len", "32", "--batch-size", "2", "--steps", "6",
        "--window", "3", "--device", "cpu", "--no-profile"]


def test_each_round_measures_the_checkout_then_the_candidate(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "tools/gpu-host").mkdir(parents=True)
    shutil.copy(ROOT / "tools/gpu-host/ab-code.sh", checkout / "tools/gpu-host")
    (checkout / "tools/gpu-host/setup.sh").write_text(SETUP)
    shutil.copytree(ROOT / "src", checkout / "src", ignore=shutil.ignore_patterns("__pycache__"))
    candidate = checkout / ".fa4wheels/candidate/src"
    shutil.copytree(checkout / "src", candidate)
    probe = candidate / "attnsweep/windowprobe.py"
    probe.write_text(probe.read_text() + "\n# the candidate's change\n")
    python = tmp_path / "bin"
    python.mkdir()
    (python / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # the host calls python3
    (python / "python3").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PATH": f"{python}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "tools/gpu-host/ab-code.sh", "600", "1", "out", str(candidate), *CELL],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = {side: json.loads((checkout / f"out/{side}-1.json").read_text()) for side in ("base", "candidate")}
    codes = {side: r["env"]["code"]["source_sha256"] for side, r in records.items()}
    assert codes["base"] == codestamp.source_hash(checkout / "src/attnsweep")
    assert codes["candidate"] == codestamp.source_hash(candidate / "attnsweep") != codes["base"]
    lines = (checkout / "out/ab.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["base-1", "candidate-1"], lines
    assert all(" exit 0: ok tokens/s " in line for line in lines), lines


def test_a_candidate_that_is_not_a_copy_of_src_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(ROOT / "tools/gpu-host/ab-code.sh"), "60", "1", str(tmp_path / "out"),
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "is not a copy of src/" in done.stderr
    assert not (tmp_path / "out").exists()
