"""One measurement at one batch size; run in-process or as `python -m attnsweep.worker ARGS.json OUT.json`.

Out-of-memory is an outcome here, not a crash: the cell's batch search reads it. Anything else that goes wrong is
an `error` with the end of its traceback, so the cell can say what broke.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable

import torch

from . import attention
from .data import synthetic_batches
from .kernels import profile_step
from .model import GPT, model_config
from .training import TrainSpec, private_compile_cache

N_DATA_BATCHES = 4
OOM_MARKERS = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or any(m in str(e) for m in OOM_MARKERS)


def harness(name: str) -> Callable:
    """The training function of a harness (`native` or `composer`); Composer is imported only when asked for."""
    if name == "composer":
        from .composer_harness import train_composer

        return train_composer
    from .measure import train_native

    return train_native


def measure(spec, batch_size: int, device: torch.device) -> dict:
    """Build, train and profile at `batch_size`; returns {"outcome", "detail", "measurement"}."""
    with private_compile_cache():
        return _measure(spec, batch_size, device)


def _measure(spec, batch_size: int, device: torch.device) -> dict:
    # Host wall time of each phase (phases_s in the record): where a cell's time goes besides the timed steps.
    t_setup = time.perf_counter()
    torch.manual_seed(spec.seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.empty(1, device=device)  # the allocator calls below fail on a device this process has not touched
        if spec.memory_cap_gib is not None:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, spec.memory_cap_gib * 2**30 / total), device)
        torch.cuda.reset_peak_memory_stats(device)
    model = result = batches = None
    try:
        cfg = model_config(spec.model, block_size=spec.seq_len, kv_heads=spec.kv_heads)
        model = GPT(cfg, attn=spec.attn).to(device)
        params = {"total": model.num_params(), "non_embedding": model.num_params(non_embedding=True)}
        batches = synthetic_batches(vocab_size=cfg.vocab_size, batch_size=batch_size, seq_len=spec.seq_len,
                                    n_batches=N_DATA_BATCHES, device=device, seed=spec.seed)
        tspec = TrainSpec(steps=spec.steps, window=spec.window, precision=spec.precision,
                          optimizer=spec.optimizer, mode=spec.mode,
                          fullgraph=attention.get(spec.attn).fullgraph,
                          device=device)
        t_train = time.perf_counter()
        result = harness(spec.harness)(model, batches, tspec, batch_size * spec.seq_len)
        t_profile = time.perf_counter()
        kernels = profile_step(result.profile_step, device) if spec.profile and result.profile_step else None
        t_end = time.perf_counter()
    except Exception as e:
        if _is_oom(e):
            return {"outcome": "oom", "detail": str(e).splitlines()[0][:300] if str(e) else type(e).__name__}
        tb = traceback.format_exc().strip().splitlines()
        return {"outcome": "error", "detail": " | ".join(tb[-6:])[:2000]}
    finally:
        # Free what this attempt held before the next one (in-process on the CPU; a no-op cost elsewhere).
        del model, batches
        if device.type == "cuda":
            torch.cuda.empty_cache()
    losses = result.losses
    # Mean of the first and last few steps: single-step losses on a small pool of batches are noisy.
    k = max(1, min(5, len(losses) // 4))
    start, end = sum(losses[:k]) / k, sum(losses[-k:]) / k
    measurement = {
        "window_tokens_per_sec": result.window_tokens_per_sec,
        "step_times_s": result.step_times_s,
        "params": params,
        "peak_memory_bytes": result.peak_memory_bytes,
        "compile": {
            "compiled": spec.mode == "compiled", "fullgraph": tspec.fullgraph if spec.mode == "compiled" else None,
            "graphs": result.graphs, "graph_breaks": result.graph_breaks,
            "break_reasons": result.break_reasons[:10], "first_step_s": result.first_step_s,
        },
        "loss": {
            "start": start if result.nonfinite_step is None else None,
            "end": end if result.nonfinite_step is None else None,
            "fell": result.nonfinite_step is None and end < start,
            "nonfinite_step": result.nonfinite_step,
            "values": [v if v == v and abs(v) != float("inf") else None for v in losses],
        },
        "kernels": kernels,
        "harness_extra": {"harness": result.harness, **result.extra},
        # train: the harness's whole run (compilation in its first step, every step, its own bookkeeping).
        "phases_s": {"setup": t_train - t_setup, "train": t_profile - t_train, "profile": t_end - t_profile},
    }
    if result.nonfinite_step is not None:
        return {"outcome": "diverged", "detail": f"loss became non-finite at step {result.nonfinite_step}",
                "measurement": measurement}
    return {"outcome": "ok", "detail": None, "measurement": measurement}


def main(argv: list[str]) -> int:
    from .cell import CellSpec

    args_path, out_path = argv
    args = json.loads(open(args_path).read())
    res = measure(CellSpec(**args["spec"]), args["batch_size"], torch.device(args["device"]))
    with open(out_path, "w") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
