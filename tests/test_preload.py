"""The preloaded interpreter (attnsweep.preload): a job's command runs in a forked child that is the job's process in
every way a cell can see (environment, folder, streams, exit code), and goes when the job goes."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
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


def gone(pid: int) -> bool:
    """Whether process `pid` has ended: a zombie its parent has yet to reap counts as ended."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


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
    job.send_signal(signal.SIGKILL)
    job.wait()
    wait_for(lambda: gone(child), timeout=30)
    assert not (tmp_path / "cell.json").exists()


# A server whose children stop where they start, before their own setpgid: the window between the fork and the
# child's setpgid, held open. Nothing is preloaded, as the race is in the fork, not in the imports.
HELD_SERVER = """
import os, sys, time
from attnsweep import preload

def held(*args):
    time.sleep(600)
    os._exit(1)

preload._preload = lambda: None
preload._child = held
preload.serve(sys.argv[1], idle_s=60)
"""


def _held_server(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A HELD_SERVER serving on a socket in `tmp_path`: the server's process, its socket and its log."""
    sock, log = tmp_path / "s.sock", tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-c", HELD_SERVER, str(sock)], stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(SRC)},
                                  start_new_session=True)
    return server, sock, log


def test_a_job_killed_before_its_child_makes_its_own_group_still_takes_the_child_down(tmp_path: Path) -> None:
    server, sock, log = _held_server(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = None
    try:
        wait_for(sock.exists, timeout=60)
        job = subprocess.Popen([sys.executable, "-c", "from attnsweep import preload; preload.run('cli', ['status'])"],
                               env={**env, preload.SOCKET_ENV: str(sock)}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: " pid " in log.read_text(), timeout=60)
        child = int(log.read_text().split(" pid ")[1].split(":")[0])
        assert not gone(child)
        assert os.getpgid(child) == child  # set by the server: the held child never gets to its own
        job.kill()
        job.wait()
        wait_for(lambda: gone(child), timeout=20)
    finally:
        if child is not None and not gone(child):
            os.kill(child, signal.SIGKILL)
        server.kill()
        server.wait()


def _held_request(sock_path: Path) -> socket.socket:
    """A job's request to a held server (HELD_SERVER), as preload.run sends it, its streams /dev/null."""
    conn = preload._connect(sock_path)
    assert conn is not None
    streams = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
    try:
        preload._send(conn, preload._request("cli", ["status"], sock_path), streams)
    finally:
        for fd in streams:
            os.close(fd)
    return conn


def test_a_job_killed_with_the_servers_reply_unread_still_takes_its_child_down(tmp_path: Path) -> None:
    # A Unix socket closed with data still queued for it resets the connection instead of ending it: the server's
    # next read of it raises instead of returning nothing. A job killed after the server sent it its child's pid and
    # before it read it (on a loaded machine, any job killed early) leaves its connection so.
    server, sock, log = _held_server(tmp_path)
    children: list[int] = []
    try:
        wait_for(sock.exists, timeout=60)
        for kept_reply_unread in (True, False):
            conn = _held_request(sock)
            assert select.select([conn], [], [], 60)[0], "no reply from the server"  # the pid, queued for the job
            if not kept_reply_unread:
                conn.recv(4096)
            wait_for(lambda: log.read_text().count(" pid ") == len(children) + 1, timeout=30)
            children.append(int(log.read_text().split(" pid ")[-1].split(":")[0]))
            assert not gone(children[-1])
            conn.close()  # the job, killed
            wait_for(lambda: gone(children[-1]), timeout=20)
            assert server.poll() is None, log.read_text()  # and the server serves the next job
    finally:
        for child in children:
            if not gone(child):
                os.kill(child, signal.SIGKILL)
        server.kill()
        server.wait()


def test_a_child_that_leads_no_group_is_killed_by_itself() -> None:
    proc = subprocess.Popen(["sleep", "600"])  # in the test's process group: no group has its id
    try:
        preload._kill_group(proc.pid)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_no_server_means_the_job_runs_in_its_own_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the server cannot start
    assert preload.run("cli", ["status"], preload_folder(tmp_path)) is None
    assert "did not start" in capsys.readouterr().err


def test_an_unknown_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown entry"):
        preload.run("shell", [], "/tmp")
