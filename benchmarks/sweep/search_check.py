"""The batch search on a GPU: the predictive search a warm-up runs against the ladder's binary search, on the same
attempts (docs/protocol.md, Batch sizes).

    python benchmarks/sweep/search_check.py OUT.json [--cap-gib 12] [--start 64]

For each cell the predictive search (batching.predictive_search_largest, as `attnsweep warmup` calls it) runs
first; then the ladder's binary search (batching.binary_search_largest) asks the same question. Every attempt is a
warm-up attempt (10 steps, compiled from cold where the cell is compiled, in a fresh process); an attempt either
search has already made is not repeated, so each search is charged with the attempts it asked for. The cells run at
once, each in its own processes, under a per-process memory cap: whether a batch fits depends on that process only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

from attnsweep import batching
from attnsweep.attempt import run_attempt
from attnsweep.cell import WARMUP_STEPS
from attnsweep.spec import CellSpec

CELLS = (
    {"model": "small", "attn": "sdpa", "mode": "compiled", "seq_len": 1024},
    {"model": "medium", "attn": "fa2", "mode": "compiled", "seq_len": 1024},
    {"model": "medium", "attn": "sdpa", "mode": "eager", "seq_len": 1024},
    {"model": "small", "attn": "naive", "mode": "eager", "seq_len": 2048},
)


def check(cell: dict, cap_gib: float, start: int) -> dict:
    spec = CellSpec(**cell, batch_policy="search", batch_start=start, device="cuda", memory_cap_gib=cap_gib)
    spec.validate()
    candidates = spec.batch_plan.candidates
    device = torch.device("cuda", 0)
    attempts: dict[int, dict] = {}

    def probe(b: int) -> batching.Probe:
        if b not in attempts:
            res = run_attempt(spec, b, device, isolate=True, steps=WARMUP_STEPS)
            m = res.measurement
            attempts[b] = {"outcome": res.outcome, "detail": res.detail, "seconds": res.seconds,
                           "peak_memory_bytes": m.peak_memory_bytes if m else None}
            print(f"{cell} batch {b}: {res.outcome} in {res.seconds:.1f} s", file=sys.stderr, flush=True)
            if res.outcome == "error":
                raise RuntimeError(f"{cell} batch {b}: {res.detail}")
        a = attempts[b]
        fits = a["outcome"] != "oom"
        return batching.Probe(fits, a["peak_memory_bytes"] if fits else None)

    predicted, predicted_tried = batching.predictive_search_largest(candidates, probe, int(cap_gib * 2**30),
                                                                   static_bytes=spec.static_floor_bytes)
    ladder, ladder_tried = batching.binary_search_largest(candidates, lambda b: probe(b).fits)
    return {"cell": cell, "candidates": list(candidates), "predictive": {"answer": predicted, "tried": predicted_tried},
            "ladder": {"answer": ladder, "tried": ladder_tried}, "same_answer": predicted == ladder,
            "attempts": {str(b): a for b, a in sorted(attempts.items())}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--cap-gib", type=float, default=12.0)
    p.add_argument("--start", type=int, default=64)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    results: list[dict] = []
    with ThreadPoolExecutor(len(CELLS)) as pool:
        futures = [pool.submit(check, c, args.cap_gib, args.start) for c in CELLS]
        for done in as_completed(futures):
            results.append(done.result())
            # Written as each cell ends: a run cut short keeps the cells it finished.
            Path(args.out).write_text(json.dumps({"cap_gib": args.cap_gib, "start": args.start, "cells": results,
                                                  "wall_s": time.perf_counter() - t0}, indent=1))
    for r in results:
        print(f"{r['cell']}: predictive {r['predictive']['answer']} in {len(r['predictive']['tried'])} attempts "
              f"{r['predictive']['tried']}, ladder {r['ladder']['answer']} in {len(r['ladder']['tried'])} "
              f"{r['ladder']['tried']}")
    return 0 if all(r["same_answer"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
