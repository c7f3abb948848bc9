"""Per-GPU locks for a sweep that runs on K GPUs of one host: timed cells alone, warm-ups beside them.

Snakemake assigns no GPU ids: ``--resources gpu=K`` only bounds how many GPU jobs run at once. Each job therefore
picks its GPU itself, through ``flock(2)`` locks on files in a lock directory shared by the sweep's jobs, and sets
``CUDA_VISIBLE_DEVICES`` to the slot's :attr:`device_id` before CUDA starts (this module sets nothing globally and
imports no torch).

Two kinds of job use a GPU:

* a **timed** job (:func:`claim_timed`) measures a cell. It takes the GPU's ``timed`` lock (at most one timed job per
  GPU), may then do untimed work there (loading its compiled code, its first step), and wraps its measured steps in
  :meth:`TimedSlot.exclusive`, which makes it the only process running work on the GPU for that long;
* a **warm-up** job (:func:`claim_warmup`) compiles a cell's model and runs a few steps. Any number of them share a
  GPU, with each other and with a timed job's untimed phase. The process that runs a warm-up's GPU work registers
  with :func:`gpu_worker`; a timed job's exclusive phase stops every registered worker of its GPU and the worker's
  own processes (Inductor's compiler pool) with SIGSTOP, and lets them go on after (SIGCONT). Stopping, rather than
  waiting for them, keeps the GPU measuring: a warm-up compiles for a minute, a timed job measures for seconds.
  Stopping the compilers too keeps the CPU to the timed job: on an H200, cells whose steps are host-bound measured
  2-11% less beside running compilations.

A timed job's measured window (:meth:`TimedSlot.quiet`) goes further and stops the warm-up workers of every GPU of the
sweep, and every other GPU's timed slot outside its own window (:meth:`TimedSlot.stoppable`: a timed job's start,
loading its compiled code and its steps before its window; an uncapped warm-up's attempts), registered as workers of
the pseudo-device :data:`TIMED_WORKERS`; windows take turns, one at a time on the host (with ``turns`` False they may
overlap, and a timed job leaves :data:`TIMED_WORKERS` at the end of its first step instead). Steps that wait on the
host slow down when other cores compile (on an H200 host of two GPUs, one cell's profiled optimizer step spanned
2.2 ms of the GPU's timeline in the cold path and 3.8-4.0 ms beside other GPUs' warm-ups and a test suite, its
kernels' times unchanged, and the cell measured 12-17% less). The window is a second
or two. With only warm-ups stopped, the host-bound cells whose steps run Python between kernels (`fa2`,
`fa2_graphbreak`) measured 9-21% less on a host of two H200s with two GPUs than with one, 2-4 other cores busy in
their windows (window_conditions) against about 1 on one GPU; `sdpa` cells, one compiled graph a step, agreed within
3%. A window stops the other GPUs' timed jobs for its length (it gives the host back after its last step,
synchronized; 0.5-3.4 s in the H200 records), which costs their GPUs that long; they are stopped only outside their
own windows, in steps they do not measure.

Files, per GPU (``gpu-<device id>.<name>`` in the lock directory; created on first use, never removed):

``timed``
    exclusive lock held by the GPU's timed job for the whole job.
``turnstile``
    held (exclusive) by a timed job during its exclusive phase; a worker takes it for the instant of registering,
    so none registers during an exclusive phase.
``workers/<pid>``
    one file per registered worker, locked by it while it lives (a file nobody locks is a dead worker's, removed by
    the next exclusive phase).
``warmup-<i>``, ``compile-<i>``
    a capped warm-up's seats (:func:`warmup_seats`), each locked by its holder: a whole process's memory for the
    warm-up job, or, with compile seats, one compiling job's each (:func:`claim_warmup`) and the run seats its
    workers take once compiled (:func:`run_seat`). A worker waits for a run seat holding only what a compile seat
    counts, and a run seat's holder waits for no seat (a timed job may stop it, and waits for no warm-up): no cycle.
    Where no run seat fits beside the timed job (run seats 0), a compiled worker takes the GPU's ``timed`` lock for
    its steps instead: it then waits for the timed job, which waits for no warm-up, as a timed job waits for it.

Files of the host (``host.<name>``):

``mutex``
    taken for the instant of stopping workers, letting them go on, or registering one: these never interleave.
``stoppers/<pid>.<scope>``
    one file per section that keeps workers stopped (an exclusive phase, scope ``gpu-<id>``, or a measured window,
    scope ``host``), locked by its process while the section lasts; it lists the pids the section stopped, each
    written before its SIGSTOP. A section that ends lets go on only the pids no other live section holds, so
    overlapping sections of several GPUs never resume each other's workers. A file nobody locks is a dead job's:
    whoever meets it next (under ``mutex``) lets its pids go on, as its guard process does.

Why this is correct:

1. Exclusivity: a timed job holds ``turnstile`` for its whole exclusive phase, and lists and stops the workers only
   after taking it. A worker registers only while holding ``turnstile``, so every worker that may run GPU work
   during the phase was registered before it and is stopped; none registers during it. Two timed jobs never share a
   GPU: both hold ``timed`` exclusive. Kernels a worker queued before it was stopped finish within milliseconds; the
   timed job's measured window starts many steps after the exclusive phase does.
2. No deadlock: a worker waits on ``turnstile``, which a timed job releases at the end of its phase, then for the
   measured windows to end; a timed job never waits for a worker, and enters its window only inside its exclusive
   phase (so a worker of its own GPU never holds ``turnstile`` waiting for that window).
3. Crashes: a flock lock belongs to the open file; the kernel drops it when the process exits in any way
   (exception, ``SIGKILL``, OOM killer). A timed job that dies inside a section cannot send SIGCONT: a guard process
   it starts before stopping anything lets go on, when it finds the job gone, every pid only dead sections hold.
4. Overlap: stopping, resuming and registering happen under ``mutex``; a section resumes only pids no live section
   holds, and a worker registers only when no measured window is live, so no window ever has a worker running.
5. Windows in turn: a window begins only when no other window is live (checked under ``mutex`` as it begins), and a
   timed slot leaves :data:`TIMED_WORKERS` before its window, so a window never stops another window's process. A
   window waits only for windows, which wait for nothing once begun.

Caveats: the lock directory must be on a local filesystem (flock over NFS is emulated and not to be relied on). The
timed lock is held by the process that claimed it: work it protects must run in that process or in a child it waits
for. All jobs of a sweep must name GPUs the same way (``"0"`` and that GPU's UUID are different lock files): take
the list from :func:`visible_gpus` in every job.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["TIMED_WORKERS", "WINDOWS_ENV", "TimedSlot", "WarmupSlot", "claim_timed", "claim_warmup", "gpu_memory",
           "gpu_worker", "run_seat", "visible_gpus", "warmup_seats", "warmups_per_gpu"]

POLL_S = 0.05
# The pseudo-device whose workers are timed slots outside their measured window (TimedSlot.stoppable): every window
# on the host stops them, as it stops every GPU's warm-ups. Not a CUDA device name, so no lock file clashes.
TIMED_WORKERS = "timed-slots"
# Set in a timed job's process: how its window kept apart from other GPUs' (the record's env.windows).
WINDOWS_ENV = "ATTNSWEEP_WINDOWS"


def _gpu_tag(device_id: str) -> str:
    # UUIDs are filename-safe; MIG ids contain '/'.
    return f"gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', device_id)}"


def _lock_path(lock_dir: Path, device_id: str, name: str) -> Path:
    return lock_dir / f"{_gpu_tag(device_id)}.{name}"


def _open(lock_dir: Path, device_id: str, name: str) -> int:
    # os.open descriptors are not inherited across exec (PEP 446), so a child process never keeps a lock alive.
    return os.open(_lock_path(lock_dir, device_id, name), os.O_RDWR | os.O_CREAT, 0o666)


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _devices(gpus: Sequence[str | int]) -> list[str]:
    devices = [str(g) for g in gpus]
    if not devices:
        raise ValueError("no GPU to claim: the list of GPUs is empty")
    if len(set(devices)) != len(devices):
        raise ValueError(f"GPU list names a GPU twice: {devices}")
    return devices


def _check_timeout(started: float, timeout_s: float | None, what: str) -> None:
    if timeout_s is not None and time.monotonic() - started >= timeout_s:
        raise TimeoutError(f"no {what} slot within {timeout_s} s")


class _Slot:
    """A claimed GPU: :attr:`gpu` indexes the claimed list, :attr:`device_id` goes into CUDA_VISIBLE_DEVICES."""

    def __init__(self, lock_dir: Path, gpu: int, device_id: str, fds: list[int], wait_s: float) -> None:
        self.lock_dir = lock_dir
        self.gpu = gpu
        self.device_id = device_id
        self.wait_s = wait_s  # seconds the claim waited for a free slot
        self._fds = fds

    @property
    def held(self) -> bool:
        return bool(self._fds)

    def release(self) -> None:
        """Give the slot back (closing the descriptors drops their locks); safe to call twice."""
        fds, self._fds = self._fds, []
        for fd in reversed(fds):
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"{type(self).__name__}(gpu={self.gpu}, device_id={self.device_id!r}, {state})"


# Run by a timed job's guard process, started before any worker is stopped: when the timed job is gone, every pid
# that only dead sections hold goes on (a stopped process would otherwise wait for ever). A section writes each pid
# to its file before stopping it, so a job killed between two SIGSTOPs leaves none stopped.
_GUARD = """
import os, sys, time
from attnsweep.gpuslots import reap_stoppers
parent, lock_dir = int(sys.argv[1]), sys.argv[2]
while True:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(0.2)
reap_stoppers(lock_dir)
"""


def _host_path(lock_dir: Path, name: str) -> Path:
    return lock_dir / f"host.{name}"


@contextmanager
def _host_mutex(lock_dir: Path) -> Iterator[None]:
    fd = os.open(_host_path(lock_dir, "mutex"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stoppers(lock_dir: Path) -> tuple[dict[str, list[int]], list[int]]:
    """The live sections' stopped pids by file name, and the pids of dead sections (whose files are removed).
    Call under the host mutex."""
    folder = _host_path(lock_dir, "stoppers")
    live: dict[str, list[int]] = {}
    orphans: list[int] = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            pids = [int(line) for line in os.read(fd, 1 << 20).decode().split()]
            if _try_lock(fd, fcntl.LOCK_EX):  # nobody holds it: its job is gone
                path.unlink(missing_ok=True)
                orphans += pids
            else:
                live[path.name] = pids
        finally:
            os.close(fd)
    return live, orphans


def _resume_unheld(lock_dir: Path, pids: Sequence[int]) -> None:
    """SIGCONT `pids` and every dead section's pids, except those a live section holds. Call under the host mutex."""
    live, orphans = _stoppers(lock_dir)
    held = {pid for stopped in live.values() for pid in stopped}
    _continue([pid for pid in dict.fromkeys([*pids, *orphans]) if pid not in held])


