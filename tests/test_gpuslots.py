"""The per-GPU slots of gpuslots, exercised by real processes on the CPU (no GPU is touched: only lock files/signals).

Jobs are small Python processes:

* a warm-up **worker** (WORKER) registers with ``gpu_worker`` and then appends ``time.monotonic()`` to a ticks file
  every ~5 ms, optionally through a chain of unregistered descendants that tick too (Inductor's compiler pool);
* a **timed** job (TIMED) claims a timed slot and records when its exclusive section (or its claim) started and ended.

``time.monotonic`` is one clock for the whole machine, so ticks and sections compare across processes. The
assertions are on the order of events, never on how long anything took (except the guard's ~1 s to resume workers
after its timed job dies), so a slow machine only makes the tests slower.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from attnsweep import gpuslots
from attnsweep.gpuslots import claim_timed, claim_warmup, gpu_worker, visible_gpus

SRC = Path(gpuslots.__file__).resolve().parents[1]

# A tick taken just as SIGSTOP is sent may carry a time a hair after kill() returned (the signal reaches a process
# running on another core through an interrupt). The section's start is recorded after every worker was signalled
# and the guard started, so in practice ticks stop well before it; a few ms of grace keep this from flaking.
STOP_TOLERANCE_S = 0.005

# tick(path, depth, parent): append the time to `path` every ~5 ms; with depth > 0, first start a child ticker that
# writes to path + ".c" (and so on down). A ticker whose parent is gone stops, so no test leaks processes.
TICK_BODY = r"""
import os, subprocess, sys, time

def tick(path, depth, parent=None):
    if depth > 0:
        child = f"TICK_SRC = {TICK_SRC!r}\n{TICK_SRC}\ntick(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))\n"
        subprocess.Popen([sys.executable, "-c", child, path + ".c", str(depth - 1), str(os.getpid())])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (parent is None or os.getppid() == parent):
        os.write(fd, f"{time.monotonic()!r}\n".encode())  # one write per line: a reader never sees half of one
        time.sleep(0.005)
"""
TICK = f"TICK_SRC = {TICK_BODY!r}\n{TICK_BODY}"

# argv: lock_dir device ticks_file depth. Registers, writes <ticks>.reg (monotonic time of registration), ticks.
WORKER = TICK + r"""
import json
from pathlib import Path
from attnsweep.gpuslots import gpu_worker
lock_dir, device, out, depth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with gpu_worker(lock_dir, device) as waited:
    Path(out + ".tmp").write_text(json.dumps(dict(registered=time.monotonic(), waited=waited, pid=os.getpid())))
    os.rename(out + ".tmp", out + ".reg")
    tick(out, depth)
"""

# argv: mode lock_dir gpus(comma-separated) hold out_file
#   claim:     the section is the timed claim itself
#   exclusive: claim a timed slot, the section is slot.exclusive()
#   window:    claim a timed slot, the section is slot.quiet() inside slot.exclusive() (a measured window)
#   start:     claim a timed slot, slot.stoppable() (a timed job before its window), then tick to <out>.ticks
#   stoppable-window: as a timed job does it: stoppable(), then a window inside exclusive()
#   overlap-window: as a timed job does it with window_turns false: stoppable(), exclusive(), leave_stoppable(),
#                   0.5 s of steps, then a window that does not wait for others
# Writes <out>.claiming just before it claims, <out>.start when the section begins and <out> at its end. The section
# lasts hold seconds; a negative hold holds until killed, and hold "release" until the file <out>.release exists.
TIMED = r"""
import json, os, sys, time
from pathlib import Path
from attnsweep.gpuslots import claim_timed
mode, lock_dir, gpus, hold, out = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4], sys.argv[5]

def put(path, record):
    Path(path + ".tmp").write_text(json.dumps(record))
    os.rename(path + ".tmp", path)

def section(slot):
    record = dict(gpu=slot.gpu, device=slot.device_id, claim_wait=slot.wait_s, paused=slot.paused,
                  quieted=slot.quieted, start=time.monotonic())
    put(out + ".start", record)
    if hold == "release":
        while not os.path.exists(out + ".release"):
            time.sleep(0.005)
    else:
        time.sleep(float(hold) if float(hold) >= 0 else 1000)
    record["end"] = time.monotonic()
    return record

