"""The native harness: a plain training loop, timed the way llm.c and nanoGPT time theirs.

Each step is bracketed by CUDA events (on the GPU) or `perf_counter` (on the CPU, where work is synchronous), and
the events are read only after a final synchronize, so timing adds no stalls of its own. Throughput over the
window is tokens / elapsed time of the window's steps, which is what Composer's SpeedMonitor reports too.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import torch

from .training import (CudagraphWatch, TrainResult, TrainSpec, TrainStep, compile_model, graph_stats,
                       make_optimizer, reset_graph_counters)
from .vocabulary import COMPILED_MODES, CUDAGRAPH_MODES


def _run_hook(hook: Callable[[], None] | None) -> float:
    """Call `hook` if there is one; the seconds it took."""
    if hook is None:
        return 0.0
    t0 = time.perf_counter()
    hook()
    return time.perf_counter() - t0


def train_native(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    spec: TrainSpec,
    tokens_per_batch: int,
) -> TrainResult:
    """Train `model` for `spec.steps` steps on the cycled `batches` and time every step."""
    t_start = time.perf_counter()
    model.train()
    optimizer = make_optimizer(model, spec.optimizer)
    reset_graph_counters(spec.hooks.compiled)
    forward = compile_model(model, spec.mode, spec.fullgraph)
    cudagraphs = spec.mode in CUDAGRAPH_MODES
    step = TrainStep(forward, optimizer, spec.precision, spec.device.type, cudagraphs=cudagraphs)
    # With CUDA graphs, what their trees captured and skipped, decided from the first step's compilation on.
    watch = CudagraphWatch() if cudagraphs else None

    cuda = spec.device.type == "cuda"
    losses: list[torch.Tensor] = []
    if cuda:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(spec.steps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(spec.steps)]
        torch.cuda.synchronize(spec.device)
    cpu_times: list[float] = []
    hook_s = 0.0
    wall0 = time.perf_counter()
    window_wall0 = None
    with watch if watch is not None else contextlib.nullcontext():
        for i in range(spec.steps):
            x, y = batches[i % len(batches)]
            if i == spec.steps - spec.window:
                hook_s += _run_hook(spec.hooks.before_window)
                if cuda:
                    torch.cuda.synchronize(spec.device)
                window_wall0 = time.perf_counter()
            if cuda:
                starts[i].record()
                losses.append(step(x, y))
                ends[i].record()
            else:
                t0 = time.perf_counter()
                losses.append(step(x, y))
                cpu_times.append(time.perf_counter() - t0)
            if i == 0:
                if cuda:
                    torch.cuda.synchronize(spec.device)
                first_step_s = time.perf_counter() - wall0
                hook_s += _run_hook(spec.hooks.after_first_step)
    if cuda:
        torch.cuda.synchronize(spec.device)
    loop_end = time.perf_counter()
    hook_s += _run_hook(spec.hooks.after_window)
    after0 = time.perf_counter()
    if cuda:
        step_times = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    else:
        step_times = cpu_times
    window_wall_s = loop_end - window_wall0
    window_s = sum(step_times[-spec.window :])

    loss_values = torch.stack(losses).float().cpu().tolist()
    nonfinite = next((i + 1 for i, v in enumerate(loss_values) if not math.isfinite(v)), None)
    graphs, breaks, reasons = graph_stats() if spec.mode in COMPILED_MODES else (None, None, [])

    def profile_step() -> None:
        x, y = batches[0]
        step(x, y)

    return TrainResult(
        harness="native",
        step_times_s=step_times,
        window_tokens_per_sec=spec.window * tokens_per_batch / window_s,
        losses=loss_values,
        nonfinite_step=nonfinite,
        first_step_s=first_step_s,
        peak_memory_bytes=torch.cuda.max_memory_allocated(spec.device) if cuda else None,
        graphs=graphs,
        graph_breaks=breaks,
        break_reasons=reasons,
        cudagraphs=watch.stats(spec.device) if watch is not None else None,
        # The wall-clock time of the window, synchronized at both ends: a check on the summed event times.
        # Where the run's host time went besides the steps: before the first step (optimizer, compile wrapper),
        # the hooks (a timed cell taking its GPU, then the host), the steps' wall time, and after the last step.
        extra={"window_wall_s": window_wall_s, "window_event_s": window_s, "grad_scaling": step.scaler.is_enabled(),
               "before_steps_s": wall0 - t_start, "hook_s": hook_s, "steps_wall_s": loop_end - wall0,
               "after_steps_s": time.perf_counter() - after0},
        profile_step=profile_step,
    )
