"""tools/minimal_loop.py, the harness-overhead baseline: runs on the CPU and prints its one greppable line."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "minimal_loop.py"


def run_loop(device: str, precision: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--seq-len", "64", "--attn", "sdpa",
                           "--batch-size", "4", "--mode", "eager", "--precision", precision, "--steps", "20",
                           "--window", "10", "--device", device], capture_output=True, text=True, timeout=300)


@pytest.mark.gpu
def test_minimal_loop_runs_on_cuda_as_named_on_the_command_line():
    """`--device cuda` (no index), as tools/gpu-host/overhead.sh calls it, with the study's fp16."""
    proc = run_loop("cuda", "fp16")
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.split("tokens_per_sec=")[1].split()[0]) > 0


def test_minimal_loop_prints_one_line_with_finite_throughput():
    proc = run_loop("cpu", "fp32")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minimal_loop "), proc.stdout
    kv = dict(field.split("=", 1) for field in lines[0].split()[1:])
    assert kv["model"] == "tiny" and kv["attn"] == "sdpa" and kv["seq_len"] == "64" and kv["batch"] == "4"
    assert kv["mode"] == "eager" and kv["precision"] == "fp32"
    tps = float(kv["tokens_per_sec"])
    assert math.isfinite(tps) and tps > 0
    assert float(kv["window_s"]) > 0
    assert math.isfinite(float(kv["first_loss"])) and math.isfinite(float(kv["last_loss"]))
