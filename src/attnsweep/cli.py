"""Command line: `attnsweep cell` measures one grid cell and writes its JSON record; `attnsweep warmup` is a sweep's
first stage of a cell (batch size and compile cache); `attnsweep status` says what a results folder holds and what a
rerun would do."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import preload, status
if TYPE_CHECKING:  # for the annotations only: the functions import these where they use them
    from . import gpuslots
    from .spec import CellSpec
    from .training import StepHooks
from .vocabulary import (ATTENTION, BATCH_POLICIES, DEVICES, HARNESSES, ISOLATION, MODELS, MODES, OPTIMIZERS,
                         PRECISIONS)

EXIT_ERROR = 1  # the cell crashed (its JSON, status error, is written), or its JSON could not be written
EXIT_USAGE = 2  # bad input; nothing is written
# (3: not started, as it would end after ATTNSWEEP_DEADLINE: workflow/scripts/start-before-deadline.sh)
EXIT_STALE_WARMUP = 4  # the warm-up it was given is not the cell's (cell.StaleWarmup); nothing is written
# Without a GPU a cell trains on the CPU: defaults that finish in seconds there (the GPU's are the study's).
CPU_DEFAULTS = {"precision": "fp32", "batch_size": 4, "steps": 20, "window": 10}
GPU_DEFAULTS = {"precision": "fp16", "batch_size": None, "steps": 125, "window": 25}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def _add_batch_from(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-from", default=None, metavar="CELL_JSON",
                   help="the record of the cell's repeat 1: a later repeat runs at its batch size, unsearched (or is "
                   "out of memory as it was)")


def _add_batch_prior(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-prior", default=None, metavar="CELL_JSON",
                   help="another run's record of the same cell (e.g. under a memory cap): the batch search's first "
                   "attempt goes where its peak memory predicts the largest batch that fits; the answer is the "
                   "search's own, proved by its attempts")
    p.add_argument("--batch-peers", nargs="+", default=[], metavar="CELL_JSON",
                   help="records of the same cell with other attention whose memory grows alike (e.g. this run's "
                   "other implementations): those there when the job starts, and measured within the same memory, "
                   "place the first attempt instead of --batch-prior (the one whose peak came nearest the memory); a "
                   "path with no record yet is passed over")


def _load_record(path: str, option: str, parser: argparse.ArgumentParser) -> dict:
    """The record at `path`, read and checked; a parser error naming `option` where it cannot be."""
    from .cellio import load_cell

    try:
        return load_cell(path)
    except (OSError, ValueError) as e:
        parser.error(f"--{option.replace('_', '-')} {path}: {e}")


def _read_record(args: argparse.Namespace, parser: argparse.ArgumentParser, option: str = "batch_from") -> dict | None:
    """The record named by --batch-from (repeat 1's) or --batch-prior (another run's), read and checked, or None."""
    path = getattr(args, option)
    return None if path is None else _load_record(path, option, parser)


def _read_peers(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[dict]:
    """The records named by --batch-peers that are there now (a peer not measured yet is passed over), read."""
    return [_load_record(path, "batch_peers", parser) for path in args.batch_peers if Path(path).is_file()]


def _add_cell_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, choices=list(MODELS), help="GPT-2 size")
    p.add_argument("--attn", required=True, choices=list(ATTENTION), help="attention implementation")
    p.add_argument("--mode", default="compiled", choices=MODES,
                   help="compiled = torch.compile, compiled_cudagraphs = torch.compile replayed as CUDA graphs "
                   "(mode='reduce-overhead', CUDA only), eager = no compilation (default: compiled)")
    p.add_argument("--seq-len", required=True, type=_positive_int, help="context length in tokens")
    p.add_argument("--kv-heads", type=_positive_int, default=None,
                   help="key/value heads (default: the model's head count; fewer = grouped-query, 1 = multi-query)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="fp16 = autocast + gradient scaling (the study's), bf16 = autocast, fp32 "
                   "(default: fp16 on a GPU, fp32 on the CPU)")
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                   help="adamw = torch AdamW (foreach, the study's), adamw8bit = bitsandbytes AdamW8bit, "
                   "adamw_fused = torch AdamW with its fused kernel (default: adamw)")
    p.add_argument("--harness", default="native", choices=HARNESSES,
                   help="native = our timed loop, composer = MosaicML Composer + SpeedMonitor (default: native)")
    p.add_argument("--batch-policy", default=None, choices=BATCH_POLICIES,
                   help="fixed = --batch-size, study = the 2023 study's sizes, search = largest that fits from "
                   "--batch-start, tokens = --batch-tokens // --seq-len or the largest below that fits (default: "
                   "fixed if --batch-size is given; else study on a GPU, fixed 4 on the CPU)")
    p.add_argument("--batch-size", type=_positive_int, help="batch size for the fixed policy")
    p.add_argument("--batch-start", type=_positive_int, default=64, help="starting size for search (default: 64)")
    p.add_argument("--batch-tokens", type=_positive_int,
                   help="tokens a step for the tokens policy: batch size tokens // seq-len, or the largest below "
                        "that fits")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="training steps (default: 125 on a GPU, 20 on the CPU)")
    p.add_argument("--window", type=_positive_int, default=None,
                   help="throughput is averaged over the last WINDOW steps (default: 25 on a GPU, 10 on the CPU)")
    p.add_argument("--memory-cap-gib", type=_positive_float, default=None,
                   help="cap the GPU memory this process may use, in GiB (12 replays the study's card)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto = CUDA if available (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and data (default: 0)")
    p.add_argument("--run", default=None, help="name of the sweep this cell belongs to (recorded)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the profiled step that records which kernels ran")
    p.add_argument("--isolate", default="auto", choices=ISOLATION,
                   help="run each batch attempt in a fresh process (auto: on GPU yes, on CPU no)")
    p.add_argument("--gpu-locks", default=None, metavar="DIR",
                   help="a sweep's GPU lock folder: take a GPU of --gpus there (one timed cell per GPU; warm-ups "
                   "never run on a GPU while a cell on it is in its measured steps)")
    p.add_argument("--preload", default=None, metavar="DIR",
                   help="run in a child of the sweep's preloaded interpreter (torch and the compiler imported once; "
                   "its log goes to DIR): the job skips Python's start and the imports")
    p.add_argument("--gpus", default=None, metavar="LIST",
                   help="with --gpu-locks: the GPUs the sweep may use, comma-separated (default: the sweep's "
                   "CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists)")
    p.add_argument("--no-window-turns", dest="window_turns", action="store_false",
                   help="with --gpu-locks: let measured windows of several GPUs overlap, stopping only the timed "
                   "cells still starting (default: windows take turns and stop every other timed cell)")
    p.add_argument("--warmups-per-gpu", type=int, default=None, metavar="N",
                   help="with --gpu-locks: at most N warm-ups on a GPU at once (a sweep passes as many as fit beside "
                   "its timed job under the memory cap; default: no bound); with --compile-seats, at most N running "
                   "their compiled steps, and 0: each runs them in the timed job's place, never beside it")
    p.add_argument("--compile-seats", type=int, default=0, metavar="N",
                   help="with --gpu-locks and --warmups-per-gpu: at most N warm-ups compiling on a GPU at once, each "
                   "taking one of the --warmups-per-gpu seats once compiled (gpuslots.warmup_seats; default 0: a "
                   "warm-up holds its seat throughout)")


def _add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cell", help="train GPT-2 at one grid cell and write its JSON record",
                       description="Train GPT-2 at one cell of the grid and write one JSON record (atomically). "
                       "Exit 0 for status ok/oom/unsupported/diverged, 1 for error, 2 for bad input. Example (CPU, "
                       "seconds): attnsweep cell --model tiny --attn sdpa --mode eager --seq-len 64 --out cell.json")
    _add_cell_options(p)
    p.add_argument("--warmup", default=None, metavar="WARMUP_JSON",
                   help="measure at the batch size an `attnsweep warmup` found, with the compile cache it filled "
                   "(--cache); without it every attempt compiles from cold")
    p.add_argument("--cache", default=None, metavar="DIR", help="the cell's compile cache, filled by its warm-up")
    p.add_argument("--search-log", default=None, metavar="JSONL",
                   help="with --warmup: its search log; a searched batch size that runs out of memory in the timed "
                   "run is entered there and the warm-up's JSON removed, so the next sweep searches below it")
    _add_batch_from(p)
    _add_batch_prior(p)
    p.add_argument("--out", required=True, help="where to write the JSON record")
    w = sub.add_parser("warmup", help="a sweep's first stage of a cell: find its batch size, fill its compile cache",
                       description="Find the cell's batch size (or that it is unsupported or out of memory) and fill "
                       "its own compile cache with a few training steps at that size; `attnsweep cell --warmup` "
                       "then measures with it.")
    _add_cell_options(w)
    w.add_argument("--cache", required=True, metavar="DIR", help="the cell's own compile cache (created)")
    _add_batch_from(w)
    _add_batch_prior(w)
    w.add_argument("--search-log", default=None, metavar="JSONL",
                   help="the cell's search log, kept after this warm-up: sizes an earlier warm-up of the cell tried "
                   "(same code, GPU and memory) are taken from it, not run again; every size tried is added")
    w.add_argument("--out", required=True, help="where to write the warm-up's JSON")


def parse_spec(args: argparse.Namespace, on_gpu: bool) -> CellSpec:
    """The CellSpec the options describe, with the device's defaults where an option was left out."""
    from .spec import CellSpec

    defaults = GPU_DEFAULTS if on_gpu else CPU_DEFAULTS
    batch_size = args.batch_size
    policy = args.batch_policy or ("fixed" if batch_size is not None or not on_gpu else "study")
    if policy == "fixed" and batch_size is None:
        batch_size = defaults["batch_size"]
    return CellSpec(
        model=args.model, attn=args.attn, mode=args.mode, seq_len=args.seq_len,
        precision=args.precision or defaults["precision"], optimizer=args.optimizer, harness=args.harness,
        kv_heads=args.kv_heads, batch_policy=policy, batch_size=batch_size, batch_start=args.batch_start,
        batch_tokens=args.batch_tokens,
        steps=args.steps or defaults["steps"],
        window=args.window or min(defaults["window"], args.steps or defaults["steps"]),
        device=args.device, memory_cap_gib=args.memory_cap_gib, seed=args.seed, run=args.run,
        profile=args.profile, isolate=args.isolate,
    )