def reap_stoppers(lock_dir: str | os.PathLike[str]) -> None:
    """Let go on every worker that only dead sections held (a timed job's guard calls this when the job is gone)."""
    with _host_mutex(Path(lock_dir)):
        _resume_unheld(Path(lock_dir), [])


def _host_quiet(lock_dir: Path) -> bool:
    live, _ = _stoppers(lock_dir)
    return any(name.endswith(".host") for name in live)


def _worker_devices(lock_dir: Path) -> list[str]:
    return [p.name[len("gpu-"):-len(".workers")] for p in sorted(lock_dir.glob("gpu-*.workers")) if p.is_dir()]


@contextmanager
def _stopping(lock_dir: Path, scope: str, devices: Sequence[str], take_turn: bool = True) -> Iterator[list[int]]:
    """A section that stops the live workers of `devices` (and their descendants) and lets them go on at its end,
    unless another live section holds them; a window (`scope` host) with `take_turn` begins only when no other window
    is live. Yields the stopped pids."""
    guard = None
    fd = None
    stopped: list[int] = []
    folder = _host_path(lock_dir, "stoppers")
    folder.mkdir(exist_ok=True)
    path = folder / f"{os.getpid()}.{scope}"
    try:  # whatever fails from here on, the stopped workers go on
        while True:
            with _host_mutex(lock_dir):
                # Windows take turns (gpuslots, Windows in turn): checked and begun under one hold of the mutex.
                if not (scope == "host" and take_turn and _host_quiet(lock_dir)):
                    if any(_live_workers(lock_dir, d) for d in devices):
                        guard = subprocess.Popen([sys.executable, "-c", _GUARD, str(os.getpid()), str(lock_dir)],
                                                 start_new_session=True)
                    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    for device in devices:
                        _stop_workers(lock_dir, device, stopped, lambda pid: os.write(fd, f"{pid}\n".encode()))
                    break
            time.sleep(POLL_S)
        yield stopped
    finally:
        with _host_mutex(lock_dir):
            if fd is not None:
                path.unlink(missing_ok=True)
                os.close(fd)
            _resume_unheld(lock_dir, stopped)
        if guard is not None:
            guard.kill()
            guard.wait()


