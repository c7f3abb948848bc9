"""Batch-size policies: `fixed` (given), `study` (the 2023 study's per-cell sizes) and `search` (largest that fits).

A policy turns a cell into a descending list of candidate batch sizes. The cell tries them and keeps the largest
that fits; memory use grows with the batch, so "fits" is monotone along the list and a search over it finds the same
answer as the study's linear step-down with far fewer attempts (each attempt costs a compilation).

Two searches over the candidates, both returning `(answer, batch sizes tried in order)`, `answer` None when not even
the smallest candidate fits:

- `binary_search_largest(candidates, fits)`, with `fits(b) -> bool`: bisects the list.
- `predictive_search_largest(candidates, probe, budget_bytes)`, with `probe(b) -> Probe(fits, peak_bytes)`:
  `peak_bytes` is the attempt's peak memory (the worker's `measurement["peak_memory_bytes"]`) when it fitted, and
  `budget_bytes` the memory attempts may use (`memory_cap_gib * 2**30`, or the GPU's total memory without a cap), None
  where unknown (CPU). Peak memory grows almost linearly with the batch, so after two attempts that fit it draws a
  line through their peaks, tries the candidate the line puts last under the budget, then that candidate's upper
  neighbour. On the ladder from 64 that is about 3.3 attempts a cell against the binary search's 4 (simulated memory,
  tests/test_batching.py). Given a lower bound of the batch-independent memory (`static_bytes`, from the parameter
  count and the optimizer: `static_floor_bytes`), one attempt that fits already draws the line: 2.9-3.4 (by memory
  model, simulated). Given another run's peak for the cell (`prior`, e.g. the capped replay's at its preset batch),
  the first attempt already goes where the line predicts, with a margin for the other run (PRIOR_SLOPE_MARGIN):
  2.0-2.3 (tests/test_batching.py). Without a budget, or with at most five candidates, it is the binary search,
  attempt for attempt. An attempt that neither fits nor runs out of memory is the caller's to raise from `probe`; the
  search calls `probe` once per batch size it returns in the tried list, in that order.

Why the prediction cannot change the answer: the search keeps the largest candidate seen to fit and the smallest seen
not to, and stops only when they are neighbours on the list (or nothing above the fitting one is left, or nothing
below the failing one), so the answer is confirmed by attempts on both sides. The prediction only picks which
candidate inside that bracket is tried next; with fitting monotone, any such order ends at the same boundary as the
binary search.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .vocabulary import COMPILED_MODES

STUDY_SEQ_LENS = (256, 512, 768, 1024, 1536, 2048, 3072, 4096)
FLASH_FAMILY_NOTE = "every implementation but `naive` uses the study's flash-attention batch sizes"

# docs/protocol.md, Batch sizes. None = out of memory on the study's 12 GB card (not run there).
_STUDY_COMPILED: dict[tuple[str, str], tuple[int | None, ...]] = {
    ("small", "naive"): (52, 16, 8, 6, 3, 1, 1, None),
    ("small", "flash"): (64, 32, 24, 16, 8, 8, 5, 4),
    ("medium", "naive"): (16, 6, 3, 1, 1, None, None, None),
    ("medium", "flash"): (24, 8, 8, 6, 4, 3, 2, 1),
    ("large", "flash"): (10, 5, 3, 2, 1, 1),  # large ran to 2048 only, with 8-bit AdamW
}
_STUDY_EAGER_SEQ = (256, 512, 1024, 2048, 3072, 4096)
_STUDY_EAGER: dict[tuple[str, str], tuple[int, ...]] = {
    ("medium", "sdpa"): (24, 8, 6, 3, 2, 1),  # "PyTorch flash"
    ("medium", "fa2"): (24, 8, 6, 2, 1, 1),
}


@dataclass(frozen=True)
class BatchPlan:
    """Candidate batch sizes, largest first, and how they were chosen."""

    candidates: tuple[int, ...]
    note: str
    # The first candidate is expected to fit (policy tokens): it is tried first, and where it fits it is the answer.
    top_first: bool = False


def step_down(start: int) -> tuple[int, ...]:
    """The study's ladder: from `start` down by 8 while above 8, then 8, 7, ..., 1."""
    if start < 1:
        raise ValueError(f"batch start must be >= 1, got {start}")
    ladder = [start]
    while ladder[-1] - 8 > 8:
        ladder.append(ladder[-1] - 8)
    ladder += [b for b in range(min(8, ladder[-1] - 1), 0, -1)]
    return tuple(ladder)


