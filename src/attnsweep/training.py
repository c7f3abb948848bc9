"""What a harness is given and what it hands back, and the one training step every loop runs.

Two harnesses implement the contract (`Harness`): `native_harness.train_native` (our own loop, timed with CUDA
events) and `composer_harness.train_composer` (MosaicML Composer, throughput read from its SpeedMonitor). The cell
builds the model and data once and hands them to whichever harness the config names, so both measure the same thing.
`TrainStep` is the step itself (autocast forward, scaled backward, optimizer step), used by the native loop, the
profiled step of either harness and tools/minimal_loop.py. `compile_model` compiles a model as a mode of the grid
asks (vocabulary.TORCH_COMPILE_MODES), and `CudagraphWatch` says what CUDA graph trees did in a run that uses them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch

from .vocabulary import CUDAGRAPH_MODES, MODES, OPTIMIZERS, PRECISION_DTYPES, TORCH_COMPILE_MODES

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
    measured window's first step; and where it gives the host back: after the window's last step, synchronized."""

    after_first_step: Callable[[], None] | None = None
    before_window: Callable[[], None] | None = None
    after_window: Callable[[], None] | None = None
    # A warm-up's: at the end of the model's first compilation, before its compiled code runs (its run seat,
    # gpuslots.run_seat); registered by reset_graph_counters, whose reset of Dynamo drops callbacks.
    compiled: Callable[[], None] | None = None


@dataclass(frozen=True)
class TrainSpec:
    """How to train: everything but the model and the data."""

    steps: int
    window: int
    precision: str  # fp16 | bf16 | fp32
    optimizer: str  # adamw | adamw8bit
    mode: str  # a vocabulary.MODES value: eager | compiled | compiled_cudagraphs
    fullgraph: bool  # only meaningful in a compiled mode (vocabulary.COMPILED_MODES)
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
    cudagraphs: dict | None = None  # CudagraphWatch.stats() in a mode with CUDA graphs, else None
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
    if name not in OPTIMIZERS:
        return f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}"
    if name != "adamw8bit":  # torch's AdamW; fused, it runs on CUDA and, since torch 2.4, on the CPU
        return None
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


def mode_unsupported_reason(mode: str, device_type: str) -> str | None:
    """Why mode `mode` cannot run on `device_type`, or None if it can (asked before any model is built)."""
    if mode not in MODES:
        return f"unknown mode {mode!r}; allowed: {', '.join(MODES)}"
    if mode in CUDAGRAPH_MODES and device_type != "cuda":
        # Elsewhere torch.compile(mode="reduce-overhead") quietly compiles without CUDA graphs (Inductor counts a skip
        # and logs nothing), so a cell would measure the plain compiled mode under this mode's name. A user who asks
        # for CUDA graphs on a CPU is told they do not exist there, as for flash-attn on a CPU, and no time is spent.
        return (
            f"mode {mode} replays torch.compile's code as CUDA graphs (mode='reduce-overhead'), which need a CUDA "
            f"device, not {device_type!r}: there it would run as plain 'compiled' under another name"
        )
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


def compile_options(mode: str, fullgraph: bool) -> dict | None:
    """torch.compile's keyword arguments for `mode` (a vocabulary.MODES value), None in eager mode: what the native
    loop passes to torch.compile and the Composer harness as its compile_config, so both compile alike."""
    torch_mode = TORCH_COMPILE_MODES[mode]
    if torch_mode is None:
        return None
    # The default mode is left implicit: `compiled` compiles exactly as it did before the CUDA-graph mode existed.
    return {"fullgraph": fullgraph, **({} if torch_mode == "default" else {"mode": torch_mode})}


def compile_model(model: torch.nn.Module, mode: str, fullgraph: bool) -> Callable:
    """`model` compiled as `mode` asks (itself in eager mode)."""
    options = compile_options(mode, fullgraph)
    return model if options is None else torch.compile(model, **options)