class TimedSlot(_Slot):
    """The one timed job of a GPU. Wrap the measured steps in :meth:`exclusive`, and the measured window in
    :meth:`quiet` inside it."""

    exclusive_wait_s: float | None = None  # seconds the last exclusive() waited for the turnstile
    paused: list[int] = []  # pids of the warm-up workers the last exclusive() stopped
    quieted: list[int] = []  # pids the last quiet() stopped
    _registration: ExitStack | None = None  # this process as a worker of TIMED_WORKERS (stoppable())

    def stoppable(self) -> None:
        """Until this slot's window or its release, this process is a worker of :data:`TIMED_WORKERS`: other GPUs'
        measured windows stop it (SIGSTOP) with its own processes, and let it go on after. Waits while a window is
        live. A timed job calls it at its start; an uncapped warm-up's attempts register there themselves."""
        if not self.held:
            raise RuntimeError("stoppable() on a released slot")
        if self._registration is None:
            registration = ExitStack()
            registration.enter_context(gpu_worker(self.lock_dir, TIMED_WORKERS))
            self._registration = registration

    def leave_stoppable(self) -> None:
        """No longer a worker of :data:`TIMED_WORKERS` (safe to call again)."""
        registration, self._registration = self._registration, None
        if registration is not None:
            registration.close()

    def release(self) -> None:
        self.leave_stoppable()
        super().release()

    @contextmanager
    def exclusive(self) -> Iterator[float]:
        """Be alone on the GPU: no new warm-up worker starts GPU work there, and the running ones are stopped
        (SIGSTOP) until the block ends (SIGCONT). Yields the seconds waited for the turnstile."""
        if not self.held:
            raise RuntimeError("exclusive() on a released slot")
        if len(self._fds) > 1:
            raise RuntimeError("exclusive() is not reentrant")
        started = time.monotonic()
        turnstile = _open(self.lock_dir, self.device_id, "turnstile")
        try:
            fcntl.flock(turnstile, fcntl.LOCK_EX)  # from here on no warm-up worker registers on this GPU
        except BaseException:
            os.close(turnstile)
            raise
        self._fds.append(turnstile)
        self.exclusive_wait_s = time.monotonic() - started
        try:
            with _stopping(self.lock_dir, _gpu_tag(self.device_id), [self.device_id]) as stopped:
                self.paused = stopped
                yield self.exclusive_wait_s
        finally:
            if turnstile in self._fds:  # a release() inside the block has closed it already
                self._fds.remove(turnstile)
                os.close(turnstile)

    @contextmanager
    def quiet(self, turns: bool = True) -> Iterator[list[int]]:
        """The measured window: once no other GPU's window is live, the warm-up workers of every GPU of the sweep
        and the other timed slots outside their windows (:meth:`stoppable`) are stopped, and none registers, until
        the block ends. Yields the pids it stopped (this GPU's, which its exclusive phase holds already, among them).
        Enter it inside :meth:`exclusive` (gpuslots, No deadlock). With `turns` False it does not wait for other
        windows (they may overlap); the timed slots it stops are then only those still starting."""
        if not self.held:
            raise RuntimeError("quiet() on a released slot")
        self.leave_stoppable()  # before waiting for other windows: they stop no process in a window (or about to be)
        with _stopping(self.lock_dir, "host", _worker_devices(self.lock_dir), take_turn=turns) as stopped:
            self.quieted = stopped
            yield stopped


