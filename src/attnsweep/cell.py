"""One grid cell end to end: check support, find the batch, measure, and build its one JSON record.

Two ways to run a cell. `run_cell` does it all in one go, each batch-size attempt compiling from cold. In a sweep
the work is split in two stages: `warm_up` finds the batch (or that the cell is unsupported or out of memory) and
fills the cell's own compile cache, several cells at a time; then `timed_cell` measures at that batch with that
cache, alone on its GPU during its measured steps. The cache is the cell's alone (docs/protocol.md, Pitfalls).

The parent process never trains during a batch search: on a GPU each attempt then runs in a fresh process, since
an out-of-memory error can leave CUDA in a poisoned state. The timed stage's single attempt runs in this process:
its batch is known to fit.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import attention, batching, searchlog
from .attempt import AttemptResult, measure, run_attempt
from .provenance import environment
from .record import CellRecord
from .spec import CellInputError, CellSpec
from .training import StepHooks, mode_unsupported_reason, optimizer_unsupported_reason, torch_dtype
from .vocabulary import AXES, memory_kind

# Enough steps for every compilation a cell goes through: some implementations compile a second graph at step 3.
WARMUP_STEPS = 10
# A warm-up's step times are kept to 0.1 ms: ample for a pace, beside steps of 28 ms and more on an H200.
STEP_DIGITS = 4


def resolve_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if requested == "cuda":
        raise CellInputError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return torch.device("cpu")


def check_memory_cap(spec: CellSpec, device: torch.device) -> None:
    if device.type == "cuda" and spec.memory_cap_gib is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        if spec.memory_cap_gib * 2**30 > total:
            raise CellInputError(f"--memory-cap-gib {spec.memory_cap_gib} exceeds the GPU's {total / 2**30:.1f} GiB")


def unsupported_reason(spec: CellSpec, device: torch.device) -> str | None:
    """Why this combination cannot run here, or None. Asked before any model is built."""
    cfg = spec.model_config
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    reason = attention.unsupported_reason(
        spec.attn, device_type=device.type, dtype=torch_dtype(spec.precision), head_dim=cfg.head_dim,
        n_head=cfg.n_head, n_kv_head=cfg.kv_heads, capability=capability,
    )
    if reason:
        return reason
    reason = (mode_unsupported_reason(spec.mode, device.type)
              or optimizer_unsupported_reason(spec.optimizer, device.type))
    if reason is None and spec.harness == "composer":
        from .composer_harness import composer_unsupported_reason  # imports Composer lazily, if at all

        reason = composer_unsupported_reason(spec.precision, device.type)
    return reason


def _progress(message: str) -> None:
    print(f"attnsweep: {message}", file=sys.stderr, flush=True)


class StaleWarmup(RuntimeError):
    """A warm-up found the cell unsupported and the timed job, asking again, finds that it runs: the warm-up was
    made where other packages were installed (a module that did not import then), so its verdict is not the cell's.
    """


class _Ended(Exception):
    """The cell ends without a batch size to measure at: its status and the reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _budget(spec: CellSpec, device: torch.device) -> int | None:
    """The memory a batch must fit in: the cap, or the GPU's; None on the CPU (no prediction there)."""
    if device.type != "cuda":
        return None
    return _capped(spec.memory_cap_gib, torch.cuda.get_device_properties(device).total_memory)


def _capped(cap_gib: float | None, gpu_bytes: int | None) -> int | None:
    return int(cap_gib * 2**30) if cap_gib is not None else gpu_bytes


def prior_peaks(prior: dict | None) -> dict[int, int] | None:
    """{batch size: peak bytes} of a record that places a search's first attempt (placing_record), where it ran
    (status ok)."""
    if not prior or prior.get("status") != "ok" or not prior.get("peak_memory_bytes") or not prior.get("batch_size"):
        return None
    return {int(prior["batch_size"]): int(prior["peak_memory_bytes"])}


