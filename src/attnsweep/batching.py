"""Batch-size policies: `fixed` (given), `study` (the 2023 study's per-cell sizes) and `search` (largest that fits).

A policy turns a cell into a descending list of candidate batch sizes. The cell tries them and keeps the largest
that fits; memory use grows with the batch, so "fits" is monotone along the list and a binary search finds the
same answer as the study's linear step-down with far fewer attempts (each attempt costs a compilation).
"""

from __future__ import annotations

from dataclasses import dataclass

STUDY_SEQ_LENS = (256, 512, 768, 1024, 1536, 2048, 3072, 4096)
FLASH_FAMILY_NOTE = "every implementation but `naive` uses the study's flash-attention batch sizes"

# SPEC.md, "What the study's own code did". None = out of memory on the study's 12 GB card (not run there).
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
    """(the study has this cell, its batch size or None where it ran out of memory on 12 GB)."""
    if mode == "compiled":
        sizes = _STUDY_COMPILED.get((model, _family(attn)))
        if sizes is not None and seq_len in STUDY_SEQ_LENS[: len(sizes)]:
            return True, sizes[STUDY_SEQ_LENS.index(seq_len)]
        return False, None
    key = (model, "fa2" if attn.startswith("fa") else "sdpa")
    if attn != "naive" and key in _STUDY_EAGER and seq_len in _STUDY_EAGER_SEQ:
        return True, _STUDY_EAGER[key][_STUDY_EAGER_SEQ.index(seq_len)]
    return False, None


def plan(
    policy: str, *, model: str, attn: str, mode: str, seq_len: int, size: int | None = None, start: int | None = None
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
    raise ValueError(f"unknown batch policy {policy!r}; allowed: fixed, study, search")


def binary_search_largest(candidates: tuple[int, ...], fits) -> tuple[int | None, list[int]]:
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