def _workers_dir(lock_dir: Path, device_id: str) -> Path:
    return _lock_path(lock_dir, device_id, "workers")


def _live_workers(lock_dir: Path, device_id: str) -> list[int]:
    """The pids of the GPU's registered workers that are alive; the files of dead ones are removed."""
    folder = _workers_dir(Path(lock_dir), device_id)
    live = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # it unregistered just now
        try:
            if _try_lock(fd, fcntl.LOCK_EX):  # nobody holds it: its process is gone
                path.unlink(missing_ok=True)
                continue
        finally:
            os.close(fd)
        live.append(int(path.name))
    return live


def _stop_workers(lock_dir: Path, device_id: str, stopped: list[int],
                  record: Callable[[int], object] = lambda pid: None) -> None:
    """SIGSTOP every live registered worker of the GPU and its descendants. Appends each stopped pid to `stopped` as
    it goes, after `record(pid)`, which notes it where a guard can find it."""
    for worker in _live_workers(lock_dir, device_id):
        if worker == os.getpid():
            continue  # a timed slot that has not left TIMED_WORKERS: never itself
        # The worker and its compiler processes: their CPU work would slow a timed cell whose steps are host-bound.
        # The worker first, then its descendants until no new one shows up: a process found running may have
        # started another since the listing (a compiler pool starts its processes when compiling starts).
        if not _stop(worker, stopped, record):
            continue
        just_stopped = [worker]
        while True:
            # SIGSTOP takes effect when the process is next scheduled, so the section waits for each to show as
            # stopped: a process stopped in fact starts no other, so a listing after that is complete.
            _await_stopped(just_stopped)
            new = [pid for pid in _descendants(worker) if pid not in stopped]
            if not new:
                break
            just_stopped = [pid for pid in new if _stop(pid, stopped, record)]


