"""The Composer harness: train as the study did, with MosaicML Composer, and read throughput from its SpeedMonitor.

The study trained with Composer (`precision='amp_fp16'`, `max_duration='125ba'`, `SpeedMonitor(window_size=25)`,
`compile_config={'fullgraph': True}` or none for eager). `train_composer` runs the same model, data, optimizer and
precision as `native_harness.train_native` through a Composer `Trainer`, and reports the tokens/s SpeedMonitor logged
at the last batch: tokens of the last `window` batches over the wall-clock time Composer measured for them. The
compile mode with CUDA graphs runs here too: its compile_config adds mode='reduce-overhead'
(training.compile_options, as the native loop compiles), and a callback marks each batch's start for the CUDA graph
trees, as the native step does.

Composer is optional. It is imported only inside the functions here, so the package imports and the native harness
runs without it; `composer_unsupported_reason` says why a composer cell cannot run (not installed, or a precision
Composer does not run on that device). Install it with `bash envs/install-composer.sh` (Composer 0.32.1 pins an old
torch, so it is installed without its pins; see envs/composer.txt).

bitsandbytes' 8-bit AdamW is checked by `training.optimizer_unsupported_reason`, for either harness.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from attnsweep import training
from attnsweep.training import StepHooks, TrainResult, TrainSpec
from attnsweep.vocabulary import COMPILED_MODES, CUDAGRAPH_MODES

if TYPE_CHECKING:  # for the annotations only: Composer is imported where it is used, and may be absent
    from composer.core import State
    from composer.devices import DeviceCPU, DeviceGPU
    from composer.loggers import Logger

Batch = tuple[torch.Tensor, torch.Tensor]  # (token ids, targets) on the device

COMPOSER_VERSION = "0.32.1"  # the release envs/install-composer.sh installs
SPEED_MONITOR_KEY = "throughput/tokens_per_sec"  # what SpeedMonitor logs once its window is full
COMPOSER_PRECISION = {"fp16": "amp_fp16", "bf16": "amp_bf16", "fp32": "fp32"}
SEED = 17  # Composer's Trainer seeds every RNG with this (it would otherwise draw a random seed)
INSTALL_HINT = "install it with `bash envs/install-composer.sh`"


# --------------------------------------------------------------------------------------------------------------------
# Support checks


def composer_import_error() -> str | None:
    """None if Composer's Trainer and SpeedMonitor import, else the import error as text."""
    try:
        import composer  # noqa: F401
        from composer import Trainer  # noqa: F401
        from composer.callbacks import SpeedMonitor  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install that fails while importing
        return f"{type(exc).__name__}: {exc}"
    return None


def composer_version() -> str | None:
    try:
        import composer
    except Exception:
        return None
    return str(composer.__version__)


def composer_unsupported_reason(precision: str, device_type: str) -> str | None:
    """Why the composer harness cannot run this precision on this device, or None if it can."""
    error = composer_import_error()
    if error is not None:
        return (
            f"harness 'composer' needs MosaicML Composer (mosaicml=={COMPOSER_VERSION}), which does not import "
            f"({error}); {INSTALL_HINT}"
        )
    if precision not in COMPOSER_PRECISION:
        return f"unknown precision {precision!r}; allowed: {', '.join(COMPOSER_PRECISION)}"
    if device_type not in ("cuda", "cpu"):
        return f"harness 'composer' runs on cuda or cpu, not {device_type!r}"
    if device_type == "cpu" and precision != "fp32":
        # composer.core.precision._validate_precision: "<precision> is not supported for CPU training."
        return f"Composer trains on CPU in fp32 only (precision {COMPOSER_PRECISION[precision]!r} is refused on CPU)"
    return None


# --------------------------------------------------------------------------------------------------------------------
# The Composer pieces (built on first use, so that this module imports without Composer)