def _family(attn: str) -> str:
    return "naive" if attn == "naive" else "flash"


def study_size(model: str, attn: str, mode: str, seq_len: int) -> tuple[bool, int | None]:
    """(the study has this cell, its batch size or None where it ran out of memory on 12 GB).

    Every compiled mode takes the study's compiled sizes: with CUDA graphs the same compiled kernels run, and
    `compiled_cudagraphs` is compared with `compiled` at the same batch (what the graphs add in memory shows in the
    record's peak, or as OOM under the study's cap)."""
    if mode in COMPILED_MODES:
        sizes = _STUDY_COMPILED.get((model, _family(attn)))
        if sizes is not None and seq_len in STUDY_SEQ_LENS[: len(sizes)]:
            return True, sizes[STUDY_SEQ_LENS.index(seq_len)]
        return False, None
    key = (model, "fa2" if attn.startswith("fa") else "sdpa")
    if attn != "naive" and key in _STUDY_EAGER and seq_len in _STUDY_EAGER_SEQ:
        return True, _STUDY_EAGER[key][_STUDY_EAGER_SEQ.index(seq_len)]
    return False, None


def plan(
    policy: str, *, model: str, attn: str, mode: str, seq_len: int, size: int | None = None, start: int | None = None,
    tokens: int | None = None,
) -> BatchPlan:
    """The candidate batch sizes for one cell under `policy`."""
    if policy == "fixed":
        if size is None or size < 1:
            raise ValueError(f"batch policy 'fixed' needs --batch-size >= 1, got {size}")
        return BatchPlan((size,), f"fixed batch size {size}")
    if policy == "search":
        if start is None or start < 1:
            raise ValueError(f"batch policy 'search' needs --batch-start >= 1, got {start}")
        return BatchPlan(step_down(start), f"largest that fits, searched from {start}")
    if policy == "study":
        known, size_ = study_size(model, attn, mode, seq_len)
        if known and size_ is not None:
            return BatchPlan((size_,), f"the study's batch size ({FLASH_FAMILY_NOTE})")
        if known:
            # The study ran out of memory here at every size; try the smallest batch once to see if it fits now.
            return BatchPlan((1,), "out of memory in the study (12 GB); batch 1 tried")
        # A cell the study did not run: search down from the flash size of the same model and context
        # (an upper bound for naive attention, which needs more memory), or from 64.
        known_flash, flash_size = study_size(model, "sdpa", "compiled", seq_len)
        start_ = flash_size if known_flash and flash_size else 64
        return BatchPlan(step_down(start_), f"not in the study; largest that fits, searched from {start_}")
    if policy == "tokens":
        # The same work a step at every context, as a training run with a fixed token batch has: tokens // seq_len
        # sequences, or the largest batch below that fits where that does not.
        if tokens is None or tokens < seq_len:
            raise ValueError(f"batch policy 'tokens' needs --batch-tokens >= --seq-len ({seq_len}), got {tokens}")
        top = tokens // seq_len
        return BatchPlan(step_down(top), f"{tokens:,} tokens a step: batch size {top} (tokens // context), or the "
                         "largest below it that fits", top_first=True)
    raise ValueError(f"unknown batch policy {policy!r}; allowed: fixed, study, search, tokens")


def binary_search_largest(candidates: tuple[int, ...], fits: Callable[[int], bool]) -> tuple[int | None, list[int]]:
    """Largest candidate for which `fits(b)` is true, assuming fitting is monotone; returns (answer, tried order).

    `candidates` is descending, so `fits` is False...False True...True along it: find the first True.
    """
    lo, hi, answer, tried = 0, len(candidates) - 1, None, []
    while lo <= hi:
        mid = (lo + hi) // 2
        tried.append(candidates[mid])
        if fits(candidates[mid]):
            answer, hi = candidates[mid], mid - 1
        else:
            lo = mid + 1
    return answer, tried


@dataclass(frozen=True)
class Probe:
    """One attempt's outcome for the search: did the batch fit, and its peak memory in bytes when it did (None on a
    CPU, or when it did not fit)."""

    fits: bool
    peak_bytes: int | None = None


