"""envs/setup.sh run again on an environment that has everything: one line per step, no pip output, nothing installed.

The environment is the one running these tests (a CI run's fresh .venv), behind a stand-in .venv/bin/python in a
copy of the checkout's setup files; the stamp of the editable install is written as setup.sh would have.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pinned(name: str) -> str:
    """The version envs/setup.sh pins for `name` (torch==2.14.1 -> 2.14.1)."""
    for line in (REPO / "envs" / "setup.sh").read_text().splitlines():
        if line.startswith(f'{name.upper()}="{name}=='):
            return line.split("==", 1)[1].rstrip('"')
    raise AssertionError(f"no {name} pin in envs/setup.sh")


def test_setup_again_prints_one_line_per_step(tmp_path: Path) -> None:
    installed = {n: importlib.metadata.version(n).split("+")[0] for n in ("torch", "torchvision", "mosaicml")}
    wanted = {"torch": pinned("torch"), "torchvision": pinned("torchvision"), "mosaicml": "0.32.1"}
    if installed != wanted:
        # setup.sh would install into this interpreter's environment: not what a test may do.
        pytest.fail(f"this environment is not what envs/setup.sh makes ({installed} != {wanted}): run it first")
    shutil.copytree(REPO / "envs", tmp_path / "envs")
    shutil.copy2(REPO / "pyproject.toml", tmp_path)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    digest = hashlib.sha256((tmp_path / "pyproject.toml").read_bytes()).hexdigest()
    (tmp_path / ".venv" / ".attnsweep-pyproject.sha256").write_text(f"{digest}  pyproject.toml\n")

    proc = subprocess.run(["bash", "envs/setup.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, "\n".join(lines)
    assert all(line.startswith(("setup:", "install-composer:")) for line in lines), "\n".join(lines)
    assert len(lines) <= 7, "\n".join(lines)  # one per step: torch, the package, Composer (3), SLURM, done
    assert any("already installed" in line for line in lines)
    assert (tmp_path / ".venv" / "setup.log").is_file()
