"""The measured window's conditions (windowprobe): other processes' CPU time, GC pauses, allocator events (CPU)."""

from __future__ import annotations

import gc
import subprocess
import sys
import time

import pytest
import torch

from attnsweep import cellio
from attnsweep.cli import main as cli_main
from attnsweep.windowprobe import WindowProbe

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")


@linux_only
def test_another_process_busy_in_the_window_is_counted_as_others_cpu_time():
    spin = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"
    probe = WindowProbe(torch.device("cpu"))
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)  # the interpreter's start is over, the loop runs
        probe.start()
        time.sleep(0.8)  # this process idles; the other one spins
        cond = probe.stop()
    finally:
        busy.wait(timeout=30)
    assert cond["own_cpu_s"] < 0.2
    assert cond["host"]["others_cpu_s"] >= 0.4, cond  # about 0.8 s of one core, counted in 10 ms ticks
    assert cond["host"]["busy_cpu_s"] >= cond["host"]["others_cpu_s"]


@linux_only
def test_a_quiet_window_counts_little_of_others():
    probe = WindowProbe(torch.device("cpu"))
    probe.start()
    t = time.perf_counter()
    while time.perf_counter() - t < 0.5:  # this process busy, nobody else asked to be
        pass
    cond = probe.stop()
    assert cond["own_cpu_s"] >= 0.4 and cond["wall_s"] >= 0.5
    assert cond["host"]["busy_cpu_s"] >= 0.4


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
    probe.chain_end(lambda: seen.append(probe.stop()))()  # the hook (leaving the host) runs after the count ended
    time.sleep(0.3)  # whatever runs after the window is not counted
    cond = probe.stop()
    assert seen == [cond] and 0.05 <= cond["wall_s"] < 0.3
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
    # The probe spans the window's steps (and the harness's return): at least their wall time.
    assert cond["wall_s"] >= rec["harness_extra"]["window_wall_s"] * 0.99
    assert cond["wall_s"] < rec["phases_s"]["train"]
    assert cond["own_cpu_s"] > 0 and cond["gc"]["collections"] is not None
    assert list(rec).index("window_conditions") == list(rec).index("phases_s") + 1
