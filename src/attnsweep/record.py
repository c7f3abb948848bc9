"""The cell record: built once, as a dataclass whose fields are those of schemas/cell.schema.json, in its order."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import flops
from .attempt import AttemptResult

SCHEMA_VERSION = 1


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class CellRecord:
    """One cell's JSON record. `status` and `reason` say how it ended; the rest is filled in as the cell runs."""

    cell: dict
    env: dict
    model_config: dict
    attention: dict | None = None
    started_at: str = field(default_factory=now)
    status: str | None = None
    reason: str | None = None
    batch_size: int | None = None
    batch_note: str | None = None
    batch_attempts: list[dict] = field(default_factory=list)
    tokens_per_sec: float | None = None
    tokens_per_sec_stats: dict | None = None
    step_times_s: list[float] = field(default_factory=list)
    params: dict | None = None
    peak_memory_bytes: int | None = None
    compile: dict | None = None
    loss: dict | None = None
    mfu: dict | None = None
    kernels: dict | None = None
    harness_extra: dict | None = None
    phases_s: dict | None = None
    window_conditions: dict | None = None
    warmup: dict | None = None
    finished_at: str | None = None
    duration_s: float | None = None

    def add_attempt(self, batch_size: int, result: AttemptResult, stage: str | None = None) -> None:
        entry = {"batch_size": batch_size, "outcome": result.outcome, "seconds": result.seconds,
                 "detail": result.detail}
        if stage:
            entry["stage"] = stage
        self.batch_attempts.append(entry)

    def measured(self, batch_size: int, result: AttemptResult, *, seq_len: int, window: int, precision: str) -> None:
        """Fill in what the attempt at `batch_size` measured."""
        m = result.measurement
        assert m is not None
        cfg = self.model_config
        peak, peak_source = flops.peak_flops(self.env["gpu_name"], precision)
        fpt = flops.flops_per_token(n_params_non_embedding=m.params["non_embedding"], n_layer=cfg["n_layer"],
                                    n_head=cfg["n_head"], head_dim=cfg["n_embd"] // cfg["n_head"], seq_len=seq_len)
        inside = {k: round(v, 3) for k, v in m.phases_s.items()}
        # The attempt's time outside its phases: a worker process's start, imports and result file.
        outside_s = max(0.0, result.seconds - sum(m.phases_s.values()))
        self.batch_size = batch_size
        self.tokens_per_sec = m.window_tokens_per_sec
        self.tokens_per_sec_stats = window_stats(m.step_times_s, window, batch_size * seq_len)
        self.step_times_s = m.step_times_s
        self.params = m.params
        self.peak_memory_bytes = m.peak_memory_bytes
        self.compile = m.compile
        self.loss = m.loss
        self.kernels = m.kernels
        self.harness_extra = m.harness_extra
        self.phases_s = {"outside": round(outside_s, 3), **inside}
        self.window_conditions = m.window_conditions
        self.mfu = {"value": flops.mfu(m.window_tokens_per_sec, fpt, peak), "flops_per_token": fpt,
                    "formula": flops.FORMULA, "peak_flops": peak, "peak_source": peak_source}
        if result.outcome == "diverged":
            # A run whose loss went NaN/inf has no throughput worth reporting: keep the step times, drop the rate.
            self.tokens_per_sec = self.tokens_per_sec_stats = None

    def finish(self, status: str, reason: str | None, duration_s: float) -> dict:
        self.status, self.reason = status, reason
        self.finished_at, self.duration_s = now(), round(duration_s, 3)
        return self.to_json()

    def to_json(self) -> dict:
        """The record as the schema orders it (what summary.csv's columns follow)."""
        d = dataclasses.asdict(self)
        order = ["schema_version", "status", "reason", "cell", "batch_size", "batch_note", "batch_attempts",
                 "tokens_per_sec", "tokens_per_sec_stats", "step_times_s", "params", "model_config", "attention",
                 "peak_memory_bytes", "compile", "loss", "mfu", "kernels", "harness_extra", "phases_s",
                 "window_conditions", "warmup", "env", "started_at", "finished_at", "duration_s"]
        d["schema_version"] = SCHEMA_VERSION
        if d["warmup"] is None:
            d.pop("warmup")
            order.remove("warmup")
        return {k: d[k] for k in order}


def window_stats(step_times: list[float], window: int, tokens_per_batch: int) -> dict:
    """Spread of the per-step tokens/s over the window."""
    tps = [tokens_per_batch / t for t in step_times[-window:]]
    return {
        "mean": statistics.fmean(tps), "median": statistics.median(tps),
        "std": statistics.stdev(tps) if len(tps) > 1 else 0.0, "min": min(tps), "max": max(tps), "n": len(tps),
    }