def _search(spec: CellSpec, record: CellRecord, attempt: Callable[[int], AttemptResult], stage: str | None,
            budget: int | None, prior: dict | None = None,
            log: searchlog.SearchLog | None = None) -> tuple[int | None, dict[int, AttemptResult]]:
    """The largest batch of the cell's plan that fits, every attempt recorded; raises _Ended on an error.
    Peak memory at the sizes tried predicts the next to try (batching.predictive_search_largest): the answer is the
    ladder's, in fewer compiled attempts. `prior`: the record whose peak places the first attempt (placing_record:
    another run's of the cell, or a peer's; the note says which). `log`: the cell's search log (searchlog.py): a
    size an earlier, stopped warm-up tried is taken from it, not run; every size run is added to it."""
    results: dict[int, AttemptResult] = {}
    earlier = log.known() if log else {}
    plan = spec.batch_plan
    record.batch_note = plan.note
    prior_line = prior_peaks(prior)
    if prior_line and batching.predicts(plan.candidates, budget):
        (b, peak), = prior_line.items()
        attn = prior["cell"].get("attn")
        whose = "" if attn == spec.attn else f"{attn} "  # a peer's: the implementation it measured
        record.batch_note += (f"; first attempt placed by run {prior['cell'].get('run')}'s {whose}peak at batch size "
                              f"{b} ({peak / 2**30:.2f} GiB)")

    def probe(b: int) -> batching.Probe:
        if b in earlier:
            logged = earlier[b]
            res = results[b] = AttemptResult(logged.outcome, searchlog.FROM_LOG, seconds=logged.seconds, from_log=True)
            record.add_attempt(b, res, stage)
            _progress(f"batch size {b}: {logged.outcome}, {searchlog.FROM_LOG} ({log.path})")
            return batching.Probe(logged.outcome == "ok", logged.peak_bytes)
        _progress(f"attempt {len(results) + 1} at batch size {b} ({stage or 'measure'})")
        res = attempt(b)
        results[b] = res
        record.add_attempt(b, res, stage)
        _progress(f"batch size {b}: {res.outcome} in {res.seconds:.1f} s")
        fits = res.outcome != "oom"
        peak = res.measurement.peak_memory_bytes if fits and res.measurement else None
        if log:
            log.add(b, res.outcome, peak, res.seconds)
        if res.outcome == "error":
            raise _Ended("error", f"batch size {b}: {res.detail}")
        return batching.Probe(fits, peak)

    search = batching.top_first_search if plan.top_first else batching.predictive_search_largest
    answer, _ = search(plan.candidates, probe, budget, static_bytes=spec.static_floor_bytes, prior=prior_line)
    return answer, results


def _oom_reason(spec: CellSpec) -> str:
    cap = f"{spec.memory_cap_gib} GiB cap" if spec.memory_cap_gib else "the GPU's memory"
    return f"no batch size in {list(spec.batch_plan.candidates)} fits in {cap}"


# A cell's repeat 1 ended so (its record's status): repeats 2, 3, ... take its batch size, or its status, unsearched.
SHARED_STATUSES = ("ok", "diverged", "oom")


def _shares_repeat_1(first: dict | None) -> bool:
    """Whether a later repeat takes its batch size (or status) from repeat 1's record `first` instead of searching."""
    return (first or {}).get("status") in SHARED_STATUSES


def shared_batch_note(batch_size: int) -> str:
    return (f"repeat 1's batch size, {batch_size} (the repeats of a cell share it; repeat 1's record says how it was "
            "chosen)")


def _differing_axes(spec: CellSpec, record: dict, axes: Sequence[str] = AXES) -> list[str]:
    mine = spec.record()
    return [f"{a} {record['cell'].get(a)!r} (not {mine[a]!r})" for a in axes if record["cell"].get(a) != mine[a]]


def check_same_cell(spec: CellSpec, record: dict | None, what: str = "the repeat-1 record") -> None:
    """A record given with the cell (repeat 1's for a later repeat, or another run's as a prior) must be of the same
    cell (CellInputError, before anything runs)."""
    if record is not None and (differ := _differing_axes(spec, record)):
        raise CellInputError(f"{what} given is of another cell: {', '.join(differ)}")


_GROWS = {"quadratic": "with the square of the context", "linear": "linearly with the context"}


def check_peers(spec: CellSpec, peers: Sequence[dict]) -> None:
    """A peer (`--batch-peers`) must be this cell but for its attention, one whose memory grows with the context as
    this one's does (vocabulary.memory_kind): CellInputError, before anything runs."""
    for peer in peers:
        attn = peer["cell"].get("attn")
        if differ := _differing_axes(spec, peer, [a for a in AXES if a != "attn"]):
            raise CellInputError(f"the peer record of {attn!r} given is of another cell: {', '.join(differ)}")
        if attn not in (None, spec.attn) and memory_kind(attn) != memory_kind(spec.attn):
            raise CellInputError(f"the peer record of {attn!r} given is of attention whose memory grows "
                                 f"{_GROWS[memory_kind(attn)]}, where {spec.attn}'s grows "
                                 f"{_GROWS[memory_kind(spec.attn)]}")


