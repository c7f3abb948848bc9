"""A minimal GPT-2 training loop, to measure the overhead of the cell harness.

Run a cell and then this script back to back on the same GPU with the same model, context length, attention,
batch size, mode and precision, and compare the tokens/s they report: the difference is what the harness costs.

It builds the model, optimizer and data the way a cell does (``torch.manual_seed(seed)`` first, then
``GPT(model_config(...))``, ``make_optimizer(model, "adamw")``, ``synthetic_batches(..., n_batches=4)``), and uses a
private inductor + Triton cache as a cell's cold attempt does, so compile conditions match. What it leaves out: no
subprocess per attempt, no batch search, no profiling step, no per-step CUDA events, no loss bookkeeping, no
JSON record. The training step is the cell's own (training.TrainStep): what is bare is the loop around it.

Timing: ``--steps`` steps; the window is the last ``--window`` of them. The device is synchronized just before the
window starts and just after it ends, with ``time.perf_counter()`` read at both points (on the CPU, no
synchronize); tokens/s = window * batch * seq_len / elapsed. Nothing else is timed.

Prints one line to stdout, ``minimal_loop key=value ...``, for a shell script to grep.
"""

from __future__ import annotations

import argparse
import time

import torch

from attnsweep import attention
from attnsweep.data import synthetic_batches
from attnsweep.model import GPT, model_config
from attnsweep.training import TrainStep, compile_model, make_optimizer, private_compile_cache
from attnsweep.vocabulary import CUDAGRAPH_MODES, MODES, PRECISIONS

N_DATA_BATCHES = 4  # as a cell: a small pool on the device, cycled


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="tiny | small | medium | large")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--attn", required=True, help="attention registry name (sdpa, fa2, naive, ...)")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--precision", choices=PRECISIONS, default="fp16")
    p.add_argument("--steps", type=int, default=125)
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-cap-gib", type=float, default=None, help="cap this process's CUDA memory, as a cell")
    args = p.parse_args(argv)
    if not 1 <= args.window <= args.steps:
        p.error(f"--window must be in 1..steps (got window={args.window}, steps={args.steps})")
    return args


def run(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and device.index is None:  # set_device and the memory cap need an index: "cuda" means the current one
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(args.seed)
    if cuda:
        torch.cuda.set_device(device)
        torch.empty(1, device=device)  # touch the device before the allocator calls, as attempt.py does
        if args.memory_cap_gib is not None:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * 2**30 / total), device)

    cfg = model_config(args.model, block_size=args.seq_len, kv_heads=None)
    with torch.device(device):  # built on its device, as a cell builds it (flex's block mask included)
        model = GPT(cfg, attn=args.attn)
    batches = synthetic_batches(vocab_size=cfg.vocab_size, batch_size=args.batch_size, seq_len=args.seq_len,
                                n_batches=N_DATA_BATCHES, device=device, seed=args.seed)
    model.train()
    opt = make_optimizer(model, "adamw")
    # Compiled as a cell compiles it (fullgraph True, except for the implementations that break the graph on purpose).
    fwd = compile_model(model, args.mode, attention.get(args.attn).fullgraph)
    # The cell's own training step: the loop around it is what this tool leaves bare.
    step = TrainStep(fwd, opt, args.precision, device.type, cudagraphs=args.mode in CUDAGRAPH_MODES)

    first_loss = t0 = 0.0
    for i in range(args.steps):
        if i == args.steps - args.window:
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        x, y = batches[i % N_DATA_BATCHES]
        loss = step(x, y)
        if i == 0:
            first_loss = loss.item()  # outside the window: step 1 is warm-up/compile anyway
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    return {
        "tokens_per_sec": args.window * args.batch_size * args.seq_len / elapsed,
        "window_s": elapsed,
        "first_loss": first_loss,
        "last_loss": loss.item(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A private, fresh compile cache, as each cell attempt gets: no warm FX-graph or Triton cache from other runs.
    # The implementation's SDPA backend (and flash implementation) set around the whole run, as a cell sets them.
    with private_compile_cache(prefix="minimal-loop-inductor-"), attention.backend_scope(args.attn):
        r = run(args)
    print(f"minimal_loop model={args.model} seq_len={args.seq_len} attn={args.attn} batch={args.batch_size} "
          f"mode={args.mode} precision={args.precision} tokens_per_sec={r['tokens_per_sec']:.1f} "
          f"window_s={r['window_s']:.6f} first_loss={r['first_loss']:.4f} last_loss={r['last_loss']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