# Bytes per parameter that stay allocated whatever the batch, at least: fp32 weights and gradients (4 + 4) and the
# optimizer's two moments (AdamW 4 + 4; bitsandbytes' 8-bit AdamW 1 + 1), all alive at the optimizer step.
STATIC_BYTES_PER_PARAM = {"adamw": 16, "adamw_fused": 16, "adamw8bit": 10}


def static_floor_bytes(params: int, optimizer: str) -> int:
    """A lower bound of a model's batch-independent memory in training, in bytes: its `params` parameters times
    STATIC_BYTES_PER_PARAM of the optimizer (0 for one not listed)."""
    return params * STATIC_BYTES_PER_PARAM.get(optimizer, 0)


# The fraction of the budget kept free when predicting. The worker's peak is `max_memory_allocated`; out-of-memory is
# decided on the allocator's reserved memory, a few percent more (block rounding, fragmentation). A margin inside that
# range makes a wrong prediction about as likely on either side, and a wrong prediction costs one attempt, never the
# answer; with 0-8% of simulated overhead, margins of 2-5% give mean attempt counts within about 0.05 of each other.
PREDICTION_MARGIN = 0.03
# A prior's line is drawn from another run's peak (another cap, host or software), mostly at a small batch far from
# the boundary here, so an error in its per-sample memory grows with the distance it is extrapolated: its per-sample
# memory is taken this much larger. On a whole H200 searched from the 12 GiB replay's peaks (results/h200, 88 cells),
# the per-sample memory at the answer was 1.00-1.02 times the prior line's for GPT-2 small, 1.06-1.24 for medium
# (most below 1.15) and 1.3-1.5 for large. Replayed on those cells, this margin cuts the first attempts that ran out
# of memory from 16 to 3 (all attempts: 128 to 117, and to 113 with the next attempt placed below a failed one,
# `_prior_largest`); where the prior is exact it costs up to 0.1 attempt a cell (simulated, tests/test_batching.py).
PRIOR_SLOPE_MARGIN = 0.15
# After this many attempts that the line predicted to fit but did not (memory not linear in the batch: a step, strong
# curvature; a prior far off), the search stops predicting from that line and bisects (until it has a line of its
# own, after a prior's), so a misleading fit costs a bounded number of attempts.
MAX_OVERESTIMATES = 2
# With up to five candidates bisection needs at most three attempts, which two points for a line and one
# confirmation cannot beat.
BISECT_UP_TO = 5


def predicts(candidates: tuple[int, ...], budget_bytes: int | None) -> bool:
    """Whether predictive_search_largest predicts (else it bisects): with a budget, over more than BISECT_UP_TO."""
    return budget_bytes is not None and len(candidates) > BISECT_UP_TO