def record_budget(record: dict) -> int | None:
    """The memory a record's batch had to fit in: its cap, else its GPU's (as _budget); None where unknown."""
    return _capped(record["cell"].get("memory_cap_gib"), record.get("env", {}).get("gpu_memory_bytes"))


def placing_record(prior: dict | None, peers: Sequence[dict], budget: int | None) -> dict | None:
    """The record whose peak places a search's first attempt: of the peers that ran within the same memory
    (`budget`), the one whose peak came nearest to it, the least to extrapolate; else `prior`, another run's record
    of the cell (measured under another cap, its line has further to go)."""
    same = [p for p in peers if budget is not None and prior_peaks(p) and record_budget(p) == budget]
    return max(same, key=lambda p: p["peak_memory_bytes"], default=None) or prior


def _find_batch(spec: CellSpec, record: CellRecord, attempt: Callable[[int], AttemptResult], stage: str | None,
                budget: int | None, first: dict | None, prior: dict | None = None,
                log: searchlog.SearchLog | None = None) -> tuple[int, dict[int, AttemptResult]]:
    """The batch size to measure at and the attempts made for it: for a later repeat (`first`, repeat 1's record)
    one attempt at repeat 1's size, since repeats at different sizes (a search near the memory's edge can give them)
    would not measure the same thing, and a cell that did not fit is not tried again; else the search's answer.
    Raises _Ended with the cell's status where there is none."""
    if not _shares_repeat_1(first):
        answer, results = _search(spec, record, attempt, stage, budget, prior, log)
        if answer is None:
            raise _Ended("oom", _oom_reason(spec))
        return answer, results
    if first["status"] == "oom":
        raise _Ended("oom", f"{first['reason']} (repeat 1's search; not tried again)")
    answer = first["batch_size"]
    record.batch_note = shared_batch_note(answer)
    _progress(f"attempt at repeat 1's batch size {answer} ({stage or 'measure'})")
    res = attempt(answer)
    record.add_attempt(answer, res, stage)
    if res.outcome in ("oom", "error"):
        what = "ran out of memory" if res.outcome == "oom" else "failed"
        raise _Ended("error", f"batch size {answer}, which fitted in repeat 1, {what} in this repeat: {res.detail}")
    return answer, {answer: res}


def _start(spec: CellSpec) -> tuple[torch.device, CellRecord]:
    spec.validate()
    device = resolve_device(spec.device)
    check_memory_cap(spec, device)
    cfg = spec.model_config
    record = CellRecord(cell=spec.record(), env=environment(device, spec.memory_cap_gib), model_config=asdict(cfg),
                        attention={"kv_heads": attention.kv_heads_handling(spec.attn, n_head=cfg.n_head,
                                                                           n_kv_head=cfg.kv_heads)})
    return device, record


def _isolate(spec: CellSpec, device: torch.device) -> bool:
    return spec.isolate == "process" or (spec.isolate == "auto" and device.type == "cuda")


def run_cell(spec: CellSpec, first: dict | None = None, prior: dict | None = None,
             peers: Sequence[dict] = ()) -> dict:
    """Measure one cell in one go, every attempt compiling from cold; return its record (schemas/cell.schema.json).
    `first`: repeat 1's record, for a later repeat (its batch size, unsearched). `prior`: another run's record of
    the cell, and `peers`: records of the cell with other attention (check_peers), for the search's first attempt
    (placing_record). Raises CellInputError on bad input."""
    t0 = time.perf_counter()
    check_same_cell(spec, first)
    check_same_cell(spec, prior, "the prior record")
    check_peers(spec, peers)
    device, record = _start(spec)
    reason = unsupported_reason(spec, device)
    if reason:
        return record.finish("unsupported", reason, time.perf_counter() - t0)
    isolate = _isolate(spec, device)
    budget = _budget(spec, device)
    try:
        answer, results = _find_batch(spec, record, lambda b: run_attempt(spec, b, device, isolate=isolate), None,
                                      budget, first, placing_record(prior, peers, budget))
    except _Ended as e:
        return record.finish(e.status, e.reason, time.perf_counter() - t0)
    res = results[answer]
    record.measured(answer, res, seq_len=spec.seq_len, window=spec.window, precision=spec.precision)
    if res.outcome == "diverged":
        return record.finish("diverged", res.detail, time.perf_counter() - t0)
    return record.finish("ok", None, time.perf_counter() - t0)


