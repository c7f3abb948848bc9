"""tools/gpu-host/fa4-wheels.sh: FlashAttention-4's wheels in two parts, each carried in its own device call."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools/gpu-host/fa4-wheels.sh"


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_split_makes_a_first_part_of_the_size_asked_and_the_rest(tmp_path: Path) -> None:
    parts = tmp_path / ".fa4wheels/parts"
    parts.mkdir(parents=True)
    whole = bytes(range(256)) * (3 * 2**20 // 256 + 7)  # 3 MiB and a bit
    (parts / "fa4-wheels.tar.xz.part-00").write_bytes(whole[:2**20])  # as download's old split left it
    (parts / "fa4-wheels.tar.xz.part-01").write_bytes(whole[2**20:])
    done = run(tmp_path, "split", "2")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in parts.iterdir()) == ["fa4-wheels.tar.xz.part-00", "fa4-wheels.tar.xz.part-01"]
    assert (parts / "fa4-wheels.tar.xz.part-00").stat().st_size == 2 * 2**20
    joined = b"".join(p.read_bytes() for p in sorted(parts.iterdir()))
    assert hashlib.sha256(joined).digest() == hashlib.sha256(whole).digest()
    bad = run(tmp_path, "split", "two")
    assert bad.returncode == 2 and "MIB is a whole number of MiB, not 'two'" in bad.stderr


def test_install_names_the_part_a_host_not_kept_warm_lacks(tmp_path: Path) -> None:
    """The second call carries part-01 only: where the host was not kept since the first, part-00 is not there, and
    install says so before unpacking anything."""
    parts = tmp_path / ".fa4wheels/parts"
    parts.mkdir(parents=True)
    (parts / "fa4-wheels.tar.xz.part-01").write_bytes(b"rest")
    done = run(tmp_path, "install")
    assert done.returncode == 1
    assert ".fa4wheels/parts/fa4-wheels.tar.xz.part-00 is not here (carried with .gpuwheels/ in the call before" \
        in done.stderr, done.stderr
    assert not (tmp_path / ".fa4wheels/wheels").exists()
