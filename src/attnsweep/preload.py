"""A preloaded interpreter that forks every cell's process: a sweep's jobs skip Python's start and the imports.

A cell's process spends seconds before and around its measured steps importing torch, Dynamo, Inductor and Triton
(GPU host: about 8 s of a 30 s timed job). In a sweep, `attnsweep cell|warmup --preload DIR` hands its command line
to a server that has imported all of that once, and never touched CUDA; the server forks a child per request, the
child takes the job's environment, working directory, standard streams, CPU affinity and niceness, runs the command
and exits with its code, which the job then exits with. So each cell still runs in a process of its own that starts
CUDA, compiles and measures from nothing shared at run time; only the imported, read-only Python modules are shared,
copy-on-write, as in multiprocessing's forkserver (which cannot serve separate processes such as Snakemake's jobs).

The server is keyed by what an import can depend on: the interpreter, the package's source files and the
environment variables that torch, Triton and the OpenMP runtime read when loaded. Different code or settings get a
server of their own; an idle one exits after IDLE_S. A job whose process is killed takes its child down with it (the
server sees the connection close and kills the child's process group). If no server can be started the job runs in
its own process as before and says so on its standard error.

Only the standard library is imported here at module level: the job's side of this costs milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# Set in every child: the command is not handed on again, and the cell's record says how its process began.
CHILD_ENV = "ATTNSWEEP_PRELOADED"
# Set in a child to the server's socket: the child's own fresh processes (a warm-up's batch-size attempts) are forked
# by the same server.
SOCKET_ENV = "ATTNSWEEP_PRELOAD_SOCKET"
# An idle server exits after this long (ATTNSWEEP_PRELOAD_IDLE_S): it holds an interpreter with torch imported.
IDLE_S = float(os.environ.get("ATTNSWEEP_PRELOAD_IDLE_S", 60))
START_TIMEOUT_S = 180.0
# Environment variables read while torch, Triton or the OpenMP/BLAS runtimes load: a change means another server.
_IMPORT_ENV_PREFIXES = ("TORCH", "PYTORCH", "TRITON", "CUDA", "NVIDIA", "CUBLAS", "CUDNN", "NCCL", "OMP_", "KMP_",
                        "MKL_", "GOTO_", "OPENBLAS_", "VECLIB_", "NUMEXPR_", "PYTHON", "LD_", "PATH")
# What the server imports before it forks anything (each must leave CUDA uninitialized).
PRELOAD_MODULES = ("torch", "torch._dynamo", "torch._inductor.compile_fx", "torch.profiler",
                   "torch.nn.attention.flex_attention", "attnsweep.cli", "attnsweep.cell", "attnsweep.attempt",
                   "attnsweep.native_harness", "attnsweep.kernels", "attnsweep.provenance")
_HEADER = struct.Struct("!Q")
_ENTRIES = ("cli", "attempt")


def server_key() -> str:
    """What the server's imports depend on, hashed: the interpreter, this package's sources, the import-time env."""
    from .codestamp import PACKAGE_DIR, file_hashes

    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.version}\0{os.getuid()}\0".encode())
    # Every module of the package, not only a cell's (codestamp.cell_code_files): the server imports the CLI too.
    sources = file_hashes(PACKAGE_DIR, "attnsweep", sorted(PACKAGE_DIR.rglob("*.py")))
    h.update(json.dumps(sources, sort_keys=True).encode())
    for name in sorted(os.environ):
        if name.startswith(_IMPORT_ENV_PREFIXES):
            h.update(f"{name}={os.environ[name]}\0".encode())
    return h.hexdigest()[:16]


def _socket_path(folder: Path, key: str) -> Path:
    # AF_UNIX paths are limited to 107 bytes: the socket lives in the temp folder, named after the sweep's folder.
    tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"attnsweep-{os.getuid()}" / f"{tag}-{key}.sock"


def _send(sock: socket.socket, payload: dict, fds: list[int] | None = None) -> None:
    body = json.dumps(payload).encode()
    header = _HEADER.pack(len(body))
    if fds:
        socket.send_fds(sock, [header], fds)
    else:
        sock.sendall(header)
    sock.sendall(body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _recv(sock: socket.socket, maxfds: int = 0) -> tuple[dict, list[int]]:
    fds: list[int] = []
    if maxfds:
        header, fds, _, _ = socket.recv_fds(sock, _HEADER.size, maxfds)
        if len(header) < _HEADER.size:
            header += _recv_exact(sock, _HEADER.size - len(header))
    else:
        header = _recv_exact(sock, _HEADER.size)
    (n,) = _HEADER.unpack(header)
    return json.loads(_recv_exact(sock, n)), fds


# The job's side.


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def _start_server(folder: Path, path: Path, key: str) -> socket.socket | None:
    """Connect to the server of this key, starting it first if there is none (one starter at a time)."""
    import fcntl

    path.parent.mkdir(mode=0o700, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(path)
        if sock is not None:
            return sock
        log = open(folder / f"preload-{key}.log", "ab")
        # Started with nice 0 and the job's CPU affinity; each child takes its own job's settings.
        proc = subprocess.Popen([sys.executable, "-m", "attnsweep.preload", str(path)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, cwd="/")
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            sock = _connect(path)
            if sock is not None or proc.poll() is not None:
                return sock
            time.sleep(0.05)
        proc.kill()
        return None


def run(entry: str, argv: list[str], folder: str | os.PathLike[str] | None = None) -> int | None:
    """Run `entry` (cli or attempt) with `argv` in a child of the preloaded server; its exit code, or None when no
    server could be had (the caller then runs the command itself). `folder` holds the server's log; without it the
    server named in this process's environment is used (a child asking for a fresh process of its own)."""
    if entry not in _ENTRIES:
        raise ValueError(f"unknown entry {entry!r}; allowed: {', '.join(_ENTRIES)}")
    if folder is not None:
        folder = Path(folder)
        key = server_key()
        path = _socket_path(folder, key)
        sock = _connect(path) or _start_server(folder, path, key)
        where = f"see {folder / f'preload-{key}.log'}"
    else:
        path = Path(os.environ[SOCKET_ENV])
        sock = _connect(path)
        where = f"no server at {path}"
    if sock is None:
        print(f"attnsweep: the preloaded interpreter did not start ({where}); running in a process of its own",
              file=sys.stderr, flush=True)
        return None
    with sock:
        _send(sock, _request(entry, argv, path), [0, 1, 2])
        try:
            reply, _ = _recv(sock)
            while "exit" not in reply:
                reply, _ = _recv(sock)
        except ConnectionError:
            print("attnsweep: the preloaded interpreter went away before the command ended", file=sys.stderr)
            return 1
    if "error" in reply:
        print(f"attnsweep: {reply['error']}", file=sys.stderr, flush=True)
    return int(reply["exit"])