@dataclass
class Warmup:
    """What a cell's warm-up found: how it ended, the batch size to measure at, and what compiling cost cold."""

    status: str  # ok (measure it), or unsupported / oom / diverged / error: the cell's final status, not measured
    reason: str | None
    batch_size: int | None
    batch_note: str | None
    batch_attempts: list[dict] = field(default_factory=list)
    first_step_s: float | None = None  # the cold compilation: the warm-up attempt's first step
    # The training steps its attempt at batch_size ran: min(WARMUP_STEPS, the cell's steps), 0 where none ran there.
    steps: int = 0
    seconds: float = 0.0
    gpu: dict | None = None  # which of the host's GPUs it ran on (env.gpu of a record)
    # Whether batch_size is the answer of its own search over the plan's sizes, which its timed run feeds back to the
    # search log where it does not fit, for the next warm-up to search below it. Not the plan's only size (`fixed`,
    # the study's), with nothing below it to search, nor repeat 1's, which a later repeat must keep. A warm-up file
    # without it reads as False: such a timed run then only ends `error`.
    searched: bool = False
    # Each step's seconds in the attempt at batch_size, the cold first one included (None in older warm-ups): the
    # steps after the first run at the timed job's pace, once their own extra work is past (sweep.timed_job_s).
    step_times_s: list[float] | None = None
    # With compile seats (gpuslots.warmup_seats): the seconds its attempt at batch_size waited for the run seat
    # between its compilation and its first run, taken out of first_step_s and its first step time (None: none).
    run_seat_wait_s: float | None = None

    def write(self, path: str | os.PathLike) -> None:
        from .cellio import write_json_atomic

        write_json_atomic(path, asdict(self))

    @classmethod
    def read(cls, path: str | os.PathLike) -> Warmup:
        fields = json.loads(Path(path).read_text())
        if fields.get("step_times_s") is not None:
            # The step times count the steps that ran, whatever the file's `steps` says.
            fields["steps"] = len(fields["step_times_s"])
        return cls(**fields)


def _search_log(spec: CellSpec, record: CellRecord, budget: int | None,
                path: str | os.PathLike | None) -> searchlog.SearchLog | None:
    """The cell's search log at `path`, for attempts under this code, GPU model and memory budget."""
    if not path:
        return None
    key = {"cell": spec.record(), "code": record.env["code"]["source_sha256"], "gpu": record.env.get("gpu_name"),
           "budget_bytes": budget}
    return searchlog.SearchLog(path, key)


def warm_up(spec: CellSpec, cache_dir: str | os.PathLike, first: dict | None = None,
            prior: dict | None = None, search_log: str | os.PathLike | None = None,
            peers: Sequence[dict] = ()) -> Warmup:
    """Find the cell's batch size and fill its compile cache at that size with a few steps of training.

    `first`: the record of the cell's repeat 1, for repeats 2, 3, ...: they measure at its batch size (repeats at
    different sizes would not measure the same thing, as a search near the memory's edge can give), with one attempt
    instead of a search, and a cell that did not fit is not tried again. `prior`: another run's record of the cell,
    and `peers`: records of the cell with other attention (check_peers), whose peak memory places the search's first
    attempt (placing_record). `search_log`: where the search keeps its attempts for a
    later warm-up of the cell, if this one is stopped (searchlog.py)."""
    t0 = time.perf_counter()
    check_same_cell(spec, first)
    check_same_cell(spec, prior, "the prior record")
    check_peers(spec, peers)
    device, record = _start(spec)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)

    def done(status: str, reason: str | None, batch: int | None = None, res: AttemptResult | None = None) -> Warmup:
        m = res.measurement if res else None
        return Warmup(status, reason, batch, record.batch_note, record.batch_attempts,
                      m.compile["first_step_s"] if m else None, steps=len(m.step_times_s) if m else 0,
                      seconds=round(time.perf_counter() - t0, 3),
                      gpu=record.env["gpu"],
                      searched=len(spec.batch_plan.candidates) > 1 and not _shares_repeat_1(first),
                      step_times_s=[round(t, STEP_DIGITS) for t in m.step_times_s] if m else None,
                      run_seat_wait_s=m.compile.get("run_seat_wait_s") if m else None)

    reason = unsupported_reason(spec, device)
    if reason:
        return done("unsupported", reason)
    isolate = _isolate(spec, device)
    steps = min(WARMUP_STEPS, spec.steps)

    def attempt(b: int) -> AttemptResult:
        return run_attempt(spec, b, device, isolate=isolate, steps=steps, cache_dir=cache_dir)

    budget = _budget(spec, device)
    log = _search_log(spec, record, budget, search_log)
    try:
        answer, results = _find_batch(spec, record, attempt, "warmup", budget, first,
                                      placing_record(prior, peers, budget), log)
    except _Ended as e:
        return done(e.status, e.reason)
    res = results[answer]
    if res.from_log:
        # The search's answer, known from the log: run it here, for the compile cache the timed job needs.
        _progress(f"attempt at batch size {answer} again, to fill the compile cache")
        res = attempt(answer)
        record.add_attempt(answer, res, "warmup")
        if res.outcome in ("oom", "error"):
            what = "ran out of memory" if res.outcome == "oom" else "failed"
            return done("error", f"batch size {answer}, which fitted in an earlier warm-up of this cell, {what} in "
                        f"this one: {res.detail}")
    if res.outcome == "diverged":
        return done("diverged", f"{res.detail} (in the warm-up's {steps} steps)", answer, res)
    return done("ok", None, answer, res)


