"""A cell's own compile cache (attempt.compile_cache): what a timed job finds there from its warm-up."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from attnsweep import attempt

SRC = Path(attempt.__file__).resolve().parents[1]

# A compiled forward and backward through a torch.autograd.Function (flash-attn 2's flash_attn_func is one), in a
# process of its own as a warm-up and a timed job are; prints the compile caches' counters.
COMPILE_ONCE = r"""
import json, sys
import torch
from attnsweep.attempt import compile_cache, compiler_processes
from attnsweep.training import compile_cache_stats, reset_graph_counters

class Sin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x.cos()

def loss(x):
    return Sin.apply(x * 2.0).sum()

with compile_cache(sys.argv[1]), compiler_processes(sys.argv[2] == "pool"):
    reset_graph_counters()
    x = torch.randn(16, requires_grad=True)
    torch.compile(loss)(x).backward()
    print(json.dumps(compile_cache_stats()))
"""


def compile_once(cache: Path, pool: bool = True) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # Two compile threads at least for the pool's side, whatever the machine: the threads must differ between runs.
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", COMPILE_ONCE, str(cache), "pool" if pool else "none"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_graph_with_an_autograd_function_is_loaded_from_the_cells_cache(tmp_path: Path) -> None:
    # Without the allowance AOTAutograd bypasses its cache for such a graph every time, and the timed job traces
    # and partitions forward and backward again although its warm-up did.
    warmup = compile_once(tmp_path)
    assert warmup["aot_autograd"].get("bypass", 0) == 0, warmup
    assert warmup["aot_autograd"].get("miss", 0) >= 1, warmup
    timed = compile_once(tmp_path)
    assert timed["aot_autograd"].get("hit", 0) >= 1 and timed["aot_autograd"].get("bypass", 0) == 0, timed


def test_a_timed_job_without_compiler_processes_still_hits_its_warm_ups_cache(tmp_path: Path) -> None:
    # The warm-up compiles with a pool of compiler processes, the timed job with none: the caches' keys must not
    # depend on that, or the timed job would compile again inside its measured run.
    warmup = compile_once(tmp_path, pool=True)
    assert warmup["fx_graph"].get("miss", 0) >= 1, warmup
    timed = compile_once(tmp_path, pool=False)
    assert timed["fx_graph"].get("hit", 0) >= 1 and timed["fx_graph"].get("miss", 0) == 0, timed
    assert timed["aot_autograd"].get("hit", 0) >= 1, timed


def test_compiler_processes_off_means_one_compile_thread_for_the_block_only() -> None:
    from torch._inductor import config

    before = config.compile_threads
    with attempt.compiler_processes(False):
        assert config.compile_threads == 1  # Inductor then starts no pool (AsyncCompile.warm_pool returns at once)
    assert config.compile_threads == before
    with attempt.compiler_processes(True):
        assert config.compile_threads == before


def test_the_timed_stage_measures_without_compiler_processes_and_the_warm_up_with_them(monkeypatch, tmp_path):
    from torch._inductor import config

    from attnsweep import cell
    from attnsweep.spec import CellSpec

    seen: dict[str, int | None] = {}

    def fake_measure(spec, batch_size, device, steps, hooks):
        seen["timed" if steps == spec.steps else "warm-up"] = config.compile_threads
        return attempt.AttemptResult("oom", "simulated")

    monkeypatch.setattr(attempt, "_measure", fake_measure)
    spec = CellSpec(model="tiny", attn="sdpa", mode="compiled", seq_len=32, precision="fp32", steps=40, window=4,
                    device="cpu", batch_size=2)
    warm = cell.warm_up(spec, tmp_path / "cache")
    assert warm.status == "oom"
    cell.timed_cell(spec, dataclasses.replace(warm, status="ok", batch_size=2), tmp_path / "cache")
    assert seen["timed"] == 1
    assert seen["warm-up"] != 1 or os.cpu_count() == 1, seen
