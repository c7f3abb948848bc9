"""Where a number came from: the hardware, the software and the code that produced it."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
# Distributions whose versions decide a throughput number (import names differ; metadata names are used).
_VERSIONED = ("torch", "triton", "flash-attn", "flash-attn-4", "bitsandbytes", "mosaicml", "numpy", "snakemake")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_hash(files: list[Path] | None = None) -> str:
    """SHA-256 over the files a cell runs (names and contents), independent of git and file times.

    The same selection as the pipeline's cells stamp (`status.cell_code_files`): a change to the report or status
    code, which no cell runs, leaves it as it was.
    """
    if files is None:
        from .status import cell_code_files  # status imports no cell code: no cycle

        files = cell_code_files(PACKAGE_DIR)
    files = sorted(files)
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(PACKAGE_DIR).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_version() -> dict:
    """`git describe` where the package runs from a checkout, and always the source hash."""
    try:
        describe = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        describe = None
    return {"git_describe": describe, "source_sha256": source_hash()}


def _nvidia_smi(fields: str) -> list[str] | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return [s.strip() for s in out.split(",")]


def environment(device: torch.device, memory_cap_gib: float | None) -> dict:
    """Everything about the machine and software that a reader needs to place a measurement."""
    env: dict = {
        "device_type": device.type,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "versions": {d: _version(d) for d in _VERSIONED},
        "memory_cap_gib": memory_cap_gib,
        "code": code_version(),
        "gpu_name": None,
        "gpu_memory_bytes": None,
        "compute_capability": None,
        "driver": None,
        "sm_clock_max_mhz": None,
        "power_limit_w": None,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu_name=props.name,
            gpu_memory_bytes=props.total_memory,
            compute_capability=f"{props.major}.{props.minor}",
        )
        smi = _nvidia_smi("driver_version,clocks.max.sm,power.limit")
        if smi and len(smi) == 3:
            env.update(driver=smi[0], sm_clock_max_mhz=smi[1], power_limit_w=smi[2])
    return env
