"""The per-GPU locks of gpuslots, exercised by real processes on the CPU (no GPU is touched: only lock files).

Each job is a small Python process (JOB below) that claims a slot, records when its critical section started and
ended (time.monotonic, one clock for the whole machine) and which GPU it got. The assertions are on the order of
those intervals, never on how long anything took, so a slow machine only makes the tests slower.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnsweep import gpuslots
from attnsweep.gpuslots import claim_timed, claim_warmup, visible_gpus

SRC = Path(gpuslots.__file__).resolve().parents[1]

# argv: kind lock_dir gpus(comma-separated) hold_s out_file [untimed_s]
#   claim:   hold a timed slot for hold_s (the critical section is the claim itself)
#   timed:   claim a timed slot, untimed_s of untimed work, then hold_s inside exclusive()
#   warmup:  hold a warm-up slot for hold_s
#   sit-timed / sit-exclusive / sit-warmup: take the slot, write <out>.ready, sleep until killed
# A negative hold_s holds until the test creates <out>.go.
JOB = r"""
import json, sys, time
from pathlib import Path
from attnsweep.gpuslots import claim_timed, claim_warmup
kind, lock_dir, gpus, hold, out = sys.argv[1], sys.argv[2], sys.argv[3].split(","), float(sys.argv[4]), sys.argv[5]
untimed = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
ready = Path(out + ".ready")

def critical(slot, wait):
    start = time.monotonic()
    ready.touch()
    if kind.startswith("sit"):
        time.sleep(1000)
    while hold < 0 and not Path(out + ".go").exists():
        time.sleep(0.005)
    time.sleep(max(hold, 0))
    end = time.monotonic()
    Path(out).write_text(json.dumps(dict(kind=kind, gpu=slot.gpu, device=slot.device_id, start=start, end=end,
                                         wait=wait, claim_wait=slot.wait_s)))

if kind in ("claim", "sit-timed"):
    with claim_timed(lock_dir, gpus, poll_s=0.01) as slot:
        critical(slot, slot.wait_s)
elif kind in ("timed", "sit-exclusive"):
    with claim_timed(lock_dir, gpus, poll_s=0.01) as slot:
        time.sleep(untimed)
        with slot.exclusive() as waited:
            critical(slot, waited)
else:
    with claim_warmup(lock_dir, gpus, poll_s=0.01) as slot:
        critical(slot, slot.wait_s)
"""


class Jobs:
    """Starts JOB processes and collects their records."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.locks = tmp_path / "locks"
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self.env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def start(self, kind: str, gpus: str, hold: float, untimed: float = 0.0) -> Path:
        out = self.dir / f"job{len(self.procs)}.json"
        args = [sys.executable, "-c", JOB, kind, str(self.locks), gpus, str(hold), str(out), str(untimed)]
        self.procs.append((subprocess.Popen(args, env=self.env), out))
        return out

    def wait_ready(self, out: Path, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not Path(f"{out}.ready").exists():
            assert time.monotonic() < deadline, f"{out.name} never got its slot"
            time.sleep(0.005)

    def finish(self, timeout: float = 30.0) -> list[dict]:
        for proc, _ in self.procs:
            assert proc.wait(timeout=timeout) == 0
        return [json.loads(out.read_text()) for _, out in self.procs]

    def kill_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def jobs(tmp_path: Path):
    jobs = Jobs(tmp_path)
    yield jobs
    jobs.kill_all()


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


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.005)