def _request(entry: str, argv: list[str], path: Path) -> dict:
    """What a child takes from the job that asks for it: the command, and this process's environment, folder, CPUs,
    priority and umask (its standard streams go beside it as file descriptors); `path`: the server's socket."""
    return {"entry": entry, "argv": argv, "env": dict(os.environ), "cwd": os.getcwd(),
            "affinity": sorted(os.sched_getaffinity(0)), "nice": os.nice(0), "umask": _umask(), "socket": str(path)}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# The server's side.


def _preload() -> None:
    import importlib

    # Asking the CUDA driver anything, even the device count, marks torch's forked children as unable to use CUDA.
    # torch.cuda.is_available() asks NVML instead with this set (the children get the job's environment back).
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    import torch

    asked: list[str] = []
    count = getattr(torch._C, "_cuda_getDeviceCount", None)
    if count is not None:  # note who asks the driver anyway, for the log

        def counting() -> int:
            asked.append("".join(traceback.format_stack(limit=8)))
            return count()

        torch._C._cuda_getDeviceCount = counting
    try:
        for name in PRELOAD_MODULES:
            importlib.import_module(name)
        from attnsweep.provenance import code_version, versions

        code_version()  # git describe, the source hash and package versions, once: every child reads the answers
        versions()
    finally:
        if count is not None:
            torch._C._cuda_getDeviceCount = count
    for stack in asked:
        print(f"asked the CUDA driver for its device count while preloading:\n{stack}", flush=True)
    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialized while preloading: a forked child could not use it")
    _check_fork()


