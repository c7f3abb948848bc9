"""Where a number came from: the hardware, the software and the code that produced it."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from .codestamp import source_hash
from .gpuslots import WINDOWS_ENV
from .packages import versions
from .preload import CHILD_ENV

import torch

PACKAGE_DIR = Path(__file__).resolve().parent


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


def _nvidia_smi(fields: str, gpu: str) -> list[str] | None:
    """One GPU's fields from nvidia-smi, the GPU named by its UUID (its index there ignores CUDA_VISIBLE_DEVICES)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", gpu],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return [s.strip() for s in out.split(",")]


@lru_cache(maxsize=1)
def cpu_model() -> str | None:
    """The host CPU's model name (Linux's /proc/cpuinfo). A step that is partly host-bound (kernel launches, Python)
    runs at this CPU's speed, so two hosts with the same GPU can measure the same cell differently."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


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
        "versions": dict(versions()),
        "memory_cap_gib": memory_cap_gib,
        "code": code_version(),
        "gpu_name": None,
        "gpu_memory_bytes": None,
        "compute_capability": None,
        "driver": None,
        "sm_clock_max_mhz": None,
        "power_limit_w": None,
        "cpu_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        # The host's logical CPUs, and those this process may run on (a sweep can pin a job's cores: taskset).
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        # Which of the host's GPUs ran the cell: CUDA_VISIBLE_DEVICES as the cell saw it, and the GPU's UUID.
        "gpu": None,
        # How this process began: forked from the sweep's preloaded interpreter (preload.py), or its own Python.
        "launch": "preloaded" if os.environ.get(CHILD_ENV) else "own process",
        # A timed job of a sweep with GPU slots: measured windows one at a time on the host, or overlapping
        # (gpuslots; the config's window_turns). None outside such a sweep.
        "windows": os.environ.get(WINDOWS_ENV),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu_name=props.name,
            gpu_memory_bytes=props.total_memory,
            compute_capability=f"{props.major}.{props.minor}",
        )
        uuid = str(props.uuid)
        uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        env["gpu"] = {"visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "index": device.index, "uuid": uuid}
        smi = _nvidia_smi("driver_version,clocks.max.sm,power.limit", uuid)
        if smi and len(smi) == 3:
            env.update(driver=smi[0], sm_clock_max_mhz=smi[1], power_limit_w=smi[2])
    return env
