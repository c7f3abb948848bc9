"""The preloaded interpreter (attnsweep.preload): a job's command runs in a forked child that is the job's process in
every way a cell can see (environment, folder, streams, exit code), and goes when the job goes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from attnsweep import preload

SRC = Path(__file__).resolve().parents[1] / "src"


def attnsweep(args: list[str], cwd: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    environ = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "attnsweep", *args], cwd=cwd, env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def preload_folder(tmp_path: Path) -> Path:
    """The server's folder, named anew for each run: a server is found by its folder's path, and one that an earlier
    run with the same --basetemp left idle (for ATTNSWEEP_PRELOAD_IDLE_S) would serve this run's jobs, logging into
    its own run's folder, now gone."""
    return tmp_path / f"preload-{uuid.uuid4().hex[:12]}"


def server_log(folder: Path) -> str:
    return "".join(p.read_text() for p in folder.glob("preload-*.log"))


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


TINY = ["--model", "tiny", "--attn", "sdpa", "--mode", "eager", "--seq-len", "32", "--steps", "4", "--window", "2",
        "--no-profile"]


def test_a_cell_runs_in_a_forked_child_with_the_jobs_folder_streams_and_exit_code(tmp_path: Path) -> None:
    folder = preload_folder(tmp_path)
    job = attnsweep(["cell", *TINY, "--out", "cell.json", "--preload", str(folder)], cwd=tmp_path,
                    env={"ATTNSWEEP_TEST_MARK": "job-1"})
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err
    assert "cell.json: ok" in err  # the child's standard error is the job's
    record = json.loads((tmp_path / "cell.json").read_text())  # written in the job's folder
    assert record["status"] == "ok" and record["env"]["launch"] == "preloaded"
    log = server_log(folder)
    assert "preloaded torch" in log and f"cli cell {' '.join(TINY)}" in log
    # A second job is served by the same server (no second preload), and bad input still exits 2 with its message.
    bad = attnsweep(["cell", *TINY, "--out", "x.json", "--precision", "fp16", "--preload", str(folder)], cwd=tmp_path)
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "--precision fp16 on the CPU" in err
    assert server_log(folder).count("preloaded torch") == 1
    assert not (tmp_path / "x.json").exists()


def test_without_preload_a_cell_runs_in_its_own_process(tmp_path: Path) -> None:
    job = attnsweep(["cell", *TINY, "--out", "cell.json"], cwd=tmp_path)
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err
    assert json.loads((tmp_path / "cell.json").read_text())["env"]["launch"] == "own process"


def test_the_child_takes_the_jobs_environment_and_a_changed_import_setting_gets_its_own_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = preload.server_key()
    monkeypatch.setenv("TORCHINDUCTOR_SOMETHING", "1")  # read when torch's compiler is imported
    assert preload.server_key() != key
    monkeypatch.setenv("ATTNSWEEP_UNRELATED", "1")  # not read by any import: the same server
    with_unrelated = preload.server_key()
    monkeypatch.delenv("ATTNSWEEP_UNRELATED")
    assert preload.server_key() == with_unrelated


def test_a_killed_job_takes_its_child_down(tmp_path: Path) -> None:
    folder = preload_folder(tmp_path)
    long = [a if a != "4" else "100000" for a in TINY]  # steps: runs until killed
    job = attnsweep(["cell", *long, "--out", "cell.json", "--preload", str(folder)], cwd=tmp_path)
    wait_for(lambda: " pid " in server_log(folder), timeout=120)
    child = int(server_log(folder).split(" pid ")[1].split(":")[0])
    os.kill(child, 0)  # running
    # Killed once the child leads its own process group, which the server kills. (The child sets it itself, just
    # after the fork: a job killed before that leaves its child running, a race the server's own setpgid of the
    # child would close. Not fixed yet, as preload.py is cell code and the replay's records name its hash.)
    wait_for(lambda: os.getpgid(child) == child, timeout=30)
    # And once the job has read the server's reply (the child's pid), which a loaded machine can delay past the
    # lines above: a job killed with it unread resets its connection, which this server does not survive
    # (patches/README.md).
    time.sleep(2)
    job.send_signal(signal.SIGKILL)
    job.wait()

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"

    wait_for(gone, timeout=30)
    assert not (tmp_path / "cell.json").exists()


def test_no_server_means_the_job_runs_in_its_own_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the server cannot start
    assert preload.run("cli", ["status"], preload_folder(tmp_path)) is None
    assert "did not start" in capsys.readouterr().err


def test_an_unknown_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown entry"):
        preload.run("shell", [], "/tmp")
