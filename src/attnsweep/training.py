"""What a harness is given and what it hands back, and the one training step every loop runs.

Two harnesses implement the contract (`Harness`): `native_harness.train_native` (our own loop, timed with CUDA
events) and `composer_harness.train_composer` (MosaicML Composer, throughput read from its SpeedMonitor). The cell
builds the model and data once and hands them to whichever harness the config names, so both measure the same thing.
`TrainStep` is the step itself (autocast forward, scaled backward, optimizer step), used by the native loop, the
profiled step of either harness and tools/minimal_loop.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch

from .vocabulary import OPTIMIZERS, PRECISION_DTYPES

# The study's optimizer settings (docs/protocol.md, Optimizer): constant learning rate, decay on weights only.
LR = 1e-4
BETAS = (0.9, 0.99)
EPS = 1e-6
WEIGHT_DECAY = 1e-3



def torch_dtype(precision: str) -> torch.dtype:
    """The dtype a precision name computes in (fp32 trains without autocast)."""
    return getattr(torch, PRECISION_DTYPES[precision])


@dataclass(frozen=True)
class StepHooks:
    """Where a timed cell takes its GPU, then the host, for itself (gpuslots), so that no other process's work
    overlaps its measured steps: after the first step (compilation, or loading the compiled code) and before the
    measured window's first step."""

    after_first_step: Callable[[], None] | None = None
    before_window: Callable[[], None] | None = None


@dataclass(frozen=True)
class TrainSpec:
    """How to train: everything but the model and the data."""

    steps: int
    window: int
    precision: str  # fp16 | bf16 | fp32
    optimizer: str  # adamw | adamw8bit
    mode: str  # eager | compiled
    fullgraph: bool  # only meaningful when mode == "compiled"
    device: torch.device
    hooks: StepHooks = StepHooks()


@dataclass
class TrainResult:
    """What a harness measured. Times are seconds, synchronized with the device."""

    harness: str
    step_times_s: list[float]  # one per step, including the first (compile/warm-up) step
    window_tokens_per_sec: float  # tokens in the last `window` steps / their synchronized elapsed time
    losses: list[float]  # one per step
    nonfinite_step: int | None  # first step (1-based) whose loss was NaN or infinite
    first_step_s: float  # wall time of step 1: tracing, compilation and warm-up
    peak_memory_bytes: int | None
    graphs: int | None = None  # FX graphs Dynamo compiled (None in eager mode)
    graph_breaks: int | None = None
    break_reasons: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # harness-specific facts worth recording
    # One more training step, same model and settings, for the profiler to see which kernels run; not serialized.
    profile_step: Callable[[], None] | None = field(default=None, repr=False)


def param_groups(model: torch.nn.Module) -> list[dict]:
    """Weight decay on weight matrices only: biases, LayerNorm and 1-D parameters are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, name: str) -> torch.optim.Optimizer:
    """The study's AdamW (foreach), the same with PyTorch's fused kernel, or bitsandbytes' 8-bit AdamW, all with the
    same settings."""
    if name == "adamw":
        return torch.optim.AdamW(param_groups(model), lr=LR, betas=BETAS, eps=EPS, foreach=True)
    if name == "adamw_fused":
        return torch.optim.AdamW(param_groups(model), lr=LR, betas=BETAS, eps=EPS, fused=True)
    if name == "adamw8bit":
        import bitsandbytes as bnb  # imported lazily: optional, and CUDA-only in practice

        return bnb.optim.AdamW8bit(param_groups(model), lr=LR, betas=BETAS, eps=EPS)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def optimizer_unsupported_reason(name: str, device_type: str) -> str | None:
    """Why optimizer `name` cannot run on `device_type`, or None if it can (asked before any model is built)."""
    if name in ("adamw", "adamw_fused"):  # fused AdamW runs on CUDA and, since torch 2.4, on the CPU
        return None
    if name != "adamw8bit":
        return f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}"
    if device_type != "cuda":
        return (
            f"adamw8bit (bitsandbytes AdamW8bit) needs a CUDA device, not {device_type!r}: "
            "its 8-bit optimizer kernels are CUDA kernels, the ones the study measured"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # a compiled extension can fail to import in many ways
        return f"adamw8bit needs bitsandbytes, which does not import ({type(exc).__name__}: {exc})"
    return None


class Harness(Protocol):
    """A training loop: train `model` for `spec.steps` steps on the cycled `batches` and say how fast it went."""

    def __call__(
        self, model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], spec: TrainSpec,
        tokens_per_batch: int,
    ) -> TrainResult: ...


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """Mixed precision as the study ran it: autocast to fp16/bf16, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch_dtype(precision))


class TrainStep:
    """One training step, written once: forward under autocast, backward (scaled for fp16, whose small gradients
    would underflow; bf16 and fp32 need no scaling), optimizer step, gradients cleared. Returns the loss, detached,
    without waiting for the device."""

    def __init__(self, forward: Callable, optimizer: torch.optim.Optimizer, precision: str, device_type: str):
        self.forward, self.optimizer = forward, optimizer
        self.precision, self.device_type = precision, device_type
        self.scaler = torch.amp.GradScaler(device_type, enabled=precision == "fp16")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device_type):
            _, loss = self.forward(x, y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def _set_env(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def scoped_env(**values: str | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the duration of a block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _set_env(values)
        yield
    finally:
        _set_env(saved)


@contextlib.contextmanager
def private_compile_cache(prefix: str = "attnsweep-inductor-") -> Iterator[str]:
    """A fresh inductor + Triton cache for one training run, removed afterwards; yields its folder.

    A shared FX-graph cache has reused another SDPA backend's compiled code (docs/protocol.md, Pitfalls), and a warm
    cache would also hide the compile time that is recorded. Used by every attempt of a cell and by the tools that
    measure beside it (tools/minimal_loop.py, tools/harness_gap.py), so all compile under the same conditions.
    """
    cache = tempfile.mkdtemp(prefix=prefix)
    try:
        with scoped_env(TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"),
                        TRITON_CACHE_DIR=os.path.join(cache, "triton")):
            yield cache
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def reset_graph_counters() -> None:
    """Forget what Dynamo compiled before, so the next compile's graphs and breaks are counted alone."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def graph_stats() -> tuple[int, int, list[str]]:
    """(graphs compiled, graph breaks, distinct break reasons) from Dynamo's counters since the last reset."""
    from torch._dynamo.utils import counters

    graphs = int(counters["stats"].get("unique_graphs", 0))
    reasons = counters["graph_break"]
    return graphs, int(sum(reasons.values())), sorted(str(r) for r in reasons)
