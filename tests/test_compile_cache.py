"""A cell's own compile cache (attempt.compile_cache): what a timed job finds there from its warm-up; and when a
compiling warm-up takes its run seat (attempt._run_seat)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def _env() -> dict[str, str]:
    """This environment, with the package's source importable in a child process."""
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def compile_once(cache: Path, pool: bool = True) -> dict:
    env = _env()
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


def test_compiler_processes_with_compile_seats_share_the_cores(monkeypatch) -> None:
    from torch._inductor import config

    monkeypatch.setenv(attempt.COMPILE_THREADS_ENV, "3")
    with attempt.compiler_processes(True):
        assert config.compile_threads == 3
    with attempt.compiler_processes(False):
        assert config.compile_threads == 1


# A compiled forward and backward in the cell's compile cache, printing the compile-end callbacks' triggers seen by
# the end of the forward and by the end of the backward.
FORWARD_THEN_BACKWARD = r"""
import json, sys
import torch
from torch._dynamo.callback import callback_handler
from attnsweep.attempt import compile_cache

triggers = []
callback_handler.register_end_callback(lambda args: triggers.append(args.callback_trigger.name))
with compile_cache(sys.argv[1]):
    x = torch.randn(16, requires_grad=True)
    y = torch.compile(lambda x: (x * 2.0).sin().sum())(x)
    forward = list(triggers)
    y.backward()
print(json.dumps({"forward": forward, "all": triggers}))
"""


def test_the_backward_is_compiled_before_the_compiled_code_first_runs(tmp_path: Path) -> None:
    # By default AOTAutograd compiles the backward at the first backward (a LAZY_BACKWARD compilation), when the
    # forward's activations are on the GPU: a warm-up would then compile holding its run seat.
    out = subprocess.run([sys.executable, "-c", FORWARD_THEN_BACKWARD, str(tmp_path)], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"forward": ["DYNAMO"], "all": ["DYNAMO"]}, seen


def _attempt(tmp_path: Path, mode: str, env: dict[str, str]) -> tuple[subprocess.Popen, Path, Path]:
    """A warm-up's attempt at a tiny cell in its own process (`python -m attnsweep.attempt`), as a sweep's warm-up
    runs one: (the process, its result file, the cell's compile cache)."""
    from attnsweep.spec import CellSpec

    spec = CellSpec(model="tiny", attn="sdpa", mode=mode, seq_len=32, precision="fp32", steps=4, window=2,
                    device="cpu", batch_size=2, profile=False)
    folder = tmp_path / mode
    folder.mkdir()
    args, out, cache = folder / "args.json", folder / "result.json", folder / "cache"
    args.write_text(json.dumps({"spec": spec.as_json(), "batch_size": 2, "device": "cpu", "steps": 4,
                                "cache_dir": str(cache)}))
    proc = subprocess.Popen([sys.executable, "-m", "attnsweep.attempt", str(args), str(out)], env=env)
    return proc, out, cache


def _compiled(cache: Path) -> bool:
    """Whether AOTAutograd has saved the forward and backward it compiled into the cache (both compiled by then)."""
    folder = cache / "inductor" / "aotautograd"
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


@pytest.mark.parametrize(("seats", "seat_file"), [("1", "gpu-0.warmup-0"), ("0", "gpu-0.timed")],
                         ids=["one-run-seat", "the-timed-jobs-seat"])
def test_a_compiling_warm_up_takes_its_run_seat_once_compiled_and_an_eager_one_at_once(
        tmp_path: Path, seats: str, seat_file: str) -> None:
    """With compile seats (gpuslots.warmup_seats), an attempt compiles while another warm-up holds the GPU's one
    run seat (or, with run seats 0, while a timed job holds the GPU), and runs its compiled code only once it has
    the seat; an eager one waits for it before anything."""
    import time

    locks = tmp_path / "locks"
    locks.mkdir()
    env = {**_env(), attempt.RUN_SEATS_ENV: seats, attempt.WORKER_ENV[0]: str(locks), attempt.WORKER_ENV[1]: "0"}
    for mode in ("compiled", "eager"):
        seat = os.open(locks / seat_file, os.O_CREAT | os.O_RDWR)
        fcntl.flock(seat, fcntl.LOCK_EX)  # the seat, held by another warm-up or the timed job
        started = time.monotonic()
        proc, out, cache = _attempt(tmp_path, mode, env)
        try:
            deadline = started + 240
            while mode == "compiled" and not _compiled(cache):
                assert proc.poll() is None, f"exited {proc.returncode} without its run seat"
                assert time.monotonic() < deadline, "not compiled within 240 s"
                time.sleep(0.1)
            compiled_after = time.monotonic() - started
            time.sleep(5)
            assert proc.poll() is None and not out.exists(), mode  # compiled (or not begun): waiting for the seat
            if mode == "compiled":
                time.sleep(7)  # a wait longer than the process's start: in its first step it would show
            os.close(seat)
            assert proc.wait(timeout=300) == 0
            result = json.loads(out.read_text())
            assert result["outcome"] == "ok", result
            if mode == "compiled":
                # The wait is kept beside the first step's time, not in it: the cold compilation is the compiler's.
                compile_ = result["measurement"]["compile"]
                assert compile_["run_seat_wait_s"] >= 11.5, compile_
                assert compile_["first_step_s"] < compiled_after + 2, (compile_, compiled_after)
        finally:
            proc.kill()


def test_an_attempt_gives_its_gpu_memory_back_before_its_run_seat(tmp_path: Path, monkeypatch) -> None:
    """A warm-up's attempt (run seats 0: the GPU's timed lock) empties the allocator's cache, after collecting what
    the attempt left in reference cycles, while it still holds the seat: the timed job that takes the seat next
    allocates on a GPU without this process's memory."""
    import gc
    import weakref

    from attnsweep.spec import CellSpec

    locks = tmp_path / "locks"
    locks.mkdir()
    for key, value in {attempt.RUN_SEATS_ENV: "0", attempt.WORKER_ENV[0]: str(locks),
                       attempt.WORKER_ENV[1]: "0"}.items():
        monkeypatch.setenv(key, value)

    class Held:  # what an attempt leaves: a model and an optimizer that refer to each other
        def __init__(self) -> None:
            self.cycle = self

    left: list[weakref.ref] = []

    def fake_measure(*args, **kwargs) -> attempt.AttemptResult:
        left.append(weakref.ref(Held()))
        return attempt.AttemptResult("ok", None)

    def seat_held() -> bool:
        fd = os.open(locks / "gpu-0.timed", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    emptied: list[tuple[bool, bool]] = []
    monkeypatch.setattr(attempt, "_measure", fake_measure)
    monkeypatch.setattr(attempt.torch.cuda, "empty_cache", lambda: emptied.append((left[0]() is None, seat_held())))
    spec = CellSpec(model="tiny", attn="sdpa", mode="eager", seq_len=32, precision="fp32", steps=4, window=2,
                    device="cuda", batch_size=2, profile=False)
    gc.disable()  # the cycle is collected by the attempt, not by chance
    try:
        result = attempt.measure(spec, 2, attempt.torch.device("cuda"), steps=4)
    finally:
        gc.enable()
    assert result.outcome == "ok"
    assert emptied == [(True, True)]  # collected, then emptied, with the seat still held
    assert not seat_held()  # and given up afterwards
