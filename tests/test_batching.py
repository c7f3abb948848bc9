"""Batch policies and the searches for the largest batch that fits (`attnsweep.batching`)."""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable

import pytest

from attnsweep import batching
from attnsweep.batching import Probe, binary_search_largest, predictive_search_largest, step_down

GIB = 2**30
LADDER_STARTS = (1, 2, 3, 5, 8, 16, 24, 32, 48, 64, 96, 128)
SHAPES_PER_LADDER = 250


def test_step_down_ladder_matches_the_study():
    assert step_down(64) == (64, 56, 48, 40, 32, 24, 16, 8, 7, 6, 5, 4, 3, 2, 1)
    assert step_down(5) == (5, 4, 3, 2, 1)


def test_study_policy_replays_the_study_sizes():
    assert batching.plan("study", model="small", attn="fa2", mode="compiled", seq_len=1024).candidates == (16,)
    assert batching.plan("study", model="small", attn="naive", mode="compiled", seq_len=256).candidates == (52,)
    assert batching.plan("study", model="medium", attn="fa2", mode="eager", seq_len=2048).candidates == (2,)
    assert batching.plan("study", model="medium", attn="sdpa", mode="eager", seq_len=2048).candidates == (3,)
    # Out of memory on the study's 12 GB card: batch 1 is tried once.
    assert batching.plan("study", model="medium", attn="naive", mode="compiled", seq_len=2048).candidates == (1,)
    # Not run by the study: searched from the flash size at that cell.
    assert batching.plan("study", model="large", attn="naive", mode="compiled", seq_len=512).candidates[0] == 5


def simulated_gpu(rng: random.Random, top: int, kind: str, budget: int = 12 * GIB) -> Callable[[int], Probe]:
    """A memory model for one cell: peak(B) = static + per_sample*B (+ curvature*B^2, + a step at some batch).

    The batch at which memory reaches the budget is drawn log-uniformly from below 1 to well above the ladder's top,
    so "nothing fits" and "the top fits" both occur. The reported peak is the allocated bytes; what runs out of memory
    is that plus an allocator overhead the search does not know (0-8%, as reserved exceeds allocated on a GPU).
    """
    static = rng.uniform(0.02, 0.7) * budget
    boundary = rng.uniform(0.6, 2.5 * top) if rng.random() < 0.3 else 2 ** rng.uniform(-0.7, 1.3 + top.bit_length())
    overhead = 0.0 if kind == "linear" else rng.uniform(0.0, 0.08)
    curvature = rng.uniform(0.0, 0.2) if kind in ("curved", "stepped") else 0.0
    rest = budget / (1 + overhead) - static
    per_sample, quadratic = (1 - curvature) * rest / boundary, curvature * rest / boundary**2
    step_at, step = (rng.uniform(1, top), rng.uniform(0.05, 0.3) * budget) if kind == "stepped" else (None, 0.0)

    def probe(b: int) -> Probe:
        peak = static + per_sample * b + quadratic * b * b + (step if step_at is not None and b >= step_at else 0.0)
        fits = peak * (1 + overhead) <= budget
        return Probe(fits, int(peak) if fits else None)

    probe.static = static  # what a static floor may not exceed
    return probe


def _compare(kind: str, seed: int = 0, floor: bool = False,
             prior: float | None = None) -> dict[int, tuple[list[int], list[int]]]:
    """Both searches on SHAPES_PER_LADDER simulated cells per ladder; {ladder start: (binary counts, predictive)}.
    With `floor`, the predictive search is given a lower bound of the static memory (80-100% of it: weights,
    gradients and optimizer state, the bulk of it, are counted exactly from the parameters). With `prior`, a peak of
    the same cell at one batch size that fits (as another run measured it), times `prior` (1: as measured; else a
    misleading one), where any size fits."""
    rng = random.Random(seed)
    counts: dict[int, tuple[list[int], list[int]]] = {}
    for top in LADDER_STARTS:
        ladder = step_down(top)
        for _ in range(SHAPES_PER_LADDER):
            probe = simulated_gpu(rng, top, kind)
            calls: list[int] = []

            def recorded(b: int) -> Probe:
                calls.append(b)
                return probe(b)

            expected, tried_binary = binary_search_largest(ladder, lambda b: probe(b).fits)
            static = int(probe.static * rng.uniform(0.8, 1.0)) if floor else 0
            fitting = [b for b in ladder if probe(b).fits]
            at = rng.choice(fitting) if prior is not None and fitting else None
            known = {at: int(probe(at).peak_bytes * prior)} if at is not None else None
            answer, tried = predictive_search_largest(ladder, recorded, 12 * GIB, static_bytes=static, prior=known)
            assert answer == expected, f"{kind}: ladder from {top}: {answer} != {expected} (tried {tried})"
            assert tried == calls and len(set(tried)) == len(tried) and set(tried) <= set(ladder)
            counts.setdefault(top, ([], []))
            counts[top][0].append(len(tried_binary))
            counts[top][1].append(len(tried))
    return counts