# One place for every class that subclasses Composer's.
@functools.cache
def _composer_classes() -> tuple[type, type, type, type]:  # noqa: C901
    from composer.core import Callback
    from composer.loggers import LoggerDestination
    from composer.models import ComposerModel

    class WrappedGPT(ComposerModel):
        """Composer's view of `model(idx, targets) -> (logits, loss)`: forward returns the outputs, loss() the loss."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            idx, targets = batch
            return self.model(idx, targets)

        def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: Batch) -> torch.Tensor:
            return outputs[1]

    class PoolDataset(torch.utils.data.Dataset):
        """`steps` items, each one whole pre-made device batch, cycling over the pool (no copies, no collation)."""

        def __init__(self, batches: Sequence[Batch], steps: int) -> None:
            self.batches = batches
            self.steps = steps

        def __len__(self) -> int:
            return self.steps

        def __getitem__(self, i: int) -> Batch:
            return self.batches[i % len(self.batches)]

    class MemoryLogger(LoggerDestination):
        """Keeps every metric logged, as {key: [(batch, value), ...]}."""

        def __init__(self) -> None:
            self.metrics: dict[str, list[tuple[int | None, float]]] = {}

        def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
            for key, value in metrics.items():
                if isinstance(value, torch.Tensor):
                    value = value.item()
                self.metrics.setdefault(key, []).append((step, value))

    class StepRecorder(Callback):
        """Per-batch synchronized wall time (batch end to batch end; the first from the start of fit) and loss; with
        `cudagraphs`, each batch's start marked as a new iteration for the CUDA graph trees (training.TrainStep says
        why)."""

        def __init__(self, device: torch.device, hooks: StepHooks, window_start: int, window_end: int,
                     cudagraphs: bool = False) -> None:
            self.device = device
            self.hooks, self.window_start, self.window_end = hooks, window_start, window_end
            self.cudagraphs = cudagraphs
            self.step_times_s: list[float] = []
            self.losses: list[float] = []
            self._last: float | None = None

        def _sync(self) -> None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        def fit_start(self, state: State, logger: Logger) -> None:
            self._sync()
            self._last = time.perf_counter()

        def batch_start(self, state: State, logger: Logger) -> None:
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()

        def batch_end(self, state: State, logger: Logger) -> None:
            self._sync()
            now = time.perf_counter()
            self.step_times_s.append(now - self._last)
            done = len(self.step_times_s)
            for hook in (self.hooks.after_first_step if done == 1 else None,
                         self.hooks.before_window if done == self.window_start else None,
                         self.hooks.after_window if done == self.window_end else None):
                if hook is not None:
                    hook()
                    now = time.perf_counter()  # the wait for the GPU or the host belongs to no step
            self._last = now
            # One microbatch per batch, so state.loss is this batch's loss: what loss() returned, unscaled. (Composer
            # already .item()'d it for its own logging, so reading it adds no stall of ours.)
            loss = state.loss
            self.losses.append(float(loss.detach().float().item() if isinstance(loss, torch.Tensor) else loss))

    return WrappedGPT, PoolDataset, MemoryLogger, StepRecorder


@contextlib.contextmanager
def _composer_environment() -> Iterator[None]:
    """Keep Composer local and quiet while it runs.

    Composer 0.32.1 talks to the network only through its MosaicMLLogger, which the Trainer adds by itself when
    MOSAICML_PLATFORM is 'true' (and an access token is set): forced off here. The run name is fixed (passed to the
    Trainer), so COMPOSER_RUN_NAME / RUN_NAME from the environment are ignored. Composer writes files only with a
    save_folder (none here): a run leaves nothing in the cwd (tests/test_composer.py checks both)."""
    with training.scoped_env(MOSAICML_PLATFORM="false", COMPOSER_RUN_NAME=None, RUN_NAME=None):
        yield


def _composer_device(device: torch.device) -> DeviceCPU | DeviceGPU:
    """Composer's device object for `device`. On CUDA, Composer's DeviceGPU switches TF32 matmuls (cuBLAS and cuDNN)
    on by default; the two harnesses must run the same precision, so the process' own TF32 settings are kept."""
    from composer.devices import DeviceCPU, DeviceGPU

    if device.type != "cuda":
        return DeviceCPU()
    index = device.index if device.index is not None else torch.cuda.current_device()
    matmul_tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    cudnn_tf32 = bool(torch.backends.cudnn.allow_tf32)
    try:
        return DeviceGPU(device_id=index, allow_tf32=matmul_tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


# --------------------------------------------------------------------------------------------------------------------
# The harness


def train_composer(
    model: torch.nn.Module,
    batches: list[Batch],
    spec: TrainSpec,
    tokens_per_batch: int,
) -> TrainResult:
    """Train `model` for `spec.steps` batches with Composer's Trainer; throughput as SpeedMonitor logged it.

    `batches` already sit on `spec.device`; they are cycled in order, one per step, as the native harness does.
    Raises RuntimeError if the cell cannot run here (check `composer_unsupported_reason` and
    `optimizer_unsupported_reason` first) and ValueError if `steps` leaves SpeedMonitor no full window.
    """
    reason = training.optimizer_unsupported_reason(spec.optimizer, spec.device.type) or composer_unsupported_reason(
        spec.precision, spec.device.type
    )
    if reason is not None:
        raise RuntimeError(reason)
    if not batches:
        raise ValueError("no batches")
    if spec.window < 1 or spec.steps < spec.window + 1:
        # SpeedMonitor logs once it has window + 1 batch-end timestamps: the first batch's end opens the window.
        raise ValueError(f"SpeedMonitor needs steps >= window + 1 (steps={spec.steps}, window={spec.window})")

    from composer import Trainer
    from composer.callbacks import SpeedMonitor
    from composer.core import DataSpec

    WrappedGPT, PoolDataset, MemoryLogger, StepRecorder = _composer_classes()

    batch_size = int(batches[0][0].shape[0])
    loader = torch.utils.data.DataLoader(
        PoolDataset(batches, spec.steps),
        batch_size=None,  # each item is already a whole batch
        shuffle=False,
        num_workers=0,
        pin_memory=False,
        collate_fn=_identity,
    )
    data_spec = DataSpec(
        loader,
        get_num_samples_in_batch=lambda b: int(b[0].shape[0]),
        get_num_tokens_in_batch=lambda b: int(tokens_per_batch),
    )
    composer_model = WrappedGPT(model)
    optimizer = training.make_optimizer(model, spec.optimizer)
    speed_monitor = SpeedMonitor(window_size=spec.window, time_unit="seconds")
    cudagraphs = spec.mode in CUDAGRAPH_MODES
    recorder = StepRecorder(spec.device, spec.hooks, spec.steps - spec.window, spec.steps, cudagraphs)
    memory_logger = MemoryLogger()
    compiled = spec.mode in COMPILED_MODES
    watch = training.CudagraphWatch() if cudagraphs else None
    cudagraph_stats = None

    training.reset_graph_counters(spec.hooks.compiled)
    if spec.device.type == "cuda":
        torch.cuda.synchronize(spec.device)
        torch.cuda.reset_peak_memory_stats(spec.device)

    trainer = None
    with _composer_environment(), watch if watch is not None else contextlib.nullcontext():
        try:
            trainer = Trainer(
                model=composer_model,
                train_dataloader=data_spec,
                optimizers=optimizer,
                max_duration=f"{spec.steps}ba",
                device_train_microbatch_size=batch_size,  # one microbatch per batch, as the native harness
                precision=COMPOSER_PRECISION[spec.precision],
                callbacks=[speed_monitor, recorder],
                loggers=[memory_logger],
                compile_config=training.compile_options(spec.mode, spec.fullgraph),
                device=_composer_device(spec.device),
                progress_bar=False,
                log_to_console=False,
                save_folder=None,
                autoresume=False,
                run_name="attnsweep-composer",
                seed=SEED,
            )
            trainer.fit()
            if watch is not None:  # while Composer still holds the compiled model, and with it the graphs
                cudagraph_stats = watch.stats(spec.device)
        finally:
            if trainer is not None:
                trainer.close()

    throughput = memory_logger.metrics.get(SPEED_MONITOR_KEY, [])
    if not throughput:
        raise RuntimeError(f"SpeedMonitor logged no {SPEED_MONITOR_KEY!r} (logged: {sorted(memory_logger.metrics)})")
    last_step, window_tokens_per_sec = throughput[-1]

    step_times = recorder.step_times_s
    losses = recorder.losses
    nonfinite = next((i + 1 for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
    peak = int(torch.cuda.max_memory_allocated(spec.device)) if spec.device.type == "cuda" else None
    graphs = breaks = None
    reasons: list[str] = []
    if compiled:
        graphs, breaks, reasons = training.graph_stats()
    window_times = step_times[-spec.window :]
    profile_step = _profile_step(trainer.state.model, optimizer, batches[0], spec)
    return TrainResult(
        harness="composer",
        step_times_s=step_times,
        window_tokens_per_sec=float(window_tokens_per_sec),
        losses=losses,
        nonfinite_step=nonfinite,
        first_step_s=step_times[0] if step_times else float("nan"),
        peak_memory_bytes=peak,
        graphs=graphs,
        graph_breaks=breaks,
        break_reasons=reasons,
        cudagraphs=cudagraph_stats,
        extra={
            "composer_version": composer_version(),
            "speed_monitor_key": SPEED_MONITOR_KEY,
            "speed_monitor_window": spec.window,
            "speed_monitor_last_batch": last_step,
            "composer_precision": COMPOSER_PRECISION[spec.precision],
            # the same window timed by our own synchronized callback, as a cross-check of SpeedMonitor's clock
            "recorder_window_tokens_per_sec": tokens_per_batch * len(window_times) / sum(window_times),
        },
        profile_step=profile_step,
    )


def _profile_step(state_model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
                  spec: TrainSpec) -> Callable[[], torch.Tensor]:
    """One more training step through the module Composer ran (compiled, if it compiled it), for kernel profiling:
    the shared training step, under the same autocast and gradient scaling."""
    step = training.TrainStep(lambda x, y: state_model((x, y)), optimizer, spec.precision, spec.device.type,
                              cudagraphs=spec.mode in CUDAGRAPH_MODES)
    return lambda: step(*batch)


def _identity(batch: Batch) -> Batch:
    return batch
