"""Per-GPU locks for a sweep that runs on K GPUs of one host: timed cells alone, warm-ups beside them.

Snakemake assigns no GPU ids: ``--resources gpu=K`` only bounds how many GPU jobs run at once. Each job therefore
picks its GPU itself, through ``flock(2)`` locks on files in a lock directory shared by the sweep's jobs, and sets
``CUDA_VISIBLE_DEVICES`` to the slot's :attr:`device_id` before CUDA starts (this module sets nothing globally and
imports no torch).

Two kinds of job use a GPU:

* a **timed** job (:func:`claim_timed`) measures a cell. It takes the GPU's ``timed`` lock (at most one timed job per
  GPU), may then do untimed work there (its own compilation), and wraps its timed steps in
  :meth:`TimedSlot.exclusive`, which makes it the only user of the GPU for that long;
* a **warm-up** job (:func:`claim_warmup`) compiles a cell's model and runs a few steps. Any number of them may share a
  GPU, with each other and with a timed job's untimed phase, but never with its exclusive phase.

Files, per GPU (``gpu-<device id>.<name>`` in the lock directory; created on first use, never removed):

``timed``
    exclusive lock held by the GPU's timed job for the whole job.
``rw``
    readers-writer lock: warm-ups hold it shared for their whole run, a timed job holds it exclusive during
    :meth:`TimedSlot.exclusive`.
``turnstile``
    gives the writer preference: a timed job takes it (exclusive) *before* asking for ``rw`` and keeps it until it
    has released ``rw``; a warm-up must pass through it (exclusive, never blocking: it polls) before taking ``rw``
    shared, and lets it go at once.

Why this is correct (lock order is always ``timed`` -> ``turnstile`` -> ``rw``; nobody takes them the other way):

1. Exclusivity: during its exclusive phase the timed job holds ``rw`` exclusive, which the kernel grants only when no
   process holds it shared; every warm-up holds ``rw`` shared for its whole run. So no warm-up runs during a timed
   section, and none starts during one. Two timed jobs never share a GPU: both hold ``timed`` exclusive.
2. Writer preference: a writer holds ``turnstile`` from before its request for ``rw`` until after it released ``rw``.
   A warm-up takes ``rw`` only while it holds ``turnstile``, so while a timed job waits for ``rw`` (or holds it) no new
   warm-up can start on that GPU; the writer waits only for the warm-ups that were already running. Linux's flock
   queues no waiters, so without the turnstile a steady stream of overlapping warm-ups could hold ``rw`` shared
   forever.
3. No deadlock: ``rw`` exclusive is held only by a process that also holds ``turnstile``, so a warm-up that holds
   ``turnstile`` always gets ``rw`` shared at once and never waits while holding it; the writer waits for ``rw`` only
   on warm-ups, which hold nothing else and finish on their own. A writer competes with warm-ups for ``turnstile``
   only during their two system calls of passage (warm-ups take it exclusive, so they cannot keep it shared among
   themselves and starve the writer).
4. Crashes: a flock lock belongs to the open file; the kernel drops it when the last descriptor closes, which happens
   when the process exits in any way (exception, ``SIGKILL``, OOM killer). No state needs cleaning: a lock file left
   behind is inert while nobody holds a lock on it.

Caveats: the lock directory must be on a local filesystem (flock over NFS is emulated and not to be relied on). The
lock is held by the process that claimed it: work the slot protects must run in that process or in a child it waits
for (a ``fork`` without ``exec`` shares the locks; ``subprocess`` children do not inherit them). All jobs of a sweep
must name GPUs the same way (``"0"`` and that GPU's UUID are different lock files): take the list from
:func:`visible_gpus` in every job.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["TimedSlot", "WarmupSlot", "claim_timed", "claim_warmup", "visible_gpus"]

POLL_S = 0.05


def _lock_path(lock_dir: Path, device_id: str, name: str) -> Path:
    # UUIDs are filename-safe; MIG ids contain '/'.
    return lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', device_id)}.{name}"


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


class TimedSlot(_Slot):
    """The one timed job of a GPU. Wrap the timed steps in :meth:`exclusive`."""

    exclusive_wait_s: float | None = None  # seconds the last exclusive() waited for running warm-ups

    @contextmanager
    def exclusive(self) -> Iterator[float]:
        """Be alone on the GPU: block new warm-ups there, wait for running ones, yield the seconds waited."""
        if not self.held:
            raise RuntimeError("exclusive() on a released slot")
        if len(self._fds) > 1:
            raise RuntimeError("exclusive() is not reentrant")
        started = time.monotonic()
        turnstile = _open(self.lock_dir, self.device_id, "turnstile")
        acquired = [turnstile]
        try:
            fcntl.flock(turnstile, fcntl.LOCK_EX)  # from here on no new warm-up starts on this GPU
            acquired.append(_open(self.lock_dir, self.device_id, "rw"))
            fcntl.flock(acquired[-1], fcntl.LOCK_EX)  # waits for the warm-ups already running here
        except BaseException:
            for fd in acquired:
                os.close(fd)
            raise
        self._fds += acquired  # release() closes them in reverse: rw before turnstile
        self.exclusive_wait_s = time.monotonic() - started
        try:
            yield self.exclusive_wait_s
        finally:
            # rw before turnstile: a warm-up let through the turnstile must find rw free (point 3 above).
            # Skips what a release() inside the block has closed already.
            for fd in reversed(acquired):
                if fd in self._fds:
                    self._fds.remove(fd)
                    os.close(fd)


class WarmupSlot(_Slot):
    """A warm-up's shared hold on a GPU: never overlaps a timed job's exclusive phase there."""


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


def _try_reader(lock_dir: Path, device: str) -> int | None:
    """Take ``rw`` shared through the turnstile without blocking; the ``rw`` descriptor, or None."""
    turnstile = _open(lock_dir, device, "turnstile")
    try:
        # Fails while a timed job waits for or holds the GPU (or, for an instant, while another warm-up passes).
        if not _try_lock(turnstile, fcntl.LOCK_EX):
            return None
        rw = _open(lock_dir, device, "rw")
        # Cannot fail while we hold the turnstile (module docstring, point 3); kept non-blocking all the same.
        if _try_lock(rw, fcntl.LOCK_SH):
            return rw
        os.close(rw)
        return None
    finally:
        os.close(turnstile)


def _has_timed_job(lock_dir: Path, device: str) -> bool:
    # A probe by taking the lock: it is held for two system calls, and a timed claim that meets it just moves on.
    fd = _open(lock_dir, device, "timed")
    try:
        return not _try_lock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


def claim_warmup(
    lock_dir: str | os.PathLike[str],
    gpus: Sequence[str | int],
    *,
    poll_s: float = POLL_S,
    timeout_s: float | None = None,
) -> WarmupSlot:
    """Take a shared hold on one GPU of ``gpus`` for a warm-up; wait (polling) while every GPU is timed exclusively.

    Preference: a GPU with no timed job at all (so no timed job will later wait for this warm-up), then a GPU whose
    timed job is not in (or waiting for) its exclusive phase. Warm-ups spread over equally good GPUs by pid. Use as
    ``with claim_warmup(d, gpus) as slot:``; ``slot.wait_s`` is the time waited, ``timeout_s`` as in
    :func:`claim_timed`.
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
            rw = _try_reader(lock_dir, devices[index])
            if rw is not None:
                return WarmupSlot(lock_dir, index, devices[index], [rw], time.monotonic() - started)
        _check_timeout(started, timeout_s, "warm-up")
        time.sleep(poll_s)


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
