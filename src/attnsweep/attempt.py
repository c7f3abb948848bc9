"""One attempt: build the model, train it at one batch size, profile one step; in this process, or in a fresh one
(`python -m attnsweep.attempt ARGS.json OUT.json`).

Out-of-memory is an outcome here, not a crash: the cell's batch search reads it. Anything else that goes wrong is
an `error` with the end of its traceback, so the cell can say what broke.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from . import attention, preload
from .data import synthetic_batches
from .kernels import profile_step
from .model import GPT
from .spec import CellSpec
from .training import Harness, StepHooks, TrainSpec, compile_cache_stats, private_compile_cache, scoped_env
from .vocabulary import COMPILED_MODES
from .windowprobe import WindowProbe

N_DATA_BATCHES = 4
OOM_MARKERS = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")


@dataclass
class Measurement:
    """What one attempt that ran measured (the record's fields of the same names)."""

    window_tokens_per_sec: float
    step_times_s: list[float]
    params: dict
    peak_memory_bytes: int | None
    compile: dict
    loss: dict
    kernels: dict | None
    harness_extra: dict
    phases_s: dict[str, float]  # host wall time: setup (device, model, data), train, profile
    window_conditions: dict | None = None  # windowprobe.WindowProbe over the measured window


@dataclass
class AttemptResult:
    """The outcome of one attempt: ok, oom, diverged (the loss became NaN/inf) or error, and what it measured."""

    outcome: str
    detail: str | None = None
    measurement: Measurement | None = None
    seconds: float = 0.0  # the attempt's wall time, process start included when it ran in its own process
    # Taken from the cell's search log (searchlog.py), not run here: no measurement, and no compile cache filled.
    from_log: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> AttemptResult:
        m = data.get("measurement")
        return cls(**{**data, "measurement": Measurement(**m) if m else None})


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or any(m in str(e) for m in OOM_MARKERS)


def harness(name: str) -> Harness:
    """The training function of a harness (`native` or `composer`); Composer is imported only when asked for."""
    if name == "composer":
        from .composer_harness import train_composer

        return train_composer
    from .native_harness import train_native

    return train_native


@contextlib.contextmanager
def compile_cache(cache_dir: str | os.PathLike | None) -> Iterator[None]:
    """The cell's own compile cache: a fresh private one (a cold compilation), or the folder its warm-up filled.
    Never shared between cells: the FX-graph cache's key misses SDPA's backend choice (docs/protocol.md, Pitfalls)."""
    with _cacheable_autograd_functions(), _backward_compiled_with_forward():
        if cache_dir is None:
            with private_compile_cache():
                yield
            return
        cache = Path(cache_dir)
        with scoped_env(TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton")):
            yield


@contextlib.contextmanager
def _cacheable_autograd_functions() -> Iterator[None]:
    """Let AOTAutograd's cache keep graphs that call a torch.autograd.Function (flash-attn 2's flash_attn_func is
    one). By default it bypasses them, because its key does not hash the Function's code: a timed job would then
    trace and partition forward and backward again although its warm-up compiled them. That cannot serve stale code
    here: the cache is the cell's own, filled by its warm-up from the same code (a warm-up reruns, its cache
    deleted, when the code changes)."""
    from torch._functorch import config

    if not hasattr(config, "autograd_cache_allow_custom_autograd_functions"):
        yield
        return
    with config.patch(autograd_cache_allow_custom_autograd_functions=True):
        yield


@contextlib.contextmanager
def _backward_compiled_with_forward() -> Iterator[None]:
    """AOTAutograd compiles the backward with the forward, before the compiled code first runs, not at the first
    backward (its default, lazily): so a warm-up has compiled everything before it needs its memory (run_seat). The
    graphs and so the kernels are the same either way (Inductor's FX-graph cache hits across the two), but the
    setting is in AOTAutograd's cache key: every run sets it, so a timed job loads what its warm-up compiled."""
    from torch._functorch import config

    if not hasattr(config, "force_non_lazy_backward_lowering"):
        yield
        return
    with config.patch(force_non_lazy_backward_lowering=True):
        yield


# Set by `attnsweep warmup` for the processes that run its GPU work (gpuslots.gpu_worker).
WORKER_ENV = ("ATTNSWEEP_GPU_LOCKS", "ATTNSWEEP_GPU_DEVICE")
# Set by `attnsweep warmup` with compile seats (gpuslots.warmup_seats): how many run seats its GPU has, which its
# processes take once compiled, and the compiler processes each may start.
RUN_SEATS_ENV, COMPILE_THREADS_ENV = "ATTNSWEEP_RUN_SEATS", "ATTNSWEEP_COMPILE_THREADS"


@contextlib.contextmanager
def _run_seat(compiled: bool) -> Iterator[Callable[[], None] | None]:
    """With compile seats, a warm-up's run seat (gpuslots.run_seat): taken at once in eager mode; compiled, yields
    what takes it, for the harness to call at the end of the model's first compilation (StepHooks.compiled). Yields
    None otherwise."""
    seats, (lock_dir, device_id) = os.environ.get(RUN_SEATS_ENV), (os.environ.get(k) for k in WORKER_ENV)
    if not (seats and lock_dir and device_id):
        yield None
        return
    from .gpuslots import run_seat

    with run_seat(lock_dir, device_id, int(seats)) as take:
        if not compiled:
            take()
            yield None
        else:
            yield take


def _as_warmup_worker() -> contextlib.AbstractContextManager:
    """A warm-up's GPU work registers on its GPU, so that a timed cell there stops it while it measures."""
    lock_dir, device_id = (os.environ.get(k) for k in WORKER_ENV)
    if not lock_dir or not device_id:
        return contextlib.nullcontext()
    from .gpuslots import gpu_worker

    return gpu_worker(lock_dir, device_id)


@contextlib.contextmanager
def compiler_processes(allowed: bool) -> Iterator[None]:
    """Inductor's pool of compiler processes, or none (`allowed` False): compilation, if any, in this process.

    A timed job loads what its warm-up compiled, yet Inductor starts its pool at the first compilation all the same
    (torch._dynamo.backends.inductor: maybe_warm_pool): a helper process that imports torch and forks a worker per
    core, a few seconds before the measured window. On the GPU host the timed jobs' windows had about one other core
    busy (window_conditions: 0.7-1.4 s of other processes' CPU a second of window in a one-GPU sweep; under 0.1 s in
    the cold path, whose pool had long been idle), which this accounts for. The number of compile threads is not part
    of the compile caches' keys (Inductor's config leaves `compile_threads` out of them): the cache is hit either
    way. With compile seats a warm-up's pool has the processes its job was given (COMPILE_THREADS_ENV): many
    compile at once, and a pool of one per core each would fill the host's memory."""
    threads = os.environ.get(COMPILE_THREADS_ENV) if allowed else "1"
    if not threads:
        yield
        return
    from torch._inductor import config

    with config.patch(compile_threads=int(threads)):
        yield


def measure(
    spec: CellSpec, batch_size: int, device: torch.device, *, steps: int | None = None,
    cache_dir: str | os.PathLike | None = None, hooks: StepHooks = StepHooks(), compiler_pool: bool = True,
) -> AttemptResult:
    """Build, train (spec.steps, or `steps` for a warm-up) and profile at `batch_size`, in this process; with
    `compiler_pool` False, without Inductor's compiler processes (a timed job, whose cache its warm-up filled)."""
    t0 = time.perf_counter()
    waits: list[float] = []
    with (compile_cache(cache_dir), compiler_processes(compiler_pool), _as_warmup_worker(),
          _run_seat(spec.mode in COMPILED_MODES) as take, attention.backend_scope(spec.attn)):
        if take is not None:
            hooks = dataclasses.replace(hooks, compiled=lambda: waits.append(take()))
        result = _measure(spec, batch_size, device, steps or spec.steps, hooks)
        _free_gpu_memory(device)
    if waits and result.measurement is not None:
        _take_out_wait(result.measurement, sum(waits))
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _free_gpu_memory(device: torch.device) -> None:
    """What an attempt held on the GPU (its model, optimizer and batches, some of them in reference cycles) given
    back to the driver, while the attempt's run seat is still held: released first, the seat's next holder (with run
    seats 0, a timed job) would allocate beside this process's cached memory. On an H100 (80 GB, a 45 GiB cap) six
    timed GPT-2 medium eager jobs ran out of memory at the batch their warm-up had fitted, another process holding
    40 GiB."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _take_out_wait(m: Measurement, wait_s: float) -> None:
    """The first step's time without the wait for a run seat inside it (between the end of its compilation and its
    compiled code's first run): the cold compilation a record reports is the compiler's, not the queue's; the wait
    is kept beside it."""
    m.compile["first_step_s"] -= wait_s
    m.step_times_s[0] -= wait_s
    m.compile["run_seat_wait_s"] = round(wait_s, 3)


def _measure(spec: CellSpec, batch_size: int, device: torch.device, steps: int,
             hooks: StepHooks) -> AttemptResult:
    # Host wall time of each phase (phases_s in the record): where a cell's time goes besides the timed steps.
    t_setup = time.perf_counter()
    torch.manual_seed(spec.seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.empty(1, device=device)  # the allocator calls below fail on a device this process has not touched
        if spec.memory_cap_gib is not None:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, spec.memory_cap_gib * 2**30 / total), device)
        torch.cuda.reset_peak_memory_stats(device)
    cfg = spec.model_config
    window = min(spec.window, steps)
    compiled = spec.mode in COMPILED_MODES
    model = result = batches = None
    probe = WindowProbe(device)
    try:
        # Built on the device: initializing hundreds of millions of weights on the host takes seconds more.
        with torch.device(device):
            model = GPT(cfg, attn=spec.attn)
        params = {"total": model.num_params(), "non_embedding": model.num_params(non_embedding=True)}
        batches = synthetic_batches(vocab_size=cfg.vocab_size, batch_size=batch_size, seq_len=spec.seq_len,
                                    n_batches=N_DATA_BATCHES, device=device, seed=spec.seed)
        tspec = TrainSpec(steps=steps, window=window, precision=spec.precision, optimizer=spec.optimizer,
                          mode=spec.mode, fullgraph=attention.get(spec.attn).fullgraph, device=device,
                          hooks=dataclasses.replace(hooks, before_window=probe.chain(hooks.before_window),
                                                    after_window=probe.chain_end(hooks.after_window)))
        t_train = time.perf_counter()
        result = harness(spec.harness)(model, batches, tspec, batch_size * spec.seq_len)
        window_conditions = probe.stop()
        t_profile = time.perf_counter()
        caches = compile_cache_stats() if compiled else None  # before profiling compiles more
        kernels = profile_step(result.profile_step, device) if spec.profile and result.profile_step else None
        t_end = time.perf_counter()
    except Exception as e:
        if is_oom(e):
            return AttemptResult("oom", str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
        tb = traceback.format_exc().strip().splitlines()
        return AttemptResult("error", " | ".join(tb[-6:])[:2000])
    finally:
        probe.detach()
        # Free what this attempt held before the next one (in-process on the CPU); on a GPU, measure() also empties
        # the allocator's cache, once the harness's result is gone too (_free_gpu_memory).
        del model, batches
    losses = result.losses
    # Mean of the first and last few steps: single-step losses on a small pool of batches are noisy.
    k = max(1, min(5, len(losses) // 4))
    start, end = sum(losses[:k]) / k, sum(losses[-k:]) / k
    finite = result.nonfinite_step is None
    measurement = Measurement(
        window_tokens_per_sec=result.window_tokens_per_sec,
        step_times_s=result.step_times_s,
        params=params,
        peak_memory_bytes=result.peak_memory_bytes,
        compile={
            "compiled": compiled, "fullgraph": tspec.fullgraph if compiled else None,
            "graphs": result.graphs, "graph_breaks": result.graph_breaks,
            "break_reasons": result.break_reasons[:10], "first_step_s": result.first_step_s,
            "cudagraphs": result.cudagraphs, "caches": caches,
        },
        loss={
            "start": start if finite else None, "end": end if finite else None, "fell": finite and end < start,
            "nonfinite_step": result.nonfinite_step,
            "values": [v if v == v and abs(v) != float("inf") else None for v in losses],
        },
        kernels=kernels,
        harness_extra={"harness": result.harness, **result.extra},
        # train: the harness's whole run (compilation in its first step, every step, its own bookkeeping).
        phases_s={"setup": t_train - t_setup, "train": t_profile - t_train, "profile": t_end - t_profile},
        window_conditions=window_conditions,
    )
    if not finite:
        return AttemptResult("diverged", f"loss became non-finite at step {result.nonfinite_step}", measurement)
    return AttemptResult("ok", None, measurement)


def run_attempt(
    spec: CellSpec, batch_size: int, device: torch.device, *, isolate: bool, steps: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> AttemptResult:
    """One attempt, in a fresh process if `isolate` (on a GPU an out-of-memory error can leave CUDA unusable, so a
    batch search tries each size in its own process), else in this one."""
    if not isolate:
        return measure(spec, batch_size, device, steps=steps, cache_dir=cache_dir)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attnsweep-attempt-") as tmp:
        args_path, out_path = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_path.write_text(json.dumps({"spec": spec.as_json(), "batch_size": batch_size, "device": str(device),
                                         "steps": steps, "cache_dir": None if cache_dir is None else str(cache_dir)}))
        argv = [str(args_path), str(out_path)]
        # In a child of the sweep's preloaded interpreter the fresh process is forked by it too (preload.py).
        code = preload.run("attempt", argv) if os.environ.get(preload.SOCKET_ENV) else None
        if code is None:
            code = subprocess.run([sys.executable, "-m", "attnsweep.attempt", *argv]).returncode
        if out_path.exists():
            result = AttemptResult.from_json(json.loads(out_path.read_text()))
        else:
            result = AttemptResult("error", f"worker process exited with code {code} and no result")
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def main(argv: list[str]) -> int:
    args_path, out_path = argv
    args = json.loads(Path(args_path).read_text())
    res = measure(CellSpec(**args["spec"]), args["batch_size"], torch.device(args["device"]), steps=args["steps"],
                  cache_dir=args["cache_dir"])
    Path(out_path).write_text(json.dumps(res.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