def _mean(counts: dict[int, tuple[list[int], list[int]]], which: int, tops=LADDER_STARTS) -> float:
    return statistics.mean(n for top in tops for n in counts[top][which])


@pytest.mark.parametrize("kind", ["linear", "overhead", "curved", "stepped"])
def test_predictive_search_finds_the_binary_search_answer_in_fewer_attempts(kind):
    """Same answer as the binary search on 3,000 simulated cells per kind, in fewer attempts on average.

    Mean attempts, binary / predictive, all ladders (from 1 to 128) then the ladder from 64 (15 candidates):
    linear 3.03 / 2.73 and 4.00 / 3.34; overhead 3.03 / 2.68 and 4.00 / 3.29;
    curved 3.03 / 2.69 and 4.00 / 3.25; stepped (a jump in memory at a random batch) 3.09 / 2.95 and 4.00 / 3.73.
    """
    counts = _compare(kind)
    binary, predictive = _mean(counts, 0), _mean(counts, 1)
    from64 = f"from 64: binary {_mean(counts, 0, (64,)):.2f}, predictive {_mean(counts, 1, (64,)):.2f}"
    message = f"{kind}: mean attempts binary {binary:.2f}, predictive {predictive:.2f}; {from64}"
    assert predictive < binary - 0.1, message
    long_ladders = [top for top in LADDER_STARTS if len(step_down(top)) > 9]
    assert _mean(counts, 1, long_ladders) < _mean(counts, 0, long_ladders) - 0.15, message
    for top in LADDER_STARTS:
        b, p = statistics.mean(counts[top][0]), statistics.mean(counts[top][1])
        # Linear memory (and, looser, an unknown overhead or curvature): no ladder worse by more than noise.
        if kind != "stepped":
            assert p <= b + 0.1, f"ladder from {top}: binary {b:.2f}, predictive {p:.2f}; {message}"
    if kind == "linear":
        worst = max(p - b for top in LADDER_STARTS for b, p in zip(*counts[top]))
        assert worst <= 2, f"linear memory: up to {worst} attempts more than the binary search; {message}"


@pytest.mark.parametrize("kind", ["linear", "overhead", "curved", "stepped"])
def test_a_static_floor_saves_attempts_and_keeps_the_answer(kind):
    """Given a lower bound of the static memory (as the cell derives from the parameter count and the optimizer),
    one attempt that fits draws the line. Mean attempts on the ladder from 64, without / with the floor (the binary
    search: 4.00): linear 3.34 / 3.15, overhead 3.29 / 3.03, curved 3.25 / 2.94, stepped 3.73 / 3.38 (answers checked
    equal to the binary search's in _compare)."""
    without, with_floor = _compare(kind), _compare(kind, floor=True)
    before, after = _mean(without, 1, (64,)), _mean(with_floor, 1, (64,))
    assert after < before - 0.1, f"{kind}: from 64, {before:.2f} -> {after:.2f}"
    assert _mean(with_floor, 1) <= _mean(without, 1), kind


@pytest.mark.parametrize("kind", ["linear", "overhead", "curved", "stepped"])
def test_a_prior_peak_saves_attempts_and_a_wrong_one_keeps_the_answer(kind):
    """A peak of the same cell from another run (e.g. the capped replay's, at its preset batch) places the first
    attempt near the boundary. Mean attempts on the ladder from 64 with the static floor, without / with a prior /
    with a prior half or twice the true peak: linear 3.15 / 2.30 / 2.98 / 3.04, overhead 3.03 / 2.22 / 2.86 / 2.93,
    curved 2.94 / 2.02 / 2.82 / 2.81, stepped 3.38 / 2.26 / 3.08 / 3.16 (the binary search: 4.00; every answer
    checked equal to the binary search's in _compare)."""
    floor_only = _mean(_compare(kind, floor=True), 1, (64,))
    with_prior = _mean(_compare(kind, floor=True, prior=1.0), 1, (64,))
    halved, doubled = (_mean(_compare(kind, floor=True, prior=f), 1, (64,)) for f in (0.5, 2.0))
    message = f"{kind}: {floor_only:.2f} / {with_prior:.2f} / {halved:.2f} / {doubled:.2f}"
    assert with_prior < floor_only - 0.8, message
    assert max(halved, doubled) <= floor_only + 0.05, message  # misled by 2x, still no worse than without it