class TrainStep:
    """One training step, written once: forward under autocast, backward (scaled for fp16, whose small gradients
    would underflow; bf16 and fp32 need no scaling), optimizer step, gradients cleared. Returns the loss, detached,
    without waiting for the device.

    With `cudagraphs` (a forward compiled with CUDA graph trees, mode='reduce-overhead') each step first marks a new
    iteration (torch.compiler.cudagraph_mark_step_begin), and the loss returned is a copy: the graphs' outputs live
    in one memory pool that the next step's replay overwrites, and torch refuses to read an overwritten output.
    The copy is one scalar kernel inside the timed step, the price any training loop that keeps its losses pays."""

    def __init__(self, forward: Callable, optimizer: torch.optim.Optimizer, precision: str, device_type: str,
                 cudagraphs: bool = False):
        self.forward, self.optimizer = forward, optimizer
        self.precision, self.device_type = precision, device_type
        self.cudagraphs = cudagraphs
        self.scaler = torch.amp.GradScaler(device_type, enabled=precision == "fp16")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cudagraphs:
            # The previous step's outputs (its loss already copied, its gradients cleared) may now be overwritten;
            # without the mark, the trees could take this step for a continuation of the last.
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(self.precision, self.device_type):
            _, loss = self.forward(x, y)
        # Copied before anything else runs: valid now, overwritten by the next replay.
        kept = loss.detach().clone() if self.cudagraphs else loss.detach()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return kept


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


def reset_graph_counters(on_compiled: Callable[[], None] | None = None) -> None:
    """Forget what Dynamo compiled before, so the next compile's graphs and breaks are counted alone; and call
    `on_compiled` at the end of each compilation from here on (Dynamo's end-of-compile callback, which runs before
    the compiled code does), or at once where this torch has no such callback."""
    import torch._dynamo

    torch._dynamo.reset()  # which drops every end-of-compile callback
    if on_compiled is not None:
        try:
            from torch._dynamo.callback import callback_handler
        except ImportError:
            callback_handler = None
        if callback_handler is None or not hasattr(callback_handler, "register_end_callback"):
            on_compiled()
        else:
            callback_handler.register_end_callback(lambda *_: on_compiled())  # (older torch: no arguments)
    torch._dynamo.utils.counters.clear()
    # The CUDA graph trees are process-wide: forget an earlier run's graphs, so that a count is this run's alone
    # (recent torch's reset does this too; older ones only through the compiled backend's own reset). Never imported,
    # there are none: an eager run does not import Inductor for it.
    trees = sys.modules.get("torch._inductor.cudagraph_trees")
    if trees is not None and torch.cuda.is_initialized():
        trees.reset_cudagraph_trees()


def graph_stats() -> tuple[int, int, list[str]]:
    """(graphs compiled, graph breaks, distinct break reasons) from Dynamo's counters since the last reset."""
    from torch._dynamo.utils import counters

    graphs = int(counters["stats"].get("unique_graphs", 0))
    reasons = counters["graph_break"]
    return graphs, int(sum(reasons.values())), sorted(str(r) for r in reasons)


# The compile caches' counters a run reports (Dynamo's counters, keyed by section, since reset_graph_counters):
# whether the first step compiled or loaded from the cell's cache, and why a cache was bypassed.
_CACHE_COUNTERS = {
    "fx_graph": ("inductor", "fxgraph_cache_"),
    "aot_autograd": ("aot_autograd", "autograd_cache_"),
}


def compile_cache_stats() -> dict[str, dict[str, int]]:
    """{cache: {hit, miss, bypass, ...: count}} for Inductor's FX-graph cache and AOTAutograd's cache: a timed job
    that found its warm-up's code shows hits; a bypass means that part was compiled again."""
    from torch._dynamo.utils import counters

    stats = {}
    for name, (section, prefix) in _CACHE_COUNTERS.items():
        stats[name] = {key[len(prefix):]: int(n) for key, n in sorted(counters[section].items())
                       if key.startswith(prefix)}
    return stats