def overlaps(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def nothing_held(lock_dir: Path) -> bool:
    return not any(held(p) for p in lock_dir.iterdir())


def test_two_gpus_two_timed_jobs_get_different_gpus_and_a_third_waits(jobs: Jobs) -> None:
    first = jobs.start("claim", "0,1", hold=0.6)
    second = jobs.start("claim", "0,1", hold=0.6)
    jobs.wait_ready(first)
    jobs.wait_ready(second)
    third = jobs.start("claim", "0,1", hold=0.0)
    a, b, c = jobs.finish()
    assert {a["gpu"], b["gpu"]} == {0, 1}
    assert {a["device"], b["device"]} == {"0", "1"}
    previous = a if a["gpu"] == c["gpu"] else b
    assert c["start"] >= previous["end"]  # it got a GPU only when that GPU's timed job let it go
    assert c["claim_wait"] > 0.05


@pytest.mark.parametrize("gpus", ["0", "0,1"])
def test_timed_sections_never_overlap_anything_on_their_gpu_and_warmups_share(jobs: Jobs, gpus: str) -> None:
    for _ in range(3):
        jobs.start("timed", gpus, hold=0.15, untimed=0.1)
    for _ in range(6):
        jobs.start("warmup", gpus, hold=0.4)
    records = jobs.finish()
    timed = [r for r in records if r["kind"] == "timed"]
    warmups = [r for r in records if r["kind"] == "warmup"]
    for t in timed:
        others = [r for r in records if r is not t and r["gpu"] == t["gpu"]]
        assert not [o for o in others if overlaps(t, o)], f"a timed section shared its GPU: {t}"
    shared = [(a, b) for a in warmups for b in warmups if a is not b and a["gpu"] == b["gpu"] and overlaps(a, b)]
    assert shared, "no two warm-ups ever ran together on one GPU"
    if gpus == "0,1":
        assert {r["gpu"] for r in timed} == {0, 1}


def test_warmups_share_a_gpu(jobs: Jobs) -> None:
    # All three hold their slot at the same moment: each would wait forever if a warm-up excluded the others.
    outs = [jobs.start("sit-warmup", "0", hold=0) for _ in range(3)]
    for out in outs:
        jobs.wait_ready(out)


def test_waiting_timed_job_blocks_new_warmups_until_it_is_done(jobs: Jobs) -> None:
    running = jobs.start("warmup", "0", hold=-1)
    jobs.wait_ready(running)
    timed = jobs.start("timed", "0", hold=0.2)
    # The timed job holds the turnstile while it waits for the running warm-up to leave rw.
    wait_until(lambda: held(jobs.locks / "gpu-0.turnstile"))
    late = jobs.start("warmup", "0", hold=0.0)
    time.sleep(0.3)  # time for the late warm-up to start, were it let in
    assert not Path(f"{timed}.ready").exists(), "a timed section began beside a running warm-up"
    assert not Path(f"{late}.ready").exists(), "a warm-up started while a timed job waited for the GPU"
    Path(f"{running}.go").touch()
    r_running, r_timed, r_late = jobs.finish()
    assert r_timed["start"] >= r_running["end"]
    assert r_timed["wait"] > 0.3
    assert r_late["start"] >= r_timed["end"], "a warm-up started while a timed job waited for the GPU"


def test_warmup_prefers_a_gpu_without_timed_job_and_avoids_an_exclusive_one(jobs: Jobs) -> None:
    quiet = jobs.start("sit-timed", "0,1", hold=0)  # GPU 0: a timed job, not (yet) exclusive
    jobs.wait_ready(quiet)
    with claim_warmup(jobs.locks, ["0", "1"], timeout_s=5) as slot:
        assert slot.gpu == 1  # the GPU where no timed job will have to wait for it
    busy = jobs.start("sit-exclusive", "0,1", hold=0)  # GPU 1, exclusive
    jobs.wait_ready(busy)
    with pytest.raises(TimeoutError):
        claim_warmup(jobs.locks, ["1"], timeout_s=0.2)
    with claim_warmup(jobs.locks, ["0", "1"], timeout_s=5) as slot:
        assert slot.gpu == 0


def test_sigkill_frees_timed_exclusive_and_warmup_slots_at_once(jobs: Jobs) -> None:
    sitting = jobs.start("sit-timed", "0,1", hold=0)
    jobs.wait_ready(sitting)
    exclusive = jobs.start("sit-exclusive", "0,1", hold=0)
    jobs.wait_ready(exclusive)
    with pytest.raises(TimeoutError):
        claim_timed(jobs.locks, ["0", "1"], timeout_s=0.1)
    with pytest.raises(TimeoutError):
        claim_warmup(jobs.locks, ["1"], timeout_s=0.1)
    for proc, _ in jobs.procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert nothing_held(jobs.locks)
    with claim_timed(jobs.locks, ["0", "1"], timeout_s=1) as a, claim_timed(jobs.locks, ["0", "1"], timeout_s=1) as b:
        assert {a.gpu, b.gpu} == {0, 1}
        with b.exclusive() as waited:
            assert waited < 1

    warmup = jobs.start("sit-warmup", "0", hold=0)
    jobs.wait_ready(warmup)
    assert held(jobs.locks / "gpu-0.rw")
    jobs.procs[-1][0].send_signal(signal.SIGKILL)
    jobs.procs[-1][0].wait()
    assert not held(jobs.locks / "gpu-0.rw")
    with claim_timed(jobs.locks, ["0"], timeout_s=1) as slot, slot.exclusive() as waited:
        assert waited < 1


def test_exception_inside_the_slots_releases_everything(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with claim_timed(tmp_path, ["0"]) as slot, slot.exclusive():
            assert held(tmp_path / "gpu-0.timed") and held(tmp_path / "gpu-0.rw", fcntl.LOCK_SH)
            raise ValueError("cell crashed")
    assert not slot.held
    assert nothing_held(tmp_path)
    with pytest.raises(ValueError):
        with claim_warmup(tmp_path, ["0"]):
            assert held(tmp_path / "gpu-0.rw")
            raise ValueError("warm-up crashed")
    assert nothing_held(tmp_path)
    with claim_timed(tmp_path, ["0"], timeout_s=0.5) as slot:
        with slot.exclusive():
            pass
        assert held(tmp_path / "gpu-0.timed") and not held(tmp_path / "gpu-0.rw")
        with slot.exclusive():  # a second timed phase in the same job
            pass
    slot.release()  # twice is harmless
    with claim_timed(tmp_path, ["0"]) as slot, slot.exclusive():
        slot.release()  # inside exclusive(): its exit must not close anything twice
    assert nothing_held(tmp_path)


def test_one_gpu_is_a_mutex_for_timed_jobs(jobs: Jobs) -> None:
    for _ in range(4):
        jobs.start("claim", "0", hold=0.1)
    records = jobs.finish()
    assert all(r["gpu"] == 0 for r in records)
    for a in records:
        assert not [b for b in records if b is not a and overlaps(a, b)]
    assert max(r["claim_wait"] for r in records) > 0.2  # the last one waited for three others


def test_claims_name_lock_files_by_device_and_refuse_bad_lists(tmp_path: Path) -> None:
    mig = "MIG-GPU-5c89/1/0"
    with claim_timed(tmp_path, [mig]) as slot:
        assert (slot.gpu, slot.device_id) == (0, mig)
        assert held(tmp_path / "gpu-MIG-GPU-5c89_1_0.timed")
    with pytest.raises(ValueError, match="empty"):
        claim_timed(tmp_path, [])
    with pytest.raises(ValueError, match="twice"):
        claim_warmup(tmp_path, [0, "0"])


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