# GPT-2 medium, context 3072, compiled, fa2, on a whole H200 (results/h200) with the 12 GiB replay's record as the
# prior (results/h200-study-12gib): the budget, the static floor, the prior's peak and the peak measured at batch 40.
H200_BYTES, MEDIUM_FLOOR = 150_109_880_320, 5_152_210_944
MEDIUM_3072_PRIOR, MEDIUM_3072_AT_40 = {2: 10_703_451_648}, 126_390_825_984
MEDIUM_3072_PER_SAMPLE = (MEDIUM_3072_AT_40 - MEDIUM_3072_PRIOR[2]) / 38


def _medium_3072() -> Callable[[int], Probe]:
    """Memory linear in the batch through the prior's peak and the one measured at 40; 48 does not fit (it ran out of
    memory there)."""
    return _probe_of(lambda b: MEDIUM_3072_PRIOR[2] + (b - 2) * MEDIUM_3072_PER_SAMPLE, H200_BYTES)


def _understated_prior(factor: float) -> dict[int, int]:
    """A prior at batch 2 whose line (through the static floor) has `factor` times the per-sample memory."""
    return {2: int(MEDIUM_FLOOR + 2 * MEDIUM_3072_PER_SAMPLE * factor)}


def test_a_prior_places_its_first_attempt_with_a_margin_for_its_per_sample_memory():
    """The prior's line, extrapolated from batch 2 to the budget, put the first attempt at 48, which ran out of memory
    (its per-sample memory 9% below the H200's); with the prior's margin it goes to 40, the answer, and the one
    attempt above proves it."""
    answer, tried = predictive_search_largest(step_down(64), _medium_3072(), H200_BYTES, static_bytes=MEDIUM_FLOOR,
                                              prior=MEDIUM_3072_PRIOR)
    assert answer == 40 and tried == [40, 48]


def test_after_a_prior_placed_attempt_does_not_fit_the_prior_places_the_next_below_it():
    """A prior further off than its margin (the H200's per-sample memory 1.3 times its line's) still puts the first
    attempt at 48, which does not fit. Its line drawn through 48 at the budget puts the next at 40, the answer, proved
    by the two attempts; bisection would go to 6 first, for a line of the search's own (an attempt more, each
    compiling from cold)."""
    answer, tried = predictive_search_largest(step_down(64), _medium_3072(), H200_BYTES, static_bytes=MEDIUM_FLOOR,
                                              prior=_understated_prior(1 / 1.3))
    assert answer == 40 and tried == [48, 40]


def test_a_prior_far_off_costs_two_attempts_too_high_then_the_search_bisects():
    """The H200's per-sample memory 4 times the prior line's: the first attempt (64) and the one its line places
    after it (48) do not fit; after MAX_OVERESTIMATES such attempts the prior is dropped, the search bisects (6) and
    then follows its own line (40). The answer is the binary search's."""
    ladder, probe = step_down(64), _medium_3072()
    answer, tried = predictive_search_largest(ladder, probe, H200_BYTES, static_bytes=MEDIUM_FLOOR,
                                              prior=_understated_prior(0.25))
    assert batching.MAX_OVERESTIMATES == 2 and tried == [64, 48, 6, 40]
    assert answer == binary_search_largest(ladder, lambda b: probe(b).fits)[0] == 40


def test_the_static_floor_is_below_what_training_holds() -> None:
    """GPT-2 medium measured on an H200: 319,916,032 parameters; at 16 bytes each (AdamW) 4.77 GiB, all alive at the
    optimizer step: the floor is not above that, and GQA's smaller key/value projections lower it."""
    from attnsweep.spec import CellSpec

    medium = CellSpec(model="medium", attn="sdpa", mode="compiled", seq_len=1024)
    assert 4.5 * GIB < medium.static_floor_bytes <= 319_916_032 * 16
    gqa = CellSpec(model="medium", attn="sdpa", mode="compiled", seq_len=1024, kv_heads=4)
    assert gqa.static_floor_bytes < medium.static_floor_bytes
    eight_bit = CellSpec(model="medium", attn="sdpa", mode="compiled", seq_len=1024, optimizer="adamw8bit")
    assert eight_bit.static_floor_bytes * 16 == medium.static_floor_bytes * 10