def _check_fork() -> None:
    """Fork once and ask the child whether torch lets it use CUDA; refuse to serve if not."""
    pid = os.fork()
    if pid == 0:
        import torch

        os._exit(3 if getattr(torch._C, "_cuda_isInBadFork", lambda: False)() else 0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("a child forked from this interpreter could not use CUDA (torch reports a bad fork)")


def _child(conn: socket.socket, request: dict, fds: list[int], closing: list) -> None:
    """In the forked child: become the job's process and run its command. Never returns."""
    code = 1
    try:
        for obj in closing:
            obj.close()
        os.setpgid(0, 0)  # its own group: the server kills the whole group when the job goes away
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[CHILD_ENV] = "1"
        os.environ[SOCKET_ENV] = request["socket"]
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.sched_setaffinity(0, request["affinity"])
        if request["nice"] > os.nice(0):
            os.nice(request["nice"] - os.nice(0))
        sys.argv = [request["entry"], *request["argv"]]
        if request["entry"] == "cli":
            from attnsweep.cli import main

            code = main(request["argv"])
        else:
            from attnsweep.attempt import main

            code = main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code if isinstance(code, int) else 1)


def serve(path: str | os.PathLike[str], idle_s: float | None = None) -> None:
    """Preload, listen on `path` and fork a child per request until idle for `idle_s` with no child running."""
    path = Path(path)
    idle_s = IDLE_S if idle_s is None else idle_s
    t0 = time.perf_counter()
    _preload()
    print(f"preloaded {', '.join(PRELOAD_MODULES)} in {time.perf_counter() - t0:.1f} s", flush=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    listener.bind(str(tmp))
    listener.listen(64)
    os.replace(tmp, path)  # clients connect only once everything is imported
    inode = path.stat().st_ino
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    try:
        while True:
            for key, _ in selector.select(timeout=0.2):
                if key.data is None:
                    conn, _ = listener.accept()
                    pid = _fork(conn, [selector, listener, *children.values()])
                    if pid is not None:
                        children[pid] = conn
                        selector.register(conn, selectors.EVENT_READ, pid)
                elif _ended(key.fileobj):  # the job is gone (killed): so is its command
                    selector.unregister(key.fileobj)
                    _kill_group(key.data)
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if conn is not None:
                    _reply_exit(conn, status, selector)
            if children:
                last = time.monotonic()
            elif time.monotonic() - last > idle_s or not _still_ours(path, inode):
                return
    finally:
        # Left by an error in the loop above, children would run on with no server to end them when their jobs go.
        for pid in children:
            _kill_group(pid)
        if _still_ours(path, inode):
            path.unlink()
        listener.close()


def _ended(conn: socket.socket) -> bool:
    """Whether a job's connection has ended: its end, or a reset, which a job killed with the server's reply still
    unread leaves instead (a Unix socket closed with data queued for it resets the connection)."""
    try:
        return not conn.recv(1)
    except OSError:
        return True


def _fork(conn: socket.socket, closing: list) -> int | None:
    """Read a request from `conn` and fork its child; `closing`: what the child must not keep open."""
    conn.settimeout(10)
    try:
        request, fds = _recv(conn, maxfds=3)
    except (OSError, ValueError, ConnectionError) as e:
        print(f"bad request: {e}", flush=True)
        conn.close()
        return None
    conn.settimeout(None)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as e:  # no process to be had (EAGAIN, ENOMEM): this job fails, the server goes on
        print(f"cannot fork for {request['entry']} {' '.join(request['argv'])}: {e}", flush=True)
        for fd in fds:
            os.close(fd)
        try:
            _send(conn, {"exit": 1, "error": f"the preloaded interpreter could not fork a process: {e}"})
        except OSError:
            pass
        conn.close()
        return None
    if pid == 0:
        _child(conn, request, fds, closing)
    # The child's own group from the fork on, not from when the child gets to its setpgid: a job killed before then
    # still takes the whole group down. Both set it and either may come first; the other finds it set already.
    try:
        os.setpgid(pid, pid)
    except (ProcessLookupError, PermissionError):  # gone already, or past an exec (EACCES) after its own setpgid
        pass
    for fd in fds:
        os.close(fd)
    print(f"{time.strftime('%H:%M:%S')} pid {pid}: {request['entry']} {' '.join(request['argv'])}", flush=True)
    try:
        _send(conn, {"pid": pid})
    except OSError:
        pass
    return pid


def _kill_group(pid: int) -> None:
    # The child alone where no group has its id (neither setpgid took): killpg's ESRCH must not leave it running.
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            pass


def _reply_exit(conn: socket.socket, status: int, selector: selectors.BaseSelector) -> None:
    code = os.waitstatus_to_exitcode(status)
    try:
        selector.unregister(conn)
    except (KeyError, ValueError):
        pass
    try:
        _send(conn, {"exit": code if code >= 0 else 128 - code})
    except OSError:
        pass
    conn.close()


def _still_ours(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except FileNotFoundError:
        return False


if __name__ == "__main__":
    serve(sys.argv[1])