def predictive_search_largest(
    candidates: tuple[int, ...], probe: Callable[[int], Probe], budget_bytes: int | None,
    *, margin: float = PREDICTION_MARGIN, static_bytes: int = 0, prior: Mapping[int, int] | None = None,
) -> tuple[int | None, list[int]]:
    """Largest candidate whose probe fits, assuming fitting is monotone; returns (answer, tried order).

    The same answer as `binary_search_largest` with `fits = lambda b: probe(b).fits`, in fewer attempts on average:
    the peak memory of the attempts that fit predicts where the boundary lies (see the module docstring).
    `static_bytes`: a lower bound of the memory that does not grow with the batch (`static_floor_bytes`); with it the
    first attempt that fits already gives a line, where without it a second one is needed.
    `prior`: peak bytes by batch size measured for the same cell elsewhere (e.g. a run under a memory cap); it places
    the first attempt where a line through it reaches the budget (its per-sample memory PRIOR_SLOPE_MARGIN larger),
    instead of at a small batch. Where that attempt does not fit, the prior's line, drawn through it at the budget,
    places the next one below it (`_prior_largest`). The search's own peaks replace the prior from the first attempt
    that fits, and an attempt it put too high counts as a wrong prediction (MAX_OVERESTIMATES): a misleading prior
    costs attempts, never the answer (which attempts on both sides still prove).
    """
    if not predicts(candidates, budget_bytes):
        return binary_search_largest(candidates, lambda b: probe(b).fits)
    if any(a <= b for a, b in zip(candidates, candidates[1:])) or any(b < 1 for b in candidates):
        raise ValueError(f"candidates must be positive and strictly descending, got {candidates}")
    asc = candidates[::-1]
    # asc[lo] is the largest candidate known to fit (-1: none yet), asc[hi] the smallest known not to (len: none yet).
    lo, hi = -1, len(asc)
    peaks: dict[int, int] = {}
    tried: list[int] = []
    # Wrong predictions by each line, bounded apart: a prior's misses say nothing about the search's own line.
    overestimates = {"prior": 0, "own": 0}
    while hi - lo > 1:
        predicted_fit = False
        line = "own" if peaks else "prior" if prior else None
        if not tried and not prior:
            # The second smallest: small enough to fit almost always (a point for the line), and where only the
            # smallest fits it is already one of the two attempts that prove the answer.
            j = min(1, len(asc) - 1)
        elif tried and (line is None or overestimates[line] >= MAX_OVERESTIMATES):
            j = (lo + hi) // 2
        else:
            usable = budget_bytes * (1 - margin)
            if peaks:
                largest = _predicted_largest(peaks, usable, static_bytes)
            else:
                failed = asc[hi] if hi < len(asc) else None
                largest = _prior_largest(prior, usable, static_bytes, failed=failed, budget_bytes=budget_bytes)
            j = max((i for i in range(lo + 1, hi) if asc[i] <= largest), default=lo)
            predicted_fit = j > lo
            if not predicted_fit:
                j = lo + 1  # the line says nothing above the known fit fits: try its neighbour to prove it
        result = probe(asc[j])
        tried.append(asc[j])
        if result.fits:
            lo = j
            if result.peak_bytes is not None:
                peaks[asc[j]] = result.peak_bytes
        else:
            hi = j
            if predicted_fit:
                overestimates[line] += 1
    return (asc[lo] if lo >= 0 else None), tried


def top_first_search(
    candidates: tuple[int, ...], probe: Callable[[int], Probe], budget_bytes: int | None, **kwargs,
) -> tuple[int | None, list[int]]:
    """predictive_search_largest for a plan whose first (largest) candidate is expected to fit: that one is tried
    first, and where it fits it is the answer in one attempt; where it does not, the rest are searched as usual (its
    attempt proved the upper side)."""
    top = probe(candidates[0])
    if top.fits or len(candidates) == 1:
        return (candidates[0] if top.fits else None), [candidates[0]]
    answer, tried = predictive_search_largest(candidates[1:], probe, budget_bytes, **kwargs)
    return answer, [candidates[0], *tried]


def _prior_largest(prior: Mapping[int, int], usable_bytes: float, static_bytes: int, *, failed: int | None,
                   budget_bytes: int) -> float:
    """The batch at which the prior's line reaches `usable_bytes`, with its per-sample memory PRIOR_SLOPE_MARGIN
    larger (the line turned about the prior's largest batch).

    `failed`: the smallest batch known not to fit, where the prior placed an attempt too high. The line then goes from
    the prior's largest batch through `failed` at `budget_bytes`: about the least per-sample memory that explains the
    failure, so the next attempt goes just below it, where a prior a little off puts the answer, instead of to the
    small batch a bisection would try.
    """
    top = max(prior)
    line = {**prior, failed: budget_bytes} if failed is not None and failed > top else prior
    largest = _predicted_largest(line, usable_bytes, static_bytes)
    return top + (largest - top) / (1 + PRIOR_SLOPE_MARGIN) if largest > top else largest


def _predicted_largest(peaks: Mapping[int, int], usable_bytes: float, static_bytes: int = 0) -> float:
    """The batch at which the peak reaches `usable_bytes`, on a line through the measured peaks.

    With one point the line goes through `static_bytes` at batch 0 (through zero without it): a lower bound of the
    static memory (weights, gradients, optimizer state), so the line is at least as steep as the true one and the
    batch it names fits under a linear model. With more, the line through the two largest batches: the nearest to the
    boundary, where curvature matters least.
    """
    (b1, p1), *rest = sorted(peaks.items(), reverse=True)
    if not rest:
        floor = static_bytes if 0 <= static_bytes < p1 else 0
        return math.inf if p1 <= 0 else b1 + (usable_bytes - p1) * b1 / (p1 - floor)
    b2, p2 = rest[0]
    slope = (p1 - p2) / (b1 - b2)
    return math.inf if slope <= 0 else b1 + (usable_bytes - p1) / slope