def _probe_of(peak: Callable[[int], float], budget: int = 12 * GIB) -> Callable[[int], Probe]:
    return lambda b: Probe(peak(b) <= budget, int(peak(b)) if peak(b) <= budget else None)


def test_a_misleading_line_still_gives_the_ladder_answer():
    # Peak memory nearly flat up to batch 8, then a jump: the line through small batches predicts that 64 fits.
    probe = _probe_of(lambda b: 4 * GIB + (0 if b <= 8 else 7.9 * GIB) + 0.01 * GIB * b)
    answer, tried = predictive_search_largest(step_down(64), probe, 12 * GIB)
    expected, tried_binary = binary_search_largest(step_down(64), lambda b: probe(b).fits)
    assert answer == expected == 8
    assert 64 in tried and len(tried) <= len(tried_binary) + 3, tried


def test_concave_memory_is_confirmed_above_the_first_prediction():
    # Peaks grow slower at large batches than the line through small ones says: the first prediction (16) fits,
    # and only trying its upper neighbours finds the answer (24) and proves it (32 does not fit).
    probe = _probe_of(lambda b: 2 * GIB + 1.0 * GIB * b**0.7)
    answer, tried = predictive_search_largest(step_down(64), probe, 12 * GIB)
    assert answer == binary_search_largest(step_down(64), lambda b: probe(b).fits)[0] == 24
    assert tried.index(16) < tried.index(24) and tried[-1] == 32, tried


def test_nothing_fits_is_none():
    answer, tried = predictive_search_largest(step_down(64), lambda b: Probe(False), 12 * GIB)
    assert answer is None and tried[-1] == 1 and len(tried) <= 4


def test_one_candidate():
    assert predictive_search_largest((8,), lambda b: Probe(True, GIB), 12 * GIB) == (8, [8])
    assert predictive_search_largest((8,), lambda b: Probe(False), 12 * GIB) == (None, [8])


def test_without_peaks_or_budget_it_is_the_binary_search():
    ladder = step_down(64)
    for limit in (0, 1, 5, 8, 13, 40, 64):
        def fits(b: int) -> bool:
            return b <= limit

        binary = binary_search_largest(ladder, fits)
        # No budget (CPU): the binary search, attempt for attempt.
        assert predictive_search_largest(ladder, lambda b: Probe(fits(b), GIB), None) == binary
        # A budget but no peaks reported: bisection inside the bracket, same answer.
        assert predictive_search_largest(ladder, lambda b: Probe(fits(b)), 12 * GIB)[0] == binary[0]


def test_a_failing_attempt_propagates():
    def probe(b: int) -> Probe:
        raise RuntimeError(f"batch {b}: worker crashed")

    with pytest.raises(RuntimeError, match="worker crashed"):
        predictive_search_largest(step_down(64), probe, 12 * GIB)


def test_candidates_must_descend():
    with pytest.raises(ValueError, match="descending"):
        predictive_search_largest((1, 2, 3, 4, 5, 6), lambda b: Probe(True, GIB), 12 * GIB)


def test_the_tokens_policy_puts_the_same_tokens_in_every_step_and_tries_that_batch_first():
    plan = batching.plan("tokens", model="small", attn="sdpa", mode="compiled", seq_len=1024, tokens=65536)
    assert plan.candidates == step_down(64) and plan.top_first and "65,536 tokens a step: batch size 64" in plan.note
    assert batching.plan("tokens", model="small", attn="sdpa", mode="compiled", seq_len=16384,
                         tokens=65536).candidates == (4, 3, 2, 1)
    # A context longer than the step's tokens, or no tokens: refused (a step holds one sequence at least).
    for tokens in (None, 8192):
        with pytest.raises(ValueError, match="batch policy 'tokens' needs --batch-tokens >= --seq-len"):
            batching.plan("tokens", model="small", attn="sdpa", mode="compiled", seq_len=16384, tokens=tokens)


@pytest.mark.parametrize("limit", [0, 1, 3, 8, 13, 40, 63, 64])
def test_the_top_first_search_takes_one_attempt_where_the_top_fits_and_the_ladders_answer_everywhere(limit):
    ladder = step_down(64)
    probe = _probe_of(lambda b: 2 * GIB + 0.15 * GIB * b + (100 * GIB if b > limit else 0))
    answer, tried = batching.top_first_search(ladder, probe, 12 * GIB, static_bytes=GIB)
    assert answer == binary_search_largest(ladder, lambda b: probe(b).fits)[0]
    assert tried[0] == 64 and len(set(tried)) == len(tried)
    if limit >= 64:
        assert tried == [64]