put(out + ".claiming", dict(pid=os.getpid()))
with claim_timed(lock_dir, gpus, poll_s=0.01) as slot:
    if mode in ("start", "stoppable-window"):
        slot.stoppable()
    if mode == "start":
        put(out + ".start", dict(pid=os.getpid(), start=time.monotonic()))
        fd = os.open(out + ".ticks", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        while True:
            os.write(fd, f"{time.monotonic()!r}\n".encode())
            time.sleep(0.005)
    if mode == "claim":
        record = section(slot)
    elif mode == "stoppable-window":
        with slot.exclusive(), slot.quiet():
            record = section(slot)
    elif mode == "overlap-window":
        slot.stoppable()
        with slot.exclusive():
            slot.leave_stoppable()
            time.sleep(0.5)
            with slot.quiet(turns=False):
                record = section(slot)
    elif mode == "window":
        with slot.exclusive(), slot.quiet():
            record = section(slot)
    else:
        with slot.exclusive():
            record = section(slot)
put(out, record)
"""


# A timed job's hold until the test releases it (Timed.release).
RELEASE = "release"
# How long a test waits, once a timed job has said it claims, before letting a GPU go: the job's claim has begun by
# then unless the job stalled that long between two statements.
CLAIMING_S = 0.3


def read_ticks(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [float(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def wait_until(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} never came true"
        time.sleep(0.005)


def is_stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(entry.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.parent.name))
        except (OSError, IndexError):
            pass
    return found


def held(path: Path, kind: int = fcntl.LOCK_EX) -> bool:
    """Whether some process holds a lock on path that conflicts with ``kind`` (probed without blocking)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Worker:
    def __init__(self, proc: subprocess.Popen, ticks: Path, depth: int) -> None:
        self.proc, self.ticks, self.depth = proc, ticks, depth

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tick_files(self) -> list[Path]:
        """Its own ticks file, then each descendant's."""
        return [Path(str(self.ticks) + ".c" * level) for level in range(self.depth + 1)]

    def registration(self) -> dict:
        return json.loads(Path(f"{self.ticks}.reg").read_text())

    def wait_ticking(self) -> None:
        for path in self.tick_files():
            wait_until(lambda: len(read_ticks(path)) >= 3, what=f"{path.name} ticking")


class Timed:
    def __init__(self, proc: subprocess.Popen, out: Path) -> None:
        self.proc, self.out = proc, out

    def claiming(self) -> None:
        """Wait until the job is about to claim (its process has started and imported everything)."""
        wait_until(lambda: Path(f"{self.out}.claiming").exists(), what=f"{self.out.name} claiming")

    def started(self) -> dict:
        wait_until(lambda: Path(f"{self.out}.start").exists(), what=f"{self.out.name} section")
        return json.loads(Path(f"{self.out}.start").read_text())

    def release(self) -> None:
        """End a section held with hold RELEASE."""
        Path(f"{self.out}.release").touch()

    def result(self, timeout: float = 30.0) -> dict:
        assert self.proc.wait(timeout=timeout) == 0
        return json.loads(self.out.read_text())


class Jobs:
    """Starts worker and timed processes; kills whatever is left at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.locks = tmp_path / "locks"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def _popen(self, args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", *args], env=self.env)
        self.procs.append(proc)
        return proc

    def worker(self, device: str, depth: int = 0) -> Worker:
        ticks = self.dir / f"worker{len(self.procs)}.ticks"
        return Worker(self._popen([WORKER, str(self.locks), device, str(ticks), str(depth)]), ticks, depth)

    def timed(self, gpus: str, hold: float | str, mode: str = "exclusive") -> Timed:
        out = self.dir / f"timed{len(self.procs)}.json"
        return Timed(self._popen([TIMED, mode, str(self.locks), gpus, str(hold), str(out)]), out)

    def kill_all(self) -> None:
        for proc in self.procs:  # SIGKILL ends a stopped process too; tickers below it follow their parent
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def jobs(tmp_path: Path):
    jobs = Jobs(tmp_path)
    yield jobs
    jobs.kill_all()


def ticks_inside(ticks: list[float], section: dict) -> list[float]:
    return [t for t in ticks if section["start"] + STOP_TOLERANCE_S < t < section["end"]]


def assert_paused_not_killed(path: Path, sections: list[dict]) -> None:
    """No tick of `path` inside any section; ticks before the first and after the last (it went on)."""
    first, last = min(s["start"] for s in sections), max(s["end"] for s in sections)
    wait_until(lambda: any(t > last for t in read_ticks(path)), timeout=5, what=f"{path.name} ticking again")
    ticks = read_ticks(path)
    for section in sections:
        inside = ticks_inside(ticks, section)
        assert not inside, f"{path.name} ticked {len(inside)} times inside an exclusive section"
    assert any(t < first for t in ticks)


def test_two_gpus_two_timed_jobs_get_different_gpus_and_a_third_waits(jobs: Jobs) -> None:
    # The first two hold their GPUs until released, and the first is released only once the third claims: however
    # slowly each process starts, both GPUs are held at once, and the third waits for one.
    first = jobs.timed("0,1", hold=RELEASE, mode="claim")
    second = jobs.timed("0,1", hold=RELEASE, mode="claim")
    first.started()
    second.started()
    third = jobs.timed("0,1", hold=0.0, mode="claim")
    third.claiming()
    time.sleep(CLAIMING_S)
    first.release()
    a, c = first.result(), third.result()
    second.release()
    b = second.result()
    assert {a["gpu"], b["gpu"]} == {0, 1}
    assert {a["device"], b["device"]} == {"0", "1"}
    previous = a if a["gpu"] == c["gpu"] else b
    assert c["start"] >= previous["end"]  # it got a GPU only when that GPU's timed job let it go
    assert c["claim_wait"] > 0.05


def test_one_gpu_is_a_mutex_for_timed_jobs(jobs: Jobs) -> None:
    # The GPU is this test's until all four claim: they then take it in turn, however far apart their processes start
    # (four Pythons started at once on a busy 2-core host need not begin their claims within the 0.1 s that would
    # leave the last one waiting 0.2 s for the others).
    with claim_timed(jobs.locks, ["0"]):
        timed = [jobs.timed("0", hold=0.1, mode="claim") for _ in range(4)]
        for t in timed:
            t.claiming()
        time.sleep(CLAIMING_S)
    records = [t.result() for t in timed]
    assert all(r["gpu"] == 0 for r in records)
    for a in records:
        assert not [b for b in records if b is not a and a["start"] < b["end"] and b["start"] < a["end"]]
    assert max(r["claim_wait"] for r in records) > 0.2  # the last one waited for this test and three others


def test_exclusive_sections_pause_the_workers_of_their_gpu_only(jobs: Jobs) -> None:
    gpu0 = [jobs.worker("0"), jobs.worker("0")]
    gpu1 = jobs.worker("1")
    for worker in [*gpu0, gpu1]:
        worker.wait_ticking()
    # Two timed jobs on GPU 0, one after the other (the second waits for the first's timed slot).
    timed = [jobs.timed("0", hold=0.3), jobs.timed("0", hold=0.3)]
    sections = [t.result() for t in timed]
    for section in sections:
        assert sorted(section["paused"]) == sorted(w.pid for w in gpu0)  # GPU 1's worker is not theirs to stop
    for worker in gpu0:
        assert_paused_not_killed(worker.ticks, sections)
    other = read_ticks(gpu1.ticks)
    for section in sections:
        # ~60 ticks in 0.3 s; a few suffice to show it was running (a busy 2-core machine slows it down).
        assert len(ticks_inside(other, section)) >= 5, "the other GPU's worker was held up"


def test_exclusive_section_pauses_a_workers_descendants(jobs: Jobs) -> None:
    worker = jobs.worker("0", depth=2)  # the worker, its child and its grandchild all tick
    worker.wait_ticking()
    timed = jobs.timed("0", hold=0.3)
    section = timed.result()
    assert len(section["paused"]) == 3 and section["paused"][0] == worker.pid
    for path in worker.tick_files():
        assert_paused_not_killed(path, [section])


def test_a_worker_cannot_register_during_an_exclusive_section(jobs: Jobs) -> None:
    timed = jobs.timed("0", hold=0.6)
    timed.started()
    worker = jobs.worker("0")  # starts up and registers well within the 0.6 s, were it let in
    section = timed.result()
    wait_until(lambda: Path(f"{worker.ticks}.reg").exists(), what="registration")
    registration = worker.registration()
    assert registration["registered"] >= section["end"]
    assert registration["waited"] > 0
    assert min(read_ticks(worker.ticks)) >= section["end"]


def test_sigkill_of_the_timed_job_lets_its_workers_go_on_and_frees_its_slot(jobs: Jobs) -> None:
    worker = jobs.worker("0", depth=1)
    worker.wait_ticking()
    timed = jobs.timed("0", hold=-1)  # stays in its exclusive section until killed
    section = timed.started()
    time.sleep(0.1)
    assert is_stopped(worker.pid)
    # Taken before the kill: once the job is gone (reaped just below) its guard may let the workers go on at any
    # moment, and a tick of theirs could then come before a time taken after the kill.
    killed = time.monotonic()
    timed.proc.kill()
    timed.proc.wait()
    for path in worker.tick_files():
        assert not ticks_inside(read_ticks(path), {**section, "end": killed})
    # The timed slot died with the job (and the turnstile: see below).
    claim_timed(jobs.locks, ["0"], timeout_s=0).release()
    # Its guard sends SIGCONT within its polling period (0.2 s); allow 1 s.
    for path in worker.tick_files():
        wait_until(lambda: any(t > killed for t in read_ticks(path)), timeout=1.0, what=f"{path.name} resuming")
    with claim_timed(jobs.locks, ["0"], timeout_s=0) as slot, slot.exclusive() as waited:
        assert waited < 0.5
        assert slot.paused[0] == worker.pid  # its file is still good: it is stopped again


def test_a_measured_window_stops_the_warmups_of_every_gpu(jobs: Jobs) -> None:
    gpu0, gpu1 = jobs.worker("0", depth=1), jobs.worker("1")
    gpu0.wait_ticking()
    gpu1.wait_ticking()
    section = jobs.timed("0,1", hold=0.3, mode="window").result()
    assert section["device"] == "0"
    assert gpu1.pid in section["quieted"] and gpu0.pid in section["paused"]
    for path in [*gpu0.tick_files(), gpu1.ticks]:
        assert_paused_not_killed(path, [section])


def test_a_window_that_ends_leaves_the_workers_of_another_gpus_exclusive_phase_stopped(jobs: Jobs) -> None:
    gpu0, gpu1 = jobs.worker("0"), jobs.worker("1")
    gpu0.wait_ticking()
    gpu1.wait_ticking()
    long = jobs.timed("0", hold=-1)  # GPU 0's exclusive phase, until killed
    long.started()
    window = jobs.timed("1", hold=0.2, mode="window").result()  # GPU 1's window stops both, then ends
    wait_until(lambda: any(t > window["end"] for t in read_ticks(gpu1.ticks)), timeout=5, what="GPU 1's worker")
    time.sleep(0.1)
    assert is_stopped(gpu0.pid), "a window's end resumed a worker another GPU's exclusive phase holds"
    long.proc.kill()
    long.proc.wait()
    killed = time.monotonic()
    wait_until(lambda: any(t > killed for t in read_ticks(gpu0.ticks)), timeout=2, what="GPU 0's worker (guard)")


def test_a_worker_cannot_register_during_another_gpus_window(jobs: Jobs) -> None:
    window = jobs.timed("1", hold=0.6, mode="window")
    window.started()
    worker = jobs.worker("0")  # another GPU's: its turnstile is free, the window is not
    section = window.result()
    wait_until(lambda: Path(f"{worker.ticks}.reg").exists(), what="registration")
    assert worker.registration()["registered"] >= section["end"]


def test_sigkill_in_a_window_lets_every_gpus_workers_go_on(jobs: Jobs) -> None:
    gpu0, gpu1 = jobs.worker("0"), jobs.worker("1")
    gpu0.wait_ticking()
    gpu1.wait_ticking()
    window = jobs.timed("0", hold=-1, mode="window")
    window.started()
    time.sleep(0.1)
    assert is_stopped(gpu0.pid) and is_stopped(gpu1.pid)
    window.proc.kill()
    window.proc.wait()
    killed = time.monotonic()
    for worker in (gpu0, gpu1):
        wait_until(lambda: any(t > killed for t in read_ticks(worker.ticks)), timeout=2, what="resuming (guard)")
    assert not list((jobs.locks / "host.stoppers").iterdir())  # the dead job's sections are gone


def test_a_window_stops_another_gpus_timed_job_before_its_window(jobs: Jobs) -> None:
    starting = jobs.timed("0", hold=-1, mode="start")  # GPU 0's timed job: loading its code, its first steps
    pid = starting.started()["pid"]
    ticks = Path(f"{starting.out}.ticks")
    wait_until(lambda: len(read_ticks(ticks)) >= 3, what="the starting job ticking")
    window = jobs.timed("1", hold=0.3, mode="window").result()
    assert pid in window["quieted"]
    assert_paused_not_killed(ticks, [window])


def test_windows_take_turns_and_a_timed_job_never_stops_itself(jobs: Jobs) -> None:
    first = jobs.timed("0", hold=0.6, mode="stoppable-window")
    first.started()
    second = jobs.timed("1", hold=0.1, mode="window")  # one that is not stoppable: it must wait its turn
    a, b = first.result(), second.result()  # the first does not hang: it leaves the timed workers before its window
    assert b["start"] >= a["end"], "two windows overlapped"


def test_without_turns_windows_overlap_and_still_stop_a_starting_timed_job(jobs: Jobs) -> None:
    starting = jobs.timed("2", hold=-1, mode="start")
    pid = starting.started()["pid"]
    ticks = Path(f"{starting.out}.ticks")
    wait_until(lambda: len(read_ticks(ticks)) >= 3, what="the starting job ticking")
    # Both start before either window begins (a start, like a warm-up, waits out a live window to register).
    first = jobs.timed("0", hold=0.8, mode="overlap-window")
    second = jobs.timed("1", hold=0.8, mode="overlap-window")
    a, b = first.result(), second.result()
    assert max(a["start"], b["start"]) < min(a["end"], b["end"]), "a window without turns waited for another"
    assert pid in a["quieted"] and pid in b["quieted"]
    assert_paused_not_killed(ticks, [a, b])


def test_a_timed_job_starting_during_a_window_registers_after_it(jobs: Jobs) -> None:
    window = jobs.timed("1", hold=0.5, mode="window")
    section = window.started()
    starting = jobs.timed("0", hold=-1, mode="start")
    assert starting.started()["start"] >= window.result()["end"] > section["start"]


def test_timed_jobs_and_an_uncapped_warmups_attempts_register_among_the_timed_slots(tmp_path: Path, monkeypatch):
    import argparse
    import contextlib

    from attnsweep import cli
    from attnsweep.attempt import WORKER_ENV

    monkeypatch.setattr(gpuslots, "visible_gpus", lambda config_value=None: ["0"])
    monkeypatch.setattr(cli.os, "environ", dict(os.environ))
    args = argparse.Namespace(gpu_locks=str(tmp_path / "locks"), gpus=None, memory_cap_gib=None, warmups_per_gpu=None,
                              compile_seats=0)
    with contextlib.ExitStack() as stack:
        slot = cli._claim(args, stack, "warmup")
        assert isinstance(slot, gpuslots.TimedSlot)  # the GPU to itself for its batch search
        assert [cli.os.environ[k] for k in WORKER_ENV] == [args.gpu_locks, gpuslots.TIMED_WORKERS]
    args.memory_cap_gib = 12.0
    with contextlib.ExitStack() as stack:
        slot = cli._claim(args, stack, "warmup")
        assert [cli.os.environ[k] for k in WORKER_ENV] == [args.gpu_locks, "0"]
    registered = gpuslots._workers_dir(Path(args.gpu_locks), gpuslots.TIMED_WORKERS) / str(os.getpid())
    for turns, recorded in ((True, "in turn"), (False, "overlapping")):
        args.window_turns = turns
        with contextlib.ExitStack() as stack:
            cli._claim(args, stack, "timed")
            assert registered.exists()  # a timed job is stoppable by other GPUs' windows from its start
            assert cli.os.environ[gpuslots.WINDOWS_ENV] == recorded  # the record's env.windows
        assert not registered.exists()


def test_a_section_begins_only_once_its_workers_have_stopped(jobs: Jobs) -> None:
    # SIGSTOP takes effect when its target next runs. A worker that the scheduler starves (lowest policy, one CPU
    # shared with a busy loop) runs rarely, so a section that did not wait would begin while it still shows running.
    cpu = min(os.sched_getaffinity(0))
    worker = jobs.worker("0")
    worker.wait_ticking()
    hog = jobs._popen(["while True: pass"])
    for pid in (worker.pid, hog.pid):
        os.sched_setaffinity(pid, {cpu})
    os.sched_setscheduler(worker.pid, os.SCHED_IDLE, os.sched_param(0))
    for _ in range(20):
        with claim_timed(jobs.locks, ["0"]) as slot, slot.exclusive():
            assert slot.paused == [worker.pid]
            assert is_stopped(worker.pid)
        assert not is_stopped(worker.pid)


def test_a_killed_workers_file_is_skipped_and_removed(jobs: Jobs) -> None:
    dead, live = jobs.worker("0"), jobs.worker("0")
    dead.wait_ticking()
    live.wait_ticking()
    dead.proc.kill()
    dead.proc.wait()
    stale = jobs.locks / "gpu-0.workers" / str(dead.pid)
    assert stale.exists()  # it had no chance to unregister
    with claim_timed(jobs.locks, ["0"]) as slot, slot.exclusive():
        assert slot.paused == [live.pid]
        assert is_stopped(live.pid)
        assert not stale.exists()
        assert (jobs.locks / "gpu-0.workers" / str(live.pid)).exists()
    assert not is_stopped(live.pid)


def test_an_exception_releases_everything_and_lets_workers_go_on(jobs: Jobs, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = jobs.worker("0", depth=1)
    worker.wait_ticking()
    locks = jobs.locks
    fds = open_fds()
    helpers = children(os.getpid())  # the worker, and no guard of an exclusive phase

    with pytest.raises(ValueError):
        with claim_timed(locks, ["0"]) as slot, slot.exclusive():
            assert held(locks / "gpu-0.timed") and held(locks / "gpu-0.turnstile")
            assert len(slot.paused) == 2 and all(is_stopped(pid) for pid in slot.paused)
            raise ValueError("cell crashed in its measured steps")
    assert not slot.held
    assert not held(locks / "gpu-0.timed") and not held(locks / "gpu-0.turnstile")
    assert not any(is_stopped(pid) for pid in slot.paused)
    assert open_fds() == fds and children(os.getpid()) == helpers

    with claim_timed(locks, ["0"]) as slot:
        with pytest.raises(ValueError):
            with slot.exclusive():
                raise ValueError("crashed in exclusive(), caught by the job")
        assert slot.held and held(locks / "gpu-0.timed") and not held(locks / "gpu-0.turnstile")
        assert not any(is_stopped(pid) for pid in slot.paused)

        def cannot_fork(*args: object, **kwargs: object) -> None:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

        with monkeypatch.context() as patch, pytest.raises(OSError):
            patch.setattr(gpuslots.subprocess, "Popen", cannot_fork)  # exclusive() fails after stopping the workers
            with slot.exclusive():
                pass
        assert slot.held and held(locks / "gpu-0.timed") and not held(locks / "gpu-0.turnstile")
        assert not any(is_stopped(pid) for pid in slot.paused)
        with slot.exclusive():  # a second exclusive phase in the same job
            assert all(is_stopped(pid) for pid in slot.paused)
        assert not any(is_stopped(pid) for pid in slot.paused)
        with pytest.raises(TimeoutError):  # a claim that gives up leaves nothing behind either
            claim_timed(locks, ["0"], poll_s=0.01, timeout_s=0.1)
    slot.release()  # twice is harmless
    with claim_timed(locks, ["0"]) as slot, slot.exclusive():
        slot.release()  # inside exclusive(): its exit must not close anything twice
    assert not held(locks / "gpu-0.timed") and not held(locks / "gpu-0.turnstile")
    assert not any(is_stopped(pid) for pid in slot.paused)
    assert open_fds() == fds and children(os.getpid()) == helpers
    for path in worker.tick_files():
        wait_until(lambda: len(read_ticks(path)) > 20, timeout=5, what=f"{path.name} ticking on")


def claim_warmup_at_once(lock_dir: Path, gpus: list[str]) -> str:
    """The device claim_warmup chooses; it must answer at once (in a thread, so that a wait fails the test)."""
    chosen: list[str] = []
    thread = threading.Thread(target=lambda: chosen.append(claim_warmup(lock_dir, gpus).device_id), daemon=True)
    thread.start()
    thread.join(timeout=5)  # were it to wait for a timed job, it would wait until the end of the test
    assert not thread.is_alive(), "claim_warmup waited for a timed job"
    return chosen[0]


def test_warmup_prefers_a_gpu_without_timed_job_and_never_waits(jobs: Jobs) -> None:
    with claim_warmup(jobs.locks, ["0", "1"]) as slot:
        assert slot.gpu == os.getpid() % 2  # spread by pid among equals
        assert not slot.held  # a warm-up holds no lock
    quiet = jobs.timed("0,1", hold=-1, mode="claim")  # GPU 0: a timed job, not exclusive
    quiet.started()
    assert claim_warmup_at_once(jobs.locks, ["0", "1"]) == "1"
    assert claim_warmup_at_once(jobs.locks, ["1", "0"]) == "1"
    busy = jobs.timed("0,1", hold=-1)  # GPU 1: a timed job in its exclusive section
    assert busy.started()["device"] == "1"
    assert claim_warmup_at_once(jobs.locks, ["0", "1"]) in {"0", "1"}  # none free of timed jobs: any will do
    assert claim_warmup_at_once(jobs.locks, ["1"]) == "1"


def test_capped_warmups_on_a_gpu_are_as_many_as_fit_beside_its_timed_job(tmp_path: Path) -> None:
    gib = 2**30
    # 141 GiB and a 12 GiB cap: 9 warm-ups of 13 GiB (cap and context) beside the timed job's 13 GiB.
    assert gpuslots.warmups_per_gpu(141 * gib, 12 * gib) == 9
    assert gpuslots.warmups_per_gpu(24 * gib, 12 * gib) == 1  # at least one, even where two do not fit
    assert gpuslots.warmups_per_gpu(None, 12 * gib) is None and gpuslots.warmups_per_gpu(80 * gib, None) is None
    locks = tmp_path / "locks"
    a, b = claim_warmup(locks, ["0"], per_gpu=2), claim_warmup(locks, ["0"], per_gpu=2)
    assert a.held and b.held  # each warm-up holds a seat of its GPU
    with pytest.raises(TimeoutError, match="no warm-up slot"):
        claim_warmup(locks, ["0"], per_gpu=2, timeout_s=0.3)  # a third waits for a seat
    with claim_warmup(locks, ["0", "1"], per_gpu=2, timeout_s=0.3) as c:
        assert c.device_id == "1"  # or takes another GPU's
    b.release()
    with claim_warmup(locks, ["0"], per_gpu=2, timeout_s=5) as d:
        assert d.device_id == "0" and d.held
    a.release()


def test_a_capped_warmup_job_claims_its_gpu_with_the_bound_for_its_cap(tmp_path: Path, monkeypatch) -> None:
    import argparse
    import contextlib

    from attnsweep import cli

    seen = {}

    def fake_claim(lock_dir, gpus, *, per_gpu=None):
        seen.update(gpus=gpus, per_gpu=per_gpu)
        return claim_warmup(lock_dir, gpus)

    from attnsweep import sweep
    from test_sweep import config

    monkeypatch.setattr(gpuslots, "visible_gpus", lambda config_value=None: ["0"])
    monkeypatch.setattr(gpuslots, "claim_warmup", fake_claim)
    monkeypatch.setattr(cli.os, "environ", dict(os.environ))  # the claim sets CUDA_VISIBLE_DEVICES
    # The sweep's job options for an H200 (nvidia-smi's 143,771 MiB) under the 12 GiB cap, as a warm-up job gets them.
    options = sweep.plan_run(config(), {}, gpus=["0"]).job_options(["0"], 143771 * 2**20)
    per_gpu = int(options[options.index("--warmups-per-gpu") + 1])
    args = argparse.Namespace(gpu_locks=str(tmp_path / "locks"), gpus=None, memory_cap_gib=12.0,
                              warmups_per_gpu=per_gpu, compile_seats=0)
    with contextlib.ExitStack() as stack:
        cli._claim(args, stack, "warmup")
    assert seen == {"gpus": ["0"], "per_gpu": 9}


def test_compile_seats_where_the_cap_leaves_room_for_one_running_warm_up_only(tmp_path: Path) -> None:
    gib = 2**30
    h200 = 143771 * 2**20  # nvidia-smi's MiB
    # A 45 GiB cap: two warm-ups of 46 GiB beside the timed job's, or one running and 8 compiling at 6 GiB each.
    assert gpuslots.warmups_per_gpu(h200, 45 * gib) == 2
    assert gpuslots.warmup_seats(h200, 45 * gib) == (1, 8)
    assert gpuslots.warmup_seats(h200, 45 * gib, compile_seats=5) == (1, 5)
    assert gpuslots.warmup_seats(h200, 45 * gib, compile_seats=0) == (2, 0)
    assert gpuslots.warmup_seats(h200, 45 * gib, compile_seats=3) == (2, 0)  # fewer than twice the plain seats
    # A 12 GiB cap: nine whole seats already, more than eight compiling would add.
    assert gpuslots.warmup_seats(h200, 12 * gib) == (9, 0)
    assert gpuslots.warmup_seats(None, 45 * gib) == (None, 0)
    locks = tmp_path / "locks"
    with claim_warmup(locks, ["0"], per_gpu=2, seat="compile") as a, claim_warmup(locks, ["0"], per_gpu=2,
                                                                                  seat="compile") as b:
        assert a.held and b.held
        with pytest.raises(TimeoutError):
            claim_warmup(locks, ["0"], per_gpu=2, seat="compile", timeout_s=0.3)
        with claim_warmup(locks, ["0"], per_gpu=1, timeout_s=0.3) as whole:  # other files than the compile seats
            assert whole.held
    assert held(locks / "gpu-0.compile-0") is False


H100 = 81559 * 2**20  # nvidia-smi's MiB


# A 45 GiB cap on an H100: the one plain seat (the least warmups_per_gpu gives) is more than fits beside the timed
# job; instead compile seats of 6 GiB beside one process of 46 GiB, which is a timed job or a compiled warm-up. Where
# two processes fit, the run seat beside the timed job as before (36 GiB caps: 74 of 79.6 GiB, 5.6 left).
@pytest.mark.parametrize(("gpu_bytes", "cap_gib", "most", "seats"), [
    (H100, 45, None, (0, 5)), (H100, 45, 3, (0, 3)), (H100, 45, 0, (1, 0)),
    (H100, 45, 1, (1, 0)),  # fewer than twice the plain seats
    (58 * 2**30, 45, None, (0, 2)), (57 * 2**30, 45, None, (1, 0)),  # one compile seat beside the process: as before
    (H100, 36, None, (1, 0)), (H100, 30, None, (1, 2)),
])
def test_where_two_processes_do_not_fit_warm_ups_run_their_steps_in_the_timed_jobs_place(
        gpu_bytes: int, cap_gib: int, most: int | None, seats: tuple[int, int]) -> None:
    assert gpuslots.warmups_per_gpu(gpu_bytes, cap_gib * 2**30) == 1
    assert gpuslots.warmup_seats(gpu_bytes, cap_gib * 2**30, compile_seats=most) == seats


def test_a_run_seat_of_none_is_the_timed_jobs_lock(tmp_path: Path) -> None:
    """Run seats 0: a compiled warm-up waits for the GPU's timed job to end and holds the GPU's timed lock for its
    steps, so that no timed job starts beside it."""
    locks = tmp_path / "locks"
    waited: list[float] = []
    with claim_timed(locks, ["0"]) as timed:
        with gpuslots.run_seat(locks, "0", 0) as take:
            thread = threading.Thread(target=lambda: waited.append(take()), daemon=True)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # the timed job holds the GPU
            timed.release()
            thread.join(5)
            assert waited and waited[0] >= 0.4 and held(locks / "gpu-0.timed")
            with pytest.raises(TimeoutError):
                claim_timed(locks, ["0"], timeout_s=0.3)  # no timed job beside the warm-up's steps
            assert not (locks / "gpu-0.warmup-0").exists()  # no other seat file: the timed lock is the seat
    assert held(locks / "gpu-0.timed") is False
    with claim_timed(locks, ["0"], timeout_s=5) as after:
        assert after.held


def test_a_run_seat_is_taken_when_asked_and_waits_for_a_free_one(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    seat = locks / "gpu-0.warmup-0"
    waited: list[float] = []
    with gpuslots.run_seat(locks, "0", 1) as other:
        with gpuslots.run_seat(locks, "0", 1) as take:
            assert held(seat) is False  # not before it is asked for
            assert take() >= 0 and held(seat)
            assert take() == 0  # once
            thread = threading.Thread(target=lambda: waited.append(other()), daemon=True)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # the GPU's one run seat is taken
        thread.join(5)  # given back at the block's end: the other takes it
        assert waited and waited[0] >= 0.4 and held(seat)
    assert held(seat) is False
    assert other() == 0 and held(seat) is False  # asked after its block (a callback left behind): nothing taken


def test_a_warm_up_job_with_compile_seats_claims_one_and_tells_its_workers(tmp_path: Path, monkeypatch) -> None:
    import argparse
    import contextlib

    from attnsweep import attempt, cli

    seen = {}

    def fake_claim(lock_dir, gpus, *, per_gpu=None, seat="warmup"):
        seen.update(per_gpu=per_gpu, seat=seat)
        return claim_warmup(lock_dir, gpus)

    monkeypatch.setattr(gpuslots, "visible_gpus", lambda config_value=None: ["0", "1"])
    monkeypatch.setattr(gpuslots, "claim_warmup", fake_claim)
    monkeypatch.setattr(cli.os, "environ", dict(os.environ))
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: set(range(32)))
    args = argparse.Namespace(gpu_locks=str(tmp_path / "locks"), gpus=None, memory_cap_gib=45.0,
                              warmups_per_gpu=1, compile_seats=8)
    with contextlib.ExitStack() as stack:
        cli._claim(args, stack, "warmup")
    assert seen == {"per_gpu": 8, "seat": "compile"}
    # Its workers take one of the GPU's run seats; 32 cores shared by 8 compiling warm-ups on each of 2 GPUs.
    assert cli.os.environ[attempt.RUN_SEATS_ENV] == "1" and cli.os.environ[attempt.COMPILE_THREADS_ENV] == "2"
    # Run seats 0 (an H100 under a 45 GiB cap): 5 compile, and each runs its steps in the timed job's place.
    args.warmups_per_gpu, args.compile_seats = 0, 5
    with contextlib.ExitStack() as stack:
        cli._claim(args, stack, "warmup")
    assert seen == {"per_gpu": 5, "seat": "compile"}
    assert cli.os.environ[attempt.RUN_SEATS_ENV] == "0" and cli.os.environ[attempt.COMPILE_THREADS_ENV] == "3"


@pytest.mark.parametrize("options", [["--warmups-per-gpu", "0"], ["--warmups-per-gpu", "-1", "--compile-seats", "4"]])
def test_a_warm_up_refuses_run_seats_it_cannot_take(tmp_path: Path, options: list[str], capsys) -> None:
    from attnsweep import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["warmup", "--model", "tiny", "--attn", "sdpa", "--mode", "eager", "--seq-len", "64", "--device",
                  "cpu", "--gpu-locks", str(tmp_path / "locks"), "--out", str(tmp_path / "w.json"),
                  "--cache", str(tmp_path / "cache"), *options])
    assert exit_.value.code == 2
    assert f"--warmups-per-gpu {options[1]}: at least 1, or 0 with --compile-seats" in capsys.readouterr().err
    assert not (tmp_path / "w.json").exists() and not (tmp_path / "locks").exists()


def test_a_killed_warmup_frees_its_seat(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from attnsweep.gpuslots import claim_warmup\n"
         f"s = claim_warmup({str(locks)!r}, ['0'], per_gpu=1); print('held', flush=True); time.sleep(600)"],
        env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError):
            claim_warmup(locks, ["0"], per_gpu=1, timeout_s=0.3)
        holder.kill()
        holder.wait(timeout=30)
        with claim_warmup(locks, ["0"], per_gpu=1, timeout_s=5) as slot:  # the kernel dropped the dead job's lock
            assert slot.held
    finally:
        holder.kill()


def test_lock_files_are_named_by_device_and_bad_lists_refused(tmp_path: Path) -> None:
    mig = "MIG-GPU-5c89/1/0"
    with claim_timed(tmp_path, [mig]) as slot:
        assert (slot.gpu, slot.device_id) == (0, mig)
        assert held(tmp_path / "gpu-MIG-GPU-5c89_1_0.timed")
        with gpu_worker(tmp_path, mig) as waited:
            assert waited < 1
            assert held(tmp_path / "gpu-MIG-GPU-5c89_1_0.workers" / str(os.getpid()))
        assert not (tmp_path / "gpu-MIG-GPU-5c89_1_0.workers" / str(os.getpid())).exists()  # unregistered
        with slot.exclusive():
            assert held(tmp_path / "gpu-MIG-GPU-5c89_1_0.turnstile")
            assert slot.paused == []
    assert claim_warmup(tmp_path, [mig]).device_id == mig
    with pytest.raises(ValueError, match="empty"):
        claim_timed(tmp_path, [])
    with pytest.raises(ValueError, match="twice"):
        claim_warmup(tmp_path, [0, "0"])
    with pytest.raises(ValueError, match="empty"):
        claim_warmup(tmp_path, [])


def fake_nvidia_smi(tmp_path: Path, body: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return {"PATH": str(bin_dir)}


def test_visible_gpus_config_wins_over_environment() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "5,6"}
    assert visible_gpus(env, [0, 1]) == ["0", "1"]
    assert visible_gpus(env, "2, 3") == ["2", "3"]
    assert visible_gpus(env, 4) == ["4"]
    assert visible_gpus(env, []) == []
    assert visible_gpus(env, [0, 1, 2], limit=2) == ["0", "1"]


def test_visible_gpus_from_cuda_visible_devices() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,3"}) == ["1", "3"]
    uuids = "GPU-8e1c2b3a-0000-1111-2222-333344445555,GPU-9f2d3c4b-0000-1111-2222-333344445555"
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": uuids}) == uuids.split(",")
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,2,-1,3"}) == ["0", "2"]  # CUDA stops at an invalid index
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, limit=2) == ["0", "1"]


def test_visible_gpus_from_nvidia_smi(tmp_path: Path) -> None:
    listing = (
        "GPU 0: NVIDIA H200 (UUID: GPU-aaaa)\\n"
        "GPU 1: NVIDIA H200 (UUID: GPU-bbbb)\\n"
        "  MIG 1g.18gb     Device  0: (UUID: MIG-cccc)\\n"
    )
    env = fake_nvidia_smi(tmp_path, f'printf "{listing}"')
    assert visible_gpus(env) == ["0", "1"]
    assert visible_gpus(env, limit=1) == ["0"]


def test_visible_gpus_without_a_working_nvidia_smi(tmp_path: Path) -> None:
    assert visible_gpus({"PATH": str(tmp_path)}) == []  # not installed
    env = fake_nvidia_smi(tmp_path, 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    assert visible_gpus(env) == []


def test_a_timed_cells_window_is_entered_inside_its_gpus_exclusive_phase() -> None:
    """Even where the window starts at the first step: a window outside the GPU's exclusive phase could wait for a
    worker of its own GPU that holds the turnstile while waiting for that window (gpuslots, No deadlock)."""
    from contextlib import ExitStack, contextmanager

    from attnsweep.cli import _hooks

    calls: list[str] = []

    class Slot:
        @contextmanager
        def exclusive(self):
            calls.append("gpu")
            yield
            calls.append("gpu back")

        @contextmanager
        def quiet(self, turns=True):
            calls.append("host")
            yield
            calls.append("host back")

    with ExitStack() as stack:
        hooks = _hooks(Slot(), stack)
        hooks.before_window()
        hooks.after_first_step()
    assert calls == ["gpu", "host", "host back", "gpu back"]
    calls.clear()
    with ExitStack() as stack:
        hooks = _hooks(Slot(), stack)
        hooks.after_first_step()
        hooks.before_window()
        hooks.after_window()  # the host goes back after the window; the GPU stays to the job's end (profiled step)
        assert calls == ["gpu", "host", "host back"]
    assert calls == ["gpu", "host", "host back", "gpu back"]
