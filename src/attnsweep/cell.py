"""One grid cell end to end: check the input, check support, find the batch, measure, and write one JSON record.

The parent process never trains. Each batch-size attempt runs in a worker (`attnsweep.worker`): in a fresh process
on a GPU, because an out-of-memory error can leave CUDA in a poisoned state and a compile cache must not leak
between attempts, and in-process on the CPU, where neither risk exists and a process start would dominate.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import attention, batching, flops
from .model import MODEL_CONFIGS, model_config
from .provenance import environment
from .training import optimizer_unsupported_reason

MODES = ("eager", "compiled")
PRECISIONS = ("fp16", "bf16", "fp32")
OPTIMIZERS = ("adamw", "adamw8bit")
HARNESSES = ("native", "composer")
BATCH_POLICIES = ("fixed", "study", "search")
DEVICES = ("auto", "cuda", "cpu")
ISOLATION = ("auto", "process", "inline")


class CellInputError(ValueError):
    """Bad input: refused before any model is built or any GPU time is spent."""


@dataclass(frozen=True)
class CellSpec:
    """Every parameter of one cell. Field names are the CLI's long options and the config's keys."""

    model: str
    attn: str
    mode: str
    seq_len: int
    precision: str = "fp16"
    optimizer: str = "adamw"
    harness: str = "native"
    kv_heads: int | None = None
    batch_policy: str = "fixed"
    batch_size: int | None = None
    batch_start: int | None = None
    steps: int = 125
    window: int = 25
    device: str = "auto"
    memory_cap_gib: float | None = None
    seed: int = 0
    run: str | None = None
    profile: bool = True
    isolate: str = "auto"

    def validate(self) -> None:
        """Raise CellInputError naming the option and the allowed values."""
        choices = {
            "model": tuple(MODEL_CONFIGS), "attn": tuple(attention.names()), "mode": MODES,
            "precision": PRECISIONS, "optimizer": OPTIMIZERS, "harness": HARNESSES,
            "batch_policy": BATCH_POLICIES, "device": DEVICES, "isolate": ISOLATION,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise CellInputError(f"--{key.replace('_', '-')}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        for key in ("seq_len", "steps", "window"):
            if getattr(self, key) < 1:
                raise CellInputError(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(self, key)}")
        if self.window > self.steps:
            raise CellInputError(f"--window ({self.window}) must not exceed --steps ({self.steps})")
        if self.memory_cap_gib is not None and self.memory_cap_gib <= 0:
            raise CellInputError(f"--memory-cap-gib must be positive, got {self.memory_cap_gib}")
        try:
            model_config(self.model, block_size=self.seq_len, kv_heads=self.kv_heads)
            batching.plan(self.batch_policy, model=self.model, attn=self.attn, mode=self.mode,
                          seq_len=self.seq_len, size=self.batch_size, start=self.batch_start)
        except ValueError as e:
            raise CellInputError(str(e)) from None

    def record(self) -> dict:
        """The `cell` block of the JSON: the parameters that define the cell (not how it is run)."""
        d = dataclasses.asdict(self)
        for key in ("profile", "isolate", "batch_size", "batch_start"):
            d.pop(key)
        return d


def resolve_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if requested == "cuda":
        raise CellInputError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return torch.device("cpu")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def unsupported_reason(spec: CellSpec, device: torch.device) -> str | None:
    """Why this combination cannot run here, or None. Asked before any model is built."""
    cfg = model_config(spec.model, block_size=spec.seq_len, kv_heads=spec.kv_heads)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[spec.precision]
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    reason = attention.unsupported_reason(
        spec.attn, device_type=device.type, dtype=dtype, head_dim=cfg.head_dim,
        n_head=cfg.n_head, n_kv_head=cfg.kv_heads, capability=capability,
    )
    if reason:
        return reason
    reason = optimizer_unsupported_reason(spec.optimizer, device.type)
    if reason is None and spec.harness == "composer":
        from .composer_harness import composer_unsupported_reason  # imports Composer lazily, if at all

        reason = composer_unsupported_reason(spec.precision, device.type)
    return reason


def _attempt(spec: CellSpec, batch_size: int, device: torch.device) -> dict:
    """One measurement at one batch size, isolated as `spec.isolate` says."""
    isolate = spec.isolate if spec.isolate != "auto" else ("process" if device.type == "cuda" else "inline")
    if isolate == "inline":
        from .worker import measure

        return measure(spec, batch_size, device)
    with tempfile.TemporaryDirectory(prefix="attnsweep-attempt-") as tmp:
        args_path, out_path = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_path.write_text(json.dumps({"spec": dataclasses.asdict(spec), "batch_size": batch_size,
                                         "device": str(device)}))
        proc = subprocess.run([sys.executable, "-m", "attnsweep.worker", str(args_path), str(out_path)])
        if out_path.exists():
            return json.loads(out_path.read_text())
        return {"outcome": "error", "detail": f"worker process exited with code {proc.returncode} and no result"}


def _stats(step_times: list[float], window: int, tokens_per_batch: int) -> dict:
    tps = [tokens_per_batch / t for t in step_times[-window:]]
    return {
        "mean": statistics.fmean(tps), "median": statistics.median(tps),
        "std": statistics.stdev(tps) if len(tps) > 1 else 0.0, "min": min(tps), "max": max(tps), "n": len(tps),
    }


def _phases(inside: dict[str, float], attempt_s: float) -> dict[str, float]:
    """The measured attempt's time by phase; `outside` is the rest of the attempt: for a worker process its
    interpreter start, imports and result file, for an inline attempt the private compile cache's setup."""
    phases = {k: round(v, 3) for k, v in inside.items()}
    return {"outside": round(max(0.0, attempt_s - sum(inside.values())), 3), **phases}


