"""A sweep's cell processes stopped (SIGSTOP) while a test looks at its files, for tests that kill a sweep mid-cell
(shared by the test modules).

A cell seen training (its record not written yet) may write its record an instant later, before a kill sent at
once: the test would then kill a sweep whose cell had finished. Stopped first and looked at again, the cell either
still has no record, and none can come until the kill, or has finished, and the test lets it go on and waits for
the next cell.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")


def _attnsweep_processes(folder: Path) -> list[psutil.Process]:
    """The attnsweep Pythons working in `folder`: a job's own `python -m attnsweep cell|warmup ...`, its attempts,
    and the children the sweep's preloaded interpreter forked for its jobs, which take their job's folder (the
    interpreter itself works in /). These write the records; Snakemake and the jobs' shells do not, and start no job
    while a cell runs (one job at a time)."""
    found = []
    for p in psutil.process_iter():
        try:
            cmd = p.cmdline()
            if (p.pid != os.getpid() and len(cmd) > 2 and cmd[1] == "-m" and cmd[2].split(".")[0] == "attnsweep"
                    and Path(p.cwd()) == folder):
                found.append(p)
        except psutil.Error:  # gone meanwhile, or not ours to read
            pass
    return found


def _stopped_or_gone(p: psutil.Process) -> bool:
    try:
        return p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def dead(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE  # killed, not yet reaped by whoever adopted it
    except psutil.NoSuchProcess:
        return True


def freeze(folder: Path, timeout: float = 60) -> list[psutil.Process]:
    """Stop every attnsweep process working in `folder` and wait until each has stopped (a stop takes effect when the
    process next runs; a file write in progress is over by then). Returns them, for `thaw` or `reap`."""
    folder = folder.resolve()
    stopped: dict[int, psutil.Process] = {}
    while new := [p for p in _attnsweep_processes(folder) if p.pid not in stopped]:  # and any started meanwhile
        for p in new:
            stopped[p.pid] = p
            try:
                p.suspend()
            except psutil.NoSuchProcess:
                pass
    deadline = time.monotonic() + timeout
    while not all(_stopped_or_gone(p) for p in stopped.values()):
        assert time.monotonic() < deadline, "the sweep's processes did not stop"
        time.sleep(0.01)
    return list(stopped.values())


def thaw(processes: list[psutil.Process]) -> None:
    """Let stopped processes go on."""
    for p in processes:
        try:
            p.resume()
        except psutil.NoSuchProcess:
            pass


def reap(processes: list[psutil.Process], timeout: float = 30) -> None:
    """After the sweep was killed: wait for the stopped processes to go (a preloaded interpreter kills a child when
    its job dies), and kill any still there after `timeout`, so that nothing of the killed sweep stays stopped, or
    goes on."""
    deadline = time.monotonic() + timeout
    while not all(dead(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def freeze_mid_cell(folder: Path, find: Callable[[], T], still_mid_cell: Callable[[T], bool]) -> tuple[T, list]:
    """`find()` (which waits for a cell mid-way), then the sweep's processes stopped, and the cell looked at again:
    where `still_mid_cell` says it finished meanwhile, they go on and the next cell is waited for. Returns what `find`
    gave and the stopped processes, for `reap` after the kill."""
    while True:
        found = find()
        frozen = freeze(folder)
        if still_mid_cell(found):
            return found, frozen
        thaw(frozen)
