"""A cell's own compile cache (attempt.compile_cache): what a timed job finds there from its warm-up."""

from __future__ import annotations

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
from attnsweep.attempt import compile_cache
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

with compile_cache(sys.argv[1]):
    reset_graph_counters()
    x = torch.randn(16, requires_grad=True)
    torch.compile(loss)(x).backward()
    print(json.dumps(compile_cache_stats()))
"""


def compile_once(cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", COMPILE_ONCE, str(cache)], env=env, capture_output=True, text=True,
                         timeout=600)
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