# Every message of Inductor's that says a compiled region runs without CUDA graphs starts so ("skipping cudagraphs
# due to ...", "skipping cudagraph due to function ... exceeding max re-recording limit ...").
_CUDAGRAPH_SKIP = re.compile(r"skipping cudagraph", re.IGNORECASE)
MAX_SKIP_REASONS = 10


class CudagraphWatch(logging.Handler):
    """What CUDA graph trees did during a training run: the graphs they captured, and the compiled regions that ran
    without one (skipped), with the reasons Inductor gave.

    Inductor counts each skip (`counters["inductor"]["cudagraph_skips"]`, cleared by reset_graph_counters) and logs
    its reason as a warning through a logger of torch._inductor.cudagraph_utils (artifact `perf_hints` in older
    torch, `cudagraphs` in newer): this handler is attached to each of that module's loggers, which pass warnings on
    whether the artifact is enabled or not (one raised above WARNING is lowered for the run). Use it as a context
    manager around the run (compilation included: most skips are decided there), then call `stats` while the
    compiled model is still alive (the trees, which hold the graphs, are freed with it).
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []
        self._loggers: list[tuple[logging.Logger, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _CUDAGRAPH_SKIP.search(message):
            # The first line is the reason; what follows is a stack trace of the op that caused it.
            self.messages.append(message.strip().splitlines()[0].strip()[:300])

    def __enter__(self) -> CudagraphWatch:
        import torch._inductor.cudagraph_utils as cudagraph_utils

        self._loggers = [(v, v.level) for v in vars(cudagraph_utils).values() if isinstance(v, logging.Logger)]
        for logger, _ in self._loggers:
            logger.addHandler(self)
            if not logger.isEnabledFor(logging.WARNING):
                logger.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc) -> None:
        for logger, level in self._loggers:
            logger.removeHandler(self)
            logger.setLevel(level)
        self._loggers = []

    def stats(self, device: torch.device) -> dict:
        """{captured, skipped, skip_reasons, fell_back}: CUDA graphs recorded on `device` (one per compiled forward
        and backward region, more where one was re-recorded; graph breaks make more regions), skips counted, their
        distinct reasons, and whether any part ran without CUDA graphs (a skip, or no graph at all)."""
        from torch._dynamo.utils import counters

        skipped = int(counters["inductor"]["cudagraph_skips"])
        reasons = sorted(set(self.messages))[:MAX_SKIP_REASONS]
        unlogged = skipped - len(self.messages)
        if unlogged > 0:
            reasons.append(f"{unlogged} skipped without a logged reason (Inductor logs none for graphs compiled for "
                           "a CPU device)")
        try:
            captured = captured_cudagraphs(device)
        except (AttributeError, TypeError) as e:
            # A private API of the graph trees: where a torch differs the count is lost, not the cell's measurement.
            captured = None
            reasons.append(f"graphs captured unknown: this torch's CUDA graph trees differ "
                           f"({type(e).__name__}: {e})"[:300])
        return {"captured": captured, "skipped": skipped, "skip_reasons": reasons,
                "fell_back": skipped > 0 or captured == 0}


def captured_cudagraphs(device: torch.device) -> int:
    """CUDA graphs the CUDA graph trees of `device` hold now: the nodes of every tree (0 off CUDA, or before any)."""
    if device.type != "cuda" or not torch.cuda.is_initialized():
        return 0
    from torch._inductor import cudagraph_trees

    index = device.index if device.index is not None else torch.cuda.current_device()
    manager = cudagraph_trees.get_manager(index, create_if_none_exists=False)
    if manager is None:
        return 0
    # A root is a region recorded first in an iteration; each later region recorded after it is a descendant.
    return sum(1 + root.num_descendants() for root in manager.get_roots())
