"""What else happened on the host and in the CUDA allocator while a cell's measured window ran.

Host-bound steps (GPT-2 medium at the study's small batches) wait on the CPU, so a window can be slowed by things
that leave every GPU kernel's time unchanged: other processes taking CPU time (or the hypervisor: steal time),
Python's garbage collector pausing the training loop (what the process holds is frozen before the window, so a
collection inside it is short), or the CUDA caching allocator that, near a memory cap, frees
its cached blocks and allocates again (cudaFree synchronizes the device, so the host loses its lead). The probe counts
each over the window, so a slow or noisy window can be told apart from a slow kernel from its record alone.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable

import torch

# The CUDA caching allocator's counters (torch.cuda.memory_stats) whose change over the window is recorded:
# retries = allocations that failed, freed the cache and tried again; device alloc/free = cudaMalloc/cudaFree calls.
ALLOCATOR_COUNTERS = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_sync_all_streams", "num_ooms")
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal (guest time is counted in user already).
# Busy: this machine's processes and kernel; steal (time the hypervisor ran something else) is counted apart.
_BUSY_FIELDS = (0, 1, 2, 5, 6)
_STEAL_FIELD = 7


def _proc_stat_cpu() -> list[int] | None:
    """The host's summed CPU time counters in clock ticks, or None where /proc/stat is not there (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    return [int(v) for v in fields[1:9]] if fields and fields[0] == "cpu" else None


def _own_usage() -> tuple[float, int]:
    """This process's CPU seconds (every thread) and the times it was preempted (involuntary context switches)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_nivcsw


class WindowProbe:
    """Counts host CPU use, GC pauses and allocator events from `start()` to `stop()`.

    `chain(hook)` gives a hook that runs `hook` (a timed job quieting its host) and then starts the probe, for
    StepHooks.before_window; `chain_end(hook)` one that ends the count and then runs `hook` (the timed job giving
    the host back), for StepHooks.after_window. `stop()` returns the record's `window_conditions` (counted to the
    end, or to now if the window did not end), or None if the window never began."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._t0: float | None = None
        self._gc_started: dict[int, float] = {}
        self._gc_counts = [0, 0, 0]
        self._gc_s = 0.0
        self._frozen: int | None = None
        self._holds_freeze = False
        self._gc_max_s = 0.0
        self._result: dict | None = None

    def chain(self, hook: Callable[[], None] | None) -> Callable[[], None]:
        def before_window() -> None:
            if hook is not None:
                hook()
            self.start()
        return before_window

    def chain_end(self, hook: Callable[[], None] | None) -> Callable[[], None]:
        def after_window() -> None:
            self.end()
            if hook is not None:
                hook()
        return after_window

    def _on_gc(self, phase: str, info: dict) -> None:
        gen = info.get("generation", 0)
        if phase == "start":
            self._gc_started[gen] = time.perf_counter()
        elif gen in self._gc_started:
            dt = time.perf_counter() - self._gc_started.pop(gen)
            self._gc_counts[min(gen, 2)] += 1
            self._gc_s += dt
            self._gc_max_s = max(self._gc_max_s, dt)

    def _allocator(self) -> dict[str, int] | None:
        if self.device.type != "cuda":
            return None
        stats = torch.cuda.memory_stats(self.device)
        return {k: int(stats.get(k, 0)) for k in ALLOCATOR_COUNTERS}

    def start(self) -> None:
        # Freeze what the process holds (the model, the optimizer, torch.compile's graphs and caches): a full
        # collection inside the window then scans only what the steps allocate, not every object the process holds.
        # Steps that run Python between CUDA graphs (graph breaks) allocate enough to trigger one in a window; unfrozen
        # it took 0.27-0.37 s, 5.5-8.3% of a 4-5 s window (h200-modern). The window's own collections are still counted.
        # No collection first: on an H100 one made the window's sixth step 14-21 ms slower than its median, and
        # freezing alone did not (results/h100-ab-gcfreeze); garbage frozen with the rest is freed after unfreeze().
        gc.freeze()
        self._frozen, self._holds_freeze = gc.get_freeze_count(), True
        self._stat0, self._own0 = _proc_stat_cpu(), _own_usage()
        self._alloc0 = self._allocator()
        gc.callbacks.append(self._on_gc)
        self._t0 = time.perf_counter()
        self._start_unix = time.time()

    def detach(self) -> None:
        """Stop counting garbage collections (safe to call again): after a failed window too."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._holds_freeze:
            self._holds_freeze = False
            gc.unfreeze()  # the objects frozen at the start go back to the oldest generation

    def end(self) -> None:
        """The window is over: count no further (the first call counts; later ones change nothing)."""
        self.detach()
        if self._t0 is not None and self._result is None:
            self._result = self._conditions()

    def stop(self) -> dict | None:
        """The window's conditions; safe to call again."""
        self.end()
        return self._result

    def _conditions(self) -> dict:
        wall = time.perf_counter() - self._t0
        stat1, (own_cpu1, preempted1) = _proc_stat_cpu(), _own_usage()
        own_cpu_s, preempted = own_cpu1 - self._own0[0], preempted1 - self._own0[1]
        host = None
        if self._stat0 is not None and stat1 is not None:
            tick = os.sysconf("SC_CLK_TCK")
            delta = [b - a for a, b in zip(self._stat0, stat1)]
            busy_s = sum(delta[i] for i in _BUSY_FIELDS) / tick
            # Others' CPU time: the host's busy time less ours (ticks are coarse: 10 ms a tick and CPU).
            host = {"busy_cpu_s": round(busy_s, 3), "others_cpu_s": round(max(0.0, busy_s - own_cpu_s), 3),
                    "steal_s": round(delta[_STEAL_FIELD] / tick, 3)}
        alloc1 = self._allocator()
        return {
            # On the host's clock: windows of several GPUs' cells can be laid side by side afterwards.
            "start_unix_s": round(self._start_unix, 4),
            "end_unix_s": round(self._start_unix + wall, 4),
            "wall_s": round(wall, 4),
            "own_cpu_s": round(own_cpu_s, 3),
            "preempted": preempted,
            "host": host,
            "gc": {"collections": list(self._gc_counts), "seconds": round(self._gc_s, 4),
                   "longest_s": round(self._gc_max_s, 4), "frozen_objects": self._frozen},
            "cuda_allocator": ({k: alloc1[k] - self._alloc0[k] for k in ALLOCATOR_COUNTERS}
                               if alloc1 is not None and self._alloc0 is not None else None),
        }