def run_cell(spec: CellSpec) -> dict:
    """Measure one cell and return its record (see schemas/cell.schema.json). Raises CellInputError on bad input."""
    spec.validate()
    started, t0 = _now(), time.perf_counter()
    device = resolve_device(spec.device)
    if device.type == "cuda" and spec.memory_cap_gib is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        if spec.memory_cap_gib * 2**30 > total:
            raise CellInputError(
                f"--memory-cap-gib {spec.memory_cap_gib} exceeds the GPU's {total / 2**30:.1f} GiB"
            )
    cfg = model_config(spec.model, block_size=spec.seq_len, kv_heads=spec.kv_heads)
    record: dict = {
        "schema_version": 1, "status": None, "reason": None, "cell": spec.record(),
        "batch_size": None, "batch_note": None, "batch_attempts": [], "tokens_per_sec": None,
        "tokens_per_sec_stats": None, "step_times_s": [], "params": None,
        "model_config": dataclasses.asdict(cfg), "peak_memory_bytes": None, "compile": None, "loss": None,
        "mfu": None, "kernels": None, "harness_extra": None, "phases_s": None,
        "env": environment(device, spec.memory_cap_gib),
    }

    def finish(status: str, reason: str | None) -> dict:
        record.update(status=status, reason=reason, started_at=started, finished_at=_now(),
                      duration_s=round(time.perf_counter() - t0, 3))
        return record

    reason = unsupported_reason(spec, device)
    if reason:
        return finish("unsupported", reason)

    plan = batching.plan(spec.batch_policy, model=spec.model, attn=spec.attn, mode=spec.mode,
                         seq_len=spec.seq_len, size=spec.batch_size, start=spec.batch_start)
    record["batch_note"] = plan.note
    results: dict[int, dict] = {}
    attempt_seconds: dict[int, float] = {}

    class AttemptFailed(Exception):
        pass

    def fits(b: int) -> bool:
        a0 = time.perf_counter()
        res = _attempt(spec, b, device)
        results[b], attempt_seconds[b] = res, round(time.perf_counter() - a0, 3)
        record["batch_attempts"].append({"batch_size": b, "outcome": res["outcome"],
                                         "seconds": attempt_seconds[b], "detail": res.get("detail")})
        if res["outcome"] == "error":
            raise AttemptFailed(f"batch size {b}: {res.get('detail')}")
        return res["outcome"] != "oom"

    try:
        answer, _ = batching.binary_search_largest(plan.candidates, fits)
    except AttemptFailed as e:
        return finish("error", str(e))
    if answer is None:
        cap = f"{spec.memory_cap_gib} GiB cap" if spec.memory_cap_gib else "the GPU's memory"
        return finish("oom", f"no batch size in {list(plan.candidates)} fits in {cap}")

    res = results[answer]
    m = res["measurement"]
    tokens_per_batch = answer * spec.seq_len
    peak, peak_source = flops.peak_flops(record["env"]["gpu_name"], spec.precision)
    fpt = flops.flops_per_token(n_params_non_embedding=m["params"]["non_embedding"], n_layer=cfg.n_layer,
                                n_head=cfg.n_head, head_dim=cfg.head_dim, seq_len=spec.seq_len)
    record.update(
        batch_size=answer,
        tokens_per_sec=m["window_tokens_per_sec"],
        tokens_per_sec_stats=_stats(m["step_times_s"], spec.window, tokens_per_batch),
        step_times_s=m["step_times_s"],
        params=m["params"],
        peak_memory_bytes=m["peak_memory_bytes"],
        compile=m["compile"],
        loss=m["loss"],
        kernels=m["kernels"],
        harness_extra=m["harness_extra"],
        phases_s=_phases(m["phases_s"], attempt_seconds[answer]),
        mfu={"value": flops.mfu(m["window_tokens_per_sec"], fpt, peak), "flops_per_token": fpt,
             "formula": flops.FORMULA, "peak_flops": peak, "peak_source": peak_source},
    )
    if res["outcome"] == "diverged":
        # A run whose loss went NaN/inf has no throughput worth reporting: keep the step times, drop the rate.
        record.update(tokens_per_sec=None, tokens_per_sec_stats=None)
        return finish("diverged", res.get("detail"))
    return finish("ok", None)
