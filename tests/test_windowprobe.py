"""The measured window's conditions (windowprobe): other processes' CPU time, GC pauses, allocator events (CPU)."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
import weakref

import psutil
import pytest
import torch

from attnsweep import cellio
from attnsweep.cli import main as cli_main
from attnsweep.windowprobe import WindowProbe

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")


def _cpu_s_of(pid: int) -> float:
    """A process's user + system CPU seconds so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# Both are counted in 10 ms ticks by the kernel, per CPU: a few ticks of difference between two counts of one time.
TICKS_S = 0.05


@linux_only
def test_another_process_busy_in_the_window_is_counted_as_others_cpu_time():
    # The other process spins until killed. How much CPU it gets depends on the machine (a shared CI host may give
    # it a fraction of a core), so the count is checked against what the kernel says it got within the window.
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the interpreter's start is over, the loop runs
        probe = WindowProbe(torch.device("cpu"))
        probe.start()
        got0 = _cpu_s_of(busy.pid)  # read inside the window: the other's time between the reads is in the window
        # This process idles while the other one spins, until the other has had 0.5 s of CPU (or a minute went by):
        # a shared host may give a spinning process a third of a core or less, so a fixed sleep could leave it below
        # the 0.1 s it must have had for the count to mean anything. A read every 0.2 s costs this process far less
        # than its 0.2 s bound below.
        deadline = time.monotonic() + 60
        while (got := _cpu_s_of(busy.pid) - got0) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.2)
        cond = probe.stop()
    finally:
        busy.kill()
        busy.wait(timeout=30)
    assert got >= 0.1, "the other process hardly ran: nothing to count"
    assert cond["own_cpu_s"] < 0.2
    assert cond["host"]["others_cpu_s"] >= got - TICKS_S, (got, cond)
    assert cond["host"]["busy_cpu_s"] >= cond["host"]["others_cpu_s"]


@linux_only
def test_this_process_cpu_time_is_its_own_and_part_of_the_host_busy_time():
    probe = WindowProbe(torch.device("cpu"))
    probe.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.process_time() - cpu0 < 0.3:  # 0.3 s of CPU, however long a shared host takes to give it
        pass
    spent, wall = time.process_time() - cpu0, time.perf_counter() - t0
    cond = probe.stop()
    assert cond["own_cpu_s"] == pytest.approx(spent, abs=0.02)
    assert cond["wall_s"] >= round(wall, 4)  # the record keeps 0.1 ms; rounding keeps the order of the two walls
    assert cond["host"]["busy_cpu_s"] >= cond["own_cpu_s"] - TICKS_S


def test_garbage_collections_in_the_window_are_counted_and_timed():
    probe = WindowProbe(torch.device("cpu"))
    probe.start()
    junk = [[i] for i in range(200_000)]
    gc.collect()
    del junk
    cond = probe.stop()
    assert cond["gc"]["collections"][2] >= 1 and cond["gc"]["seconds"] > 0
    assert cond["gc"]["longest_s"] <= cond["gc"]["seconds"]
    assert cond["cuda_allocator"] is None  # no CUDA allocator on the CPU


def test_the_hook_runs_first_and_a_failed_window_leaves_no_gc_callback():
    probe = WindowProbe(torch.device("cpu"))
    order = []
    hook = probe.chain(lambda: order.append(probe._t0))
    hook()
    assert order == [None] and probe._t0 is not None  # the timed job quiets its host, then the probe starts
    assert probe.stop() is not None and probe._on_gc not in gc.callbacks
    assert probe.stop() is not None  # a second stop (the attempt's finally) is harmless
    assert WindowProbe(torch.device("cpu")).stop() is None  # a window that never began has no conditions


def test_the_count_ends_before_the_host_is_given_back():
    probe = WindowProbe(torch.device("cpu"))
    seen = []
    probe.chain(None)()
    time.sleep(0.05)
    # The hook (leaving the host) runs after the count ended: the window is no longer than the time to the hook.
    probe.chain_end(lambda: seen.append((probe.stop(), time.perf_counter() - probe._t0)))()
    time.sleep(0.3)  # whatever runs after the window is not counted
    cond = probe.stop()
    assert seen[0][0] == cond and 0.05 <= cond["wall_s"] <= round(seen[0][1], 4)
    assert cond["end_unix_s"] - cond["start_unix_s"] == pytest.approx(cond["wall_s"], abs=1e-3)
    assert cond["start_unix_s"] <= time.time() - 0.3  # on the host's clock: windows of several jobs compare


def test_the_cell_record_carries_its_windows_conditions(tmp_path):
    out = tmp_path / "cell.json"
    rc = cli_main(["cell", "--model", "tiny", "--attn", "sdpa", "--mode", "eager", "--seq-len", "32",
                   "--batch-size", "2", "--device", "cpu", "--steps", "8", "--window", "4", "--no-profile",
                   "--out", str(out)])
    assert rc == 0
    rec = cellio.load_cell(out)  # validated against the schema
    cond = rec["window_conditions"]
    # The probe spans the window's steps (and the harness's hooks around them): at least their wall time. The record
    # keeps the probe's to 0.1 ms and the harness's whole; rounded alike, the order of the two stays.
    assert cond["wall_s"] >= round(rec["harness_extra"]["window_wall_s"], 4)
    assert cond["wall_s"] < rec["phases_s"]["train"]
    assert cond["own_cpu_s"] > 0 and cond["gc"]["collections"] is not None
    assert list(rec).index("window_conditions") == list(rec).index("phases_s") + 1


def test_what_the_process_holds_is_frozen_for_the_window_and_unfrozen_after():
    held = [[i] for i in range(50_000)]  # the model and its compiled graphs, as far as the collector sees them
    probe = WindowProbe(torch.device("cpu"))
    probe.start()
    assert gc.get_freeze_count() >= len(held)
    cycle = [None]
    cycle[0] = cycle  # garbage a step leaves: still collected inside the window
    del cycle
    assert gc.collect() >= 1
    cond = probe.stop()
    assert gc.get_freeze_count() == 0
    assert cond["gc"]["frozen_objects"] >= len(held) and cond["gc"]["collections"][2] >= 1
    probe.stop()  # again: nothing more to unfreeze
    assert gc.get_freeze_count() == 0


def test_the_window_starts_without_a_collection():
    """start() freezes what is there, garbage too, and collects nothing (a collection before the window slowed one of
    its steps on the GPU); the garbage goes once the window is over and the objects are unfrozen."""

    class Node:
        pass

    gc.disable()  # no automatic collection between making the garbage and the window's start
    try:
        node = Node()
        node.self = node
        gone = weakref.ref(node)
        del node
        probe = WindowProbe(torch.device("cpu"))
        probe.start()
    finally:
        gc.enable()
    try:
        gc.collect()
        assert gone() is not None  # frozen: not even a full collection reaches it
    finally:
        probe.stop()  # unfrozen whatever the assertion found: later tests see the collector as it was
    gc.collect()
    assert gone() is None
