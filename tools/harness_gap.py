"""Where a harness's step time goes: one cell trained by a harness, instrumented over its throughput window.

Why does Composer measure less than our native loop on the same cell? Both run
the same kernels, so the difference must be time the GPU spends idle. This script trains one cell with one harness
(`native_harness.train_native` or `composer_harness.train_composer`, unmodified) and, over the last `window` steps only:

- `--probe gpu` (default): records every GPU kernel, copy and memset with torch.profiler (CUDA activity only, so the
  host is barely slowed), and reports per step the GPU busy time (union of their intervals), the idle time (step time
  minus busy), and the largest idle gaps with the GPU work on either side of them;
- `--probe host`: runs cProfile over the same steps and writes the Python functions that take the host's time
  (cProfile slows Python code, so use it to attribute host time, not to time steps);
- with either probe: every Python garbage-collector pause (gc.callbacks), with its generation and length.

The window is found without touching the harness: the batch list handed to it counts the times it is indexed (once
per step, plus once before training in the Composer harness, which reads the batch size from it).

    python tools/harness_gap.py --harness composer --model medium --seq-len 1024 --attn sdpa --batch-size 6 --out DIR

Writes DIR/gap-<harness>-<probe>.json (and DIR/gap-<harness>-host.txt, the cProfile tables).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import time
from pathlib import Path
from typing import Callable

import torch

from attnsweep import attention
from attnsweep.data import synthetic_batches
from attnsweep.model import GPT, model_config
from attnsweep.training import TrainSpec, private_compile_cache
from attnsweep.attempt import N_DATA_BATCHES, harness

# Indexing calls made (before, after) training: Composer's harness reads batches[0] for the batch size before, and
# for its profiling step after.
CALLS_OUTSIDE_TRAINING = {"native": (0, 0), "composer": (1, 1)}
GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}


class CountingBatches(list):
    """The harness's batch list; calls `on_window` when the window's first step fetches its batch."""

    def __init__(self, batches: list, start_call: int, on_window: Callable[[], None]) -> None:
        super().__init__(batches)
        self.calls = 0
        self.start_call = start_call
        self.on_window = on_window

    def __getitem__(self, i):  # type: ignore[override]
        self.calls += 1
        if self.calls == self.start_call:
            self.on_window()
        return super().__getitem__(i)


class GcPauses:
    """Every garbage-collector pause while `active`: (generation, seconds, objects collected)."""

    def __init__(self) -> None:
        self.active = False
        self.pauses: list[tuple[int, float, int]] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self.active:
            self.pauses.append((info["generation"], time.perf_counter() - self._t0, info["collected"]))

    def summary(self) -> dict:
        by_gen: dict[int, list[float]] = {}
        for gen, seconds, _ in self.pauses:
            by_gen.setdefault(gen, []).append(seconds)
        return {
            "count": len(self.pauses),
            "total_ms": 1e3 * sum(s for _, s, _ in self.pauses),
            "by_generation": {g: {"count": len(v), "total_ms": 1e3 * sum(v), "max_ms": 1e3 * max(v)}
                              for g, v in sorted(by_gen.items())},
        }


def gpu_busy_and_gaps(trace_path: Path, top: int) -> dict:
    """Union of GPU activity intervals in a Chrome trace, and the largest idle gaps between them."""
    events = json.loads(trace_path.read_text())["traceEvents"]
    spans = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                   if e.get("cat") in GPU_CATEGORIES and "dur" in e)
    busy = 0.0
    gaps: list[tuple[float, str, str]] = []
    if spans:
        cur_start, cur_end, cur_name = spans[0]
        for start, end, name in spans[1:]:
            if start > cur_end:
                busy += cur_end - cur_start
                gaps.append((start - cur_end, cur_name, name))
                cur_start = start
            if end >= cur_end:
                cur_end, cur_name = end, name
        busy += cur_end - cur_start
    gaps.sort(reverse=True)
    return {
        "gpu_events": len(spans),
        "span_us": spans[-1][1] - spans[0][0] if spans else 0.0,  # no GPU work: the CPU smoke test
        "busy_us": busy,
        "idle_us": sum(g for g, _, _ in gaps),
        "gaps_over_100us": sum(1 for g, _, _ in gaps if g > 100),
        "idle_in_gaps_over_100us": sum(g for g, _, _ in gaps if g > 100),
        "largest_gaps": [{"us": round(g, 1), "after": a[:120], "before": b[:120]} for g, a, b in gaps[:top]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--harness", choices=sorted(CALLS_OUTSIDE_TRAINING), required=True)
    p.add_argument("--probe", choices=["gpu", "host"], default="gpu")
    p.add_argument("--model", default="small")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", default="fp16")
    p.add_argument("--steps", type=int, default=125)
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=12, help="largest idle gaps to list")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    # On a machine without a GPU it runs on the CPU (a smoke test: the GPU probe then sees no GPU work).
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = model_config(args.model, block_size=args.seq_len)
    with torch.device(device):  # built on its device, as a cell builds it (flex's block mask included)
        model = GPT(cfg, attn=args.attn)
    data = synthetic_batches(vocab_size=cfg.vocab_size, batch_size=args.batch_size, seq_len=args.seq_len,
                             n_batches=N_DATA_BATCHES, device=device, seed=args.seed)
    spec = TrainSpec(steps=args.steps, window=args.window, precision=args.precision, optimizer="adamw",
                     mode="compiled", fullgraph=attention.get(args.attn).fullgraph, device=device)

    gc_pauses = GcPauses()
    gc.callbacks.append(gc_pauses)
    activity = torch.profiler.ProfilerActivity.CUDA if device.type == "cuda" else torch.profiler.ProfilerActivity.CPU
    profiler = torch.profiler.profile(activities=[activity])
    host = cProfile.Profile()

    def on_window() -> None:
        gc_pauses.active = True
        if args.probe == "gpu":
            profiler.start()
        else:
            host.enable()

    start_call = CALLS_OUTSIDE_TRAINING[args.harness][0] + args.steps - args.window + 1
    batches = CountingBatches(data, start_call, on_window)
    with private_compile_cache(prefix="harness-gap-") as cache, attention.backend_scope(args.attn):
        result = harness(args.harness)(model, batches, spec, args.batch_size * args.seq_len)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if args.probe == "gpu":
            profiler.stop()
        else:
            host.disable()
        gc_pauses.active = False
    expected_calls = sum(CALLS_OUTSIDE_TRAINING[args.harness]) + args.steps
    if batches.calls != expected_calls:
        raise SystemExit(f"the batch list was indexed {batches.calls} times, expected {expected_calls}: "
                         "the window was not where this script assumes; its numbers would be wrong")

    window_steps = result.step_times_s[-args.window:]
    record = {
        "harness": args.harness, "probe": args.probe,
        "cell": {k: getattr(args, k) for k in ("model", "seq_len", "attn", "batch_size", "precision", "steps",
                                                "window")},
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "window_tokens_per_sec": result.window_tokens_per_sec,
        "window_step_ms": [round(1e3 * s, 3) for s in window_steps],
        "window_step_ms_mean": 1e3 * sum(window_steps) / len(window_steps),
        "window_step_ms_median": 1e3 * sorted(window_steps)[len(window_steps) // 2],
        "gc_pauses_in_window": gc_pauses.summary(),
        "gc_pauses_list": [{"generation": g, "ms": round(1e3 * s, 3), "collected": c} for g, s, c in gc_pauses.pauses],
    }
    if args.probe == "gpu":
        trace = Path(cache + "-trace.json")
        profiler.export_chrome_trace(str(trace))
        gpu = gpu_busy_and_gaps(trace, args.top)
        trace.unlink()
        n = args.window
        gpu["per_step_ms"] = {"busy": gpu["busy_us"] / n / 1e3, "idle": gpu["idle_us"] / n / 1e3,
                              "idle_in_gaps_over_100us": gpu["idle_in_gaps_over_100us"] / n / 1e3}
        record["gpu_activity"] = gpu
    else:
        text = io.StringIO()
        stats = pstats.Stats(host, stream=text)
        text.write(f"cProfile over the last {args.window} steps ({args.harness}); divide by {args.window} per step\n")
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(45)
        (args.out / f"gap-{args.harness}-host.txt").write_text(text.getvalue())
        record["host_total_s"] = stats.total_tt  # type: ignore[attr-defined]
    out = args.out / f"gap-{args.harness}-{args.probe}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    summary = {k: record[k] for k in ("harness", "probe", "window_tokens_per_sec", "window_step_ms_mean",
                                      "window_step_ms_median")}
    summary["gc"] = record["gc_pauses_in_window"]
    if "gpu_activity" in record:
        summary["gpu_per_step_ms"] = record["gpu_activity"]["per_step_ms"]
        summary["largest_gaps"] = record["gpu_activity"]["largest_gaps"][:5]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
