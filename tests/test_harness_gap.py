"""tools/harness_gap.py on the CPU: the window is found where the script assumes, and the host probe's records come
out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--seq-len", "32", "--attn", "sdpa", "--batch-size", "2", "--precision", "fp32",
        "--steps", "8", "--window", "3"]


@pytest.mark.slow
def test_host_probe_on_cpu(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/harness_gap.py"), "--harness", "native", "--probe", "host", *TINY,
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "gap-native-host.json").read_text())
    assert record["harness"] == "native" and record["cell"]["window"] == 3
    assert len(record["window_step_ms"]) == 3 and all(ms > 0 for ms in record["window_step_ms"])
    assert record["gc_pauses_in_window"]["count"] == len(record["gc_pauses_list"])
    profile = (tmp_path / "gap-native-host.txt").read_text()
    assert profile.startswith("cProfile over the last 3 steps (native)")
    # cProfile ran over the training steps (the harness's step function), not over setup or cleanup.
    assert "training.py" in profile and "rmtree" not in profile  # TrainStep, the step every harness runs


def test_gpu_gaps_from_a_trace(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from harness_gap import gpu_busy_and_gaps
    finally:
        sys.path.pop(0)
    events = [  # two overlapping kernels, a 50 us gap, a copy, a CPU op that must not count
        {"cat": "kernel", "name": "a", "ts": 0, "dur": 100},
        {"cat": "kernel", "name": "b", "ts": 50, "dur": 100},
        {"cat": "gpu_memcpy", "name": "c", "ts": 200, "dur": 10},
        {"cat": "cpu_op", "name": "d", "ts": 0, "dur": 1000},
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    out = gpu_busy_and_gaps(trace, top=5)
    assert out["busy_us"] == 160 and out["idle_us"] == 50 and out["span_us"] == 210
    assert out["largest_gaps"] == [{"us": 50, "after": "b", "before": "c"}]