def _claim(
    args: argparse.Namespace, stack: contextlib.ExitStack, kind: str
) -> gpuslots.TimedSlot | gpuslots.WarmupSlot | None:
    """Take a GPU slot of the sweep (before CUDA starts in this process) and make it this process's only GPU."""
    if args.gpu_locks is None:
        return None
    from . import gpuslots

    gpus = gpuslots.visible_gpus(config_value=args.gpus)
    if not gpus:
        gpus = ["cpu"]  # no GPU: the slots still keep warm-ups and timed cells of one device apart
    uncapped_warmup = kind == "warmup" and gpus != ["cpu"] and args.memory_cap_gib is None
    if uncapped_warmup:
        # Without a cap a warm-up's batch search may fill the GPU: it runs alone there, as a timed cell does.
        slot = stack.enter_context(gpuslots.claim_timed(args.gpu_locks, gpus))
        stack.enter_context(slot.exclusive())
    elif kind == "timed":
        slot = stack.enter_context(gpuslots.claim_timed(args.gpu_locks, gpus))
        slot.stoppable()  # until its window (or first step): other GPUs' windows stop it
        os.environ[gpuslots.WINDOWS_ENV] = "in turn" if args.window_turns else "overlapping"
    elif args.compile_seats and args.warmups_per_gpu is not None:
        slot = stack.enter_context(gpuslots.claim_warmup(args.gpu_locks, gpus, per_gpu=args.compile_seats,
                                                         seat="compile"))
        from .attempt import COMPILE_THREADS_ENV, RUN_SEATS_ENV

        # Its workers take a run seat once compiled; the host's cores are shared by every GPU's compiling warm-ups.
        cores = len(os.sched_getaffinity(0))
        os.environ[RUN_SEATS_ENV] = str(args.warmups_per_gpu)
        os.environ[COMPILE_THREADS_ENV] = str(max(2, cores // (args.compile_seats * len(gpus))))
    else:
        slot = stack.enter_context(gpuslots.claim_warmup(args.gpu_locks, gpus, per_gpu=args.warmups_per_gpu))
    if slot.device_id != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.device_id
    if kind == "warmup":
        from .attempt import WORKER_ENV

        # The processes that run its attempts register: a capped warm-up's on its GPU (its timed job stops them),
        # an uncapped one's among the timed slots (it has its GPU to itself; other GPUs' windows stop them).
        workers = gpuslots.TIMED_WORKERS if uncapped_warmup else slot.device_id
        os.environ.update(zip(WORKER_ENV, (str(args.gpu_locks), workers)))
    return slot


def _hooks(slot: gpuslots.TimedSlot | None, stack: contextlib.ExitStack, turns: bool = True) -> StepHooks:
    """A timed cell's GPU after its first step, and the host for its measured window (gpuslots), given back after
    the window's last step (the GPU stays the cell's to its end: its profiled step times that GPU's kernels); the GPU
    first in any case: a window entered outside the GPU's exclusive phase could wait on its own warm-ups."""
    from .training import StepHooks

    if slot is None:
        return StepHooks()
    entered: list[bool] = []
    host = contextlib.ExitStack()

    def take_gpu() -> None:
        if not entered:
            stack.enter_context(slot.exclusive())
            entered.append(True)
            if not turns:
                slot.leave_stoppable()  # started: from here on its steps run beside other GPUs' windows

    def take_host() -> None:
        take_gpu()
        host.enter_context(slot.quiet(turns))
        stack.callback(host.close)  # if the window does not end (an error), the host goes back before the GPU

    return StepHooks(after_first_step=take_gpu, before_window=take_host, after_window=host.close)


def _write(out: str, record: dict, what: str) -> int:
    from .cellio import write_cell

    try:
        write_cell(out, record)
    except OSError as e:
        # A full disk or an unwritable folder: one line naming the file and the reason, not a traceback.
        # write_json_atomic has removed its temporary file, so nothing that looks like a record is left.
        where = f" ({e.filename})" if e.filename and e.filename != out else ""  # e.g. the parent
        print(f"attnsweep {what}: measured (status {record['status']}) but cannot write the record to "
              f"{out}: {e.strerror or e}{where} (errno {e.errno}); nothing was written", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _clear_temporaries(out: str) -> None:
    """This job owns `out`: a temporary of it that a killed job left is removed before anything is measured."""
    from .cellio import remove_stale_temporaries

    for tmp in remove_stale_temporaries(out):
        print(f"attnsweep: removed {tmp}, left by a job killed while writing {out}", file=sys.stderr)


def _use_kernel_cache(cache: str) -> None:
    """Kernel packages that compile at their first call keep their kernels in the cell's cache too (set before
    anything imports them; the batch-size attempts' processes inherit it)."""
    from .attention import kernel_cache_env

    os.environ.update(kernel_cache_env(cache))


def _run_cell(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .cell import StaleWarmup, Warmup, run_cell, timed_cell
    from .spec import CellInputError

    if (args.warmup is None) != (args.cache is None):
        parser.error("--warmup and --cache go together (the warm-up's JSON and the compile cache it filled)")
    if args.warmup is not None and args.batch_from is not None:
        parser.error("--batch-from is for a cold repeat: with --warmup, the warm-up has taken repeat 1's batch size")
    if args.search_log is not None and args.warmup is None:
        parser.error("--search-log goes with --warmup (the warm-up's search, which a timed run can correct)")
    for option in ("batch_prior", "batch_peers"):
        if args.warmup is not None and getattr(args, option):
            parser.error(f"--{option.replace('_', '-')} is for a search: with --warmup, the warm-up has found the "
                         "batch size")
    first = _read_record(args, parser)
    prior = _read_record(args, parser, "batch_prior")
    if args.cache is not None:
        _use_kernel_cache(args.cache)
    _clear_temporaries(args.out)
    with contextlib.ExitStack() as stack:
        slot = _claim(args, stack, "timed")
        spec = _spec(args, parser)
        try:
            if args.warmup is None:
                if slot is not None:
                    stack.enter_context(slot.exclusive())  # every attempt compiles here: the GPU is ours throughout
                # Read once the GPU is ours: a peer measured while this job waited for it is there now.
                record = run_cell(spec, first, prior, _read_peers(args, parser))
            else:
                record = timed_cell(spec, Warmup.read(args.warmup), args.cache, _hooks(slot, stack, args.window_turns),
                                    args.search_log, lambda: Path(args.warmup).unlink(missing_ok=True))
        except CellInputError as e:
            parser.error(str(e))
        except StaleWarmup as e:
            print(f"{args.out}: not measured: {e}", file=sys.stderr)
            return EXIT_STALE_WARMUP
    rc = _write(args.out, record, "cell")
    if rc:
        return rc
    print(f"{args.out}: {record['status']}"
          + (f" ({record['reason']})" if record["reason"] else f", {record['tokens_per_sec']:,.0f} tokens/s"),
          file=sys.stderr)
    return EXIT_ERROR if record["status"] == "error" else 0


def _spec(args: argparse.Namespace, parser: argparse.ArgumentParser) -> CellSpec:
    from .cell import resolve_device
    from .spec import CellInputError

    try:
        on_gpu = resolve_device(args.device).type == "cuda"
        spec = parse_spec(args, on_gpu)
        spec.validate()
    except CellInputError as e:
        parser.error(str(e))
    if not on_gpu and spec.precision == "fp16":
        parser.error("--precision fp16 on the CPU: float16 autocast with gradient scaling is the GPU recipe; on a "
                     "CPU it is emulated and says nothing about a GPU. Use fp32 or bf16 there.")
    return spec


def _run_warmup(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .cell import warm_up
    from .spec import CellInputError

    if args.warmups_per_gpu is not None and (args.warmups_per_gpu < 0 or args.warmups_per_gpu == 0
                                             and not args.compile_seats):
        parser.error(f"--warmups-per-gpu {args.warmups_per_gpu}: at least 1, or 0 with --compile-seats (its "
                     "compiled steps in the timed job's place)")
    _use_kernel_cache(args.cache)
    _clear_temporaries(args.out)
    with contextlib.ExitStack() as stack:
        _claim(args, stack, "warmup")
        # Compilation beside a timed cell: the timed one gets the CPU first.
        os.nice(10)
        spec = _spec(args, parser)
        first = _read_record(args, parser)
        prior = _read_record(args, parser, "batch_prior")
        peers = _read_peers(args, parser)  # read once this job holds its slot: a peer measured meanwhile is there
        try:
            result = warm_up(spec, args.cache, first, prior, args.search_log, peers)
        except CellInputError as e:
            parser.error(str(e))
    result.write(args.out)
    print(f"{args.out}: warm-up {result.status}"
          + (f" ({result.reason})" if result.reason else f", batch size {result.batch_size}, first step "
             f"{result.first_step_s:.1f} s"), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnsweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_parsers(sub)
    status.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if getattr(args, "preload", None) and not os.environ.get(preload.CHILD_ENV):
        code = preload.run("cli", argv, args.preload)
        if code is not None:
            return code
    if args.command == "cell":
        return _run_cell(args, parser)
    if args.command == "warmup":
        return _run_warmup(args, parser)
    if args.command == "status":
        return status.run(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