def timed_cell(spec: CellSpec, warmup: Warmup, cache_dir: str | os.PathLike, hooks: StepHooks = StepHooks(),
               search_log: str | os.PathLike | None = None, forget_warmup: Callable[[], None] | None = None) -> dict:
    """Measure at the warm-up's batch size with its compile cache; a cell the warm-up found unsupported, out of
    memory or broken is not compiled again: its record says what the warm-up found.

    A searched batch size can fit a warm-up's few steps and not the timed run's 125: near the GPU's edge the
    allocator's free blocks fragment over the longer run (on an H200, a warm-up peaked at 127.2 of 139.8 GiB and
    its timed run could not find 16 GiB with 15.3 GiB reserved and unallocated). Such a run ends `error`; with
    `search_log` (the warm-up's) the size is entered there as out of memory, so the cell's next warm-up searches
    below it, and `forget_warmup` is called to remove this warm-up's answer so that the sweep runs that warm-up.
    A later repeat measures at repeat 1's size and feeds nothing back (its repeats must share the size)."""
    t0 = time.perf_counter()
    device, record = _start(spec)
    record.batch_note = warmup.batch_note
    record.batch_attempts = list(warmup.batch_attempts)
    record.warmup = {"seconds": warmup.seconds, "steps": warmup.steps, "first_step_s": warmup.first_step_s,
                     "gpu": warmup.gpu, "step_times_s": warmup.step_times_s,
                     **({"run_seat_wait_s": warmup.run_seat_wait_s} if warmup.run_seat_wait_s is not None else {})}
    if warmup.status != "ok":
        if warmup.status == "unsupported":
            # Support is asked again here, where nothing is compiled: a cell moved to another machine says why.
            reason = unsupported_reason(spec, device)
            if reason is None:
                if forget_warmup:
                    forget_warmup()
                raise StaleWarmup(f"the warm-up found the cell unsupported ({warmup.reason}), but it runs here: "
                                  "that warm-up was made with other packages installed. Nothing is recorded"
                                  + (" and the warm-up is removed: the next sweep warms the cell up again"
                                     if forget_warmup else ""))
            return record.finish("unsupported", reason, time.perf_counter() - t0)
        return record.finish(warmup.status, warmup.reason, time.perf_counter() - t0)
    _progress(f"timed run at batch size {warmup.batch_size}, {spec.steps} steps")
    res = measure(spec, warmup.batch_size, device, cache_dir=cache_dir, hooks=hooks, compiler_pool=False)
    record.add_attempt(warmup.batch_size, res, "timed")
    if res.outcome in ("oom", "error"):
        what = "ran out of memory" if res.outcome == "oom" else "failed"
        reason = f"the timed run at batch size {warmup.batch_size}, which fitted in the warm-up, {what}: {res.detail}"
        log = _search_log(spec, record, _budget(spec, device), search_log) if warmup.searched else None
        if res.outcome == "oom" and log:
            log.add(warmup.batch_size, "oom", None, res.seconds)
            if forget_warmup:
                forget_warmup()
            reason += (f" (entered in the search log {log.path} as out of memory: the cell's next warm-up searches "
                       "below it)")
        return record.finish("error", reason, time.perf_counter() - t0)
    record.measured(warmup.batch_size, res, seq_len=spec.seq_len, window=spec.window, precision=spec.precision)
    record.compile = {**(record.compile or {}), "cold_first_step_s": warmup.first_step_s, "cache": "warm-up"}
    if res.outcome == "diverged":
        return record.finish("diverged", res.detail, time.perf_counter() - t0)
    return record.finish("ok", None, time.perf_counter() - t0)
