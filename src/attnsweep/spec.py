"""One cell's parameters and their checks: every parameter is checked here, once, before any model is built or any
GPU time is spent, and the values derived from them (the model's shape, the batch plan) are derived here, once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

from . import batching
from .model import GPTConfig, closed_form_params, model_config
from .vocabulary import BATCH_POLICIES, CHOICES, DEVICES, ISOLATION, kv_heads_problem


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
    batch_tokens: int | None = None
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
        choices = {**CHOICES, "batch_policy": BATCH_POLICIES, "device": DEVICES, "isolate": ISOLATION}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise CellInputError(
                    f"--{key.replace('_', '-')}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        for key in ("seq_len", "steps", "window"):
            if getattr(self, key) < 1:
                raise CellInputError(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(self, key)}")
        if self.window > self.steps:
            raise CellInputError(f"--window ({self.window}) must not exceed --steps ({self.steps})")
        if self.memory_cap_gib is not None and self.memory_cap_gib <= 0:
            raise CellInputError(f"--memory-cap-gib must be positive, got {self.memory_cap_gib}")
        problem = kv_heads_problem(self.model, self.kv_heads)
        if problem:
            raise CellInputError(f"--kv-heads: {problem}")
        try:
            self.batch_plan
        except ValueError as e:
            raise CellInputError(str(e)) from None

    @cached_property
    def model_config(self) -> GPTConfig:
        return model_config(self.model, block_size=self.seq_len, kv_heads=self.kv_heads)

    @cached_property
    def static_floor_bytes(self) -> int:
        """A lower bound of the memory its training holds whatever the batch (the batch search's prior)."""
        return batching.static_floor_bytes(closed_form_params(self.model_config), self.optimizer)

    @cached_property
    def batch_plan(self) -> batching.BatchPlan:
        return batching.plan(self.batch_policy, model=self.model, attn=self.attn, mode=self.mode,
                             seq_len=self.seq_len, size=self.batch_size, start=self.batch_start,
                             tokens=self.batch_tokens)

    def record(self) -> dict:
        """The `cell` block of the JSON: the parameters that define the cell (not how it is run)."""
        d = dataclasses.asdict(self)
        for key in ("profile", "isolate", "batch_size", "batch_start"):
            d.pop(key)
        if d["batch_tokens"] is None:  # a setting of the tokens policy alone (the work a step does)
            d.pop("batch_tokens")
        return d

    def as_json(self) -> dict:
        """Every field, for a worker process to rebuild the spec."""
        return dataclasses.asdict(self)