def _await_stopped(pids: Sequence[int], timeout_s: float = 2.0) -> None:
    """Wait until every pid is stopped or gone, for at most `timeout_s` (a process inside an uninterruptible call
    stops only when the call returns; the section does not hang on it)."""
    deadline = time.monotonic() + timeout_s
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        pending = [pid for pid in pending if _state(pid) not in ("T", "t", "Z", "X", None)]
        if pending:
            time.sleep(0.001)


def _stat_fields(stat: Path) -> list[str] | None:
    """The fields of a /proc/<pid>/stat after the command name (state, parent pid, ...); None once it is gone."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _state(pid: int) -> str | None:
    """The process state letter (None where the process or /proc is gone)."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return fields[0] if fields else None


def _stop(pid: int, stopped: list[int], record: Callable[[int], object]) -> bool:
    record(pid)
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    stopped.append(pid)
    return True


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        if fields := _stat_fields(entry):
            children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _continue(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


@contextmanager
def gpu_worker(lock_dir: str | os.PathLike[str], device_id: str) -> Iterator[float]:
    """Register this process as a warm-up worker on GPU `device_id` for the block: a timed job of that GPU stops it
    (SIGSTOP) during its measured steps and lets it go on after. Waits while one is measuring; yields the wait."""
    lock_dir = Path(lock_dir)
    folder = _workers_dir(lock_dir, device_id)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    turnstile = _open(lock_dir, device_id, "turnstile")
    try:
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # not while a timed job is in its measured steps
        path = folder / str(os.getpid())
        while True:  # nor while any GPU's timed job is in its measured window
            with _host_mutex(lock_dir):
                if not _host_quiet(lock_dir):
                    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
                    fcntl.flock(fd, fcntl.LOCK_EX)  # held while alive: a file nobody holds is a dead worker's
                    break
            time.sleep(POLL_S)
    finally:
        os.close(turnstile)
    try:
        yield time.monotonic() - started
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


class WarmupSlot(_Slot):
    """A warm-up's GPU: the one its workers register on (:func:`gpu_worker`)."""


def claim_timed(
    lock_dir: str | os.PathLike[str],
    gpus: Sequence[str | int],
    *,
    poll_s: float = POLL_S,
    timeout_s: float | None = None,
) -> TimedSlot:
    """Claim a GPU of ``gpus`` that has no timed job, trying them in order; wait (polling) until one is free.

    ``gpus`` is the sweep's GPU list (:func:`visible_gpus`); the slot's ``gpu`` is the index into it and
    ``device_id`` its entry. Use as ``with claim_timed(d, gpus) as slot:``; ``slot.wait_s`` is the time waited.
    Under ``--resources gpu=K`` with K GPUs listed one is free soon; ``timeout_s`` (default: wait forever) raises
    ``TimeoutError``.
    """
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    devices = _devices(gpus)
    started = time.monotonic()
    while True:
        for index, device in enumerate(devices):
            fd = _open(lock_dir, device, "timed")
            if _try_lock(fd, fcntl.LOCK_EX):
                return TimedSlot(lock_dir, index, device, [fd], time.monotonic() - started)
            os.close(fd)
        _check_timeout(started, timeout_s, "timed")
        time.sleep(poll_s)


def _has_timed_job(lock_dir: Path, device: str) -> bool:
    # A probe by taking the lock: it is held for two system calls, and a timed claim that meets it just moves on.
    fd = _open(lock_dir, device, "timed")
    try:
        return not _try_lock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


# What a process holds on its GPU outside its memory cap: the CUDA context and its libraries' workspaces.
CONTEXT_BYTES = 2**30


def warmups_per_gpu(gpu_bytes: int | None, cap_bytes: int | None) -> int | None:
    """How many capped warm-ups fit on a GPU beside its timed job, each process allowed `cap_bytes` plus its
    context: (GPU - one process) // one process, at least 1; None (no bound) where either is unknown. More would let
    a warm-up's attempt run out of memory on a full GPU, which would be recorded as the cell's result (a smaller
    batch size, or `oom`)."""
    if not gpu_bytes or not cap_bytes:
        return None
    process = cap_bytes + CONTEXT_BYTES
    return max(1, (gpu_bytes - process) // process)


# What a compiling warm-up holds on its GPU before its compiled code first runs (warmup_seats): the CUDA context, the
# model's weights and the token batches (GPT-2 large's fp32 weights are 3 GiB); activations and optimizer state come
# with its first step, under a run seat.
COMPILE_SEAT_BYTES = 6 * 2**30
# Compile seats per GPU at most: each compiling process takes a core or two and a few GiB of host memory.
MAX_COMPILE_SEATS = 8


def warmup_seats(gpu_bytes: int | None, cap_bytes: int | None,
                 compile_seats: int | None = None) -> tuple[int | None, int]:
    """(run seats, compile seats) of a GPU's warm-ups beside its timed job.

    A capped warm-up's process may use its cap only once its compiled code runs; compiling (most of a warm-up's
    attempt: 36 of 41 s for GPT-2 small on the H200) it holds its weights and batches. With compile seats, any of
    them may compile at once, each counted at COMPILE_SEAT_BYTES, and one process at a time runs steps, in the one
    run seat a full process fits in beside the timed job's: the timed job + one run seat + the compile seats fit on
    the GPU. Used where at least twice as many compile as the plain seats of warmups_per_gpu allow; otherwise (run
    seats, 0): each warm-up holds a whole process's seat throughout, as before. `compile_seats`: at most that many
    (0: none; None: as many as fit, up to MAX_COMPILE_SEATS).

    Where two processes do not fit (a 45 GiB cap on an H100's 80 GB, whose one plain seat, the least
    warmups_per_gpu gives, would hold the GPU through each warm-up's compilation: on the H100 the warm-ups then ran
    one at a time and the GPU ran timed steps 30% of a part), run seats 0: a compiled warm-up runs its steps in the
    timed job's place (run_seat), never beside it, and the compile seats fit beside one process."""
    plain = warmups_per_gpu(gpu_bytes, cap_bytes)
    if plain is None or compile_seats == 0:
        return plain, 0
    process = cap_bytes + CONTEXT_BYTES
    run_seats = 1 if 2 * process <= gpu_bytes else 0
    # What the timed job and the run seat, if any, leave.
    room = gpu_bytes - (1 + run_seats) * process
    fit = min(MAX_COMPILE_SEATS if compile_seats is None else compile_seats, room // COMPILE_SEAT_BYTES)
    return (run_seats, fit) if fit >= 2 * plain else (plain, 0)


def claim_warmup(lock_dir: str | os.PathLike[str], gpus: Sequence[str | int], *, per_gpu: int | None = None,
                 seat: str = "warmup", poll_s: float = POLL_S, timeout_s: float | None = None) -> WarmupSlot:
    """Choose the GPU of ``gpus`` for a warm-up: one with no timed job if there is one (spread by pid among equals).

    The processes that run a warm-up's GPU work register with :func:`gpu_worker`, and a timed job stops them while it
    measures. With ``per_gpu`` (:func:`warmups_per_gpu`) at most that many warm-ups hold a GPU at once, each one of
    its ``per_gpu`` seat locks (released by the kernel if the job dies); a warm-up waits (polling) for a free seat.
    ``seat``: which seats, ``warmup`` (a whole process's) or ``compile`` (warmup_seats: its workers then take a run
    seat, :func:`run_seat`, before their compiled code runs). Use as ``with claim_warmup(d, gpus) as slot:``;
    ``slot.wait_s`` is the time waited.
    """
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    devices = _devices(gpus)
    start = os.getpid() % len(devices)
    order = [(start + i) % len(devices) for i in range(len(devices))]
    started = time.monotonic()
    while True:
        free = [i for i in order if not _has_timed_job(lock_dir, devices[i])]
        for index in free + [i for i in order if i not in free]:
            if per_gpu is None:
                return WarmupSlot(lock_dir, index, devices[index], [], time.monotonic() - started)
            for i in range(per_gpu):
                fd = _open(lock_dir, devices[index], f"{seat}-{i}")
                if _try_lock(fd, fcntl.LOCK_EX):
                    return WarmupSlot(lock_dir, index, devices[index], [fd], time.monotonic() - started)
                os.close(fd)
        _check_timeout(started, timeout_s, "warm-up")
        time.sleep(poll_s)


@contextmanager
def run_seat(lock_dir: str | os.PathLike[str], device_id: str, seats: int,
             poll_s: float = POLL_S) -> Iterator[Callable[[], float]]:
    """A compiling warm-up worker's run seat on GPU `device_id` (one of `seats`, warmup_seats), taken when the block
    calls what it yields (once its code is compiled: the call waits for a free seat and returns the seconds waited;
    later calls return 0) and held to the block's end; released by the kernel if the process dies. `seats` 0: the
    GPU's ``timed`` lock, the seat of its timed job."""
    lock_dir = Path(lock_dir)
    fds: list[int] = []
    ended: list[bool] = []
    names = [f"warmup-{i}" for i in range(seats)] if seats else ["timed"]

    def take() -> float:
        started = time.monotonic()
        while not fds and not ended:  # (a call after the block, from a callback left registered, takes nothing)
            for name in names:
                fd = _open(lock_dir, device_id, name)
                if _try_lock(fd, fcntl.LOCK_EX):
                    fds.append(fd)
                    return time.monotonic() - started
                os.close(fd)
            time.sleep(poll_s)
        return 0.0

    try:
        yield take
    finally:
        ended.append(True)
        for fd in fds:
            os.close(fd)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def visible_gpus(
    env: Mapping[str, str] = os.environ,
    config_value: str | int | Sequence[str | int] | None = None,
    limit: int | None = None,
) -> list[str]:
    """The GPUs the sweep may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs), at most ``limit`` of them.

    In order: ``config_value`` if given (a list, or a comma-separated string); else the sweep's own
    ``CUDA_VISIBLE_DEVICES`` if set (empty means no GPU; as in CUDA, a negative index ends the list); else the
    indices of the GPUs ``nvidia-smi -L`` lists (found on ``env``'s PATH; none when it is missing or fails).
    """
    if config_value is not None:
        if isinstance(config_value, str):
            devices = _split(config_value)
        elif isinstance(config_value, int):
            devices = [str(config_value)]
        else:
            devices = [str(v).strip() for v in config_value]
    elif "CUDA_VISIBLE_DEVICES" in env:
        devices = []
        for entry in _split(env["CUDA_VISIBLE_DEVICES"]):
            if re.fullmatch(r"-\d+", entry):
                break
            devices.append(entry)
    else:
        devices = _nvidia_smi_indices(env)
    return devices if limit is None else devices[:limit]


def _nvidia_smi_indices(env: Mapping[str, str]) -> list[str]:
    exe = shutil.which("nvidia-smi", path=env.get("PATH", os.defpath))
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    # "GPU 0: NVIDIA H200 (UUID: GPU-...)"; MIG devices are indented lines below their GPU and not counted.
    return [m.group(1) for m in re.finditer(r"^GPU (\d+):", out, re.MULTILINE)]


def gpu_memory(device_id: str, env: Mapping[str, str] = os.environ) -> tuple[str, int] | None:
    """(name, total memory in bytes) of one GPU as nvidia-smi reports it, without starting CUDA; None if unknown."""
    exe = shutil.which("nvidia-smi", path=env.get("PATH", os.defpath))
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits", "-i", device_id],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        name, mib = (part.strip() for part in out.splitlines()[0].rsplit(",", 1))
        return name, int(float(mib)) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
