"""Command line: `attnsweep cell ...` measures one grid cell and writes its JSON record; `attnsweep status ...` says
what a results folder holds and what a rerun would do."""

from __future__ import annotations

import argparse
import sys

from . import attention, status
from .cell import (BATCH_POLICIES, DEVICES, HARNESSES, ISOLATION, MODES, OPTIMIZERS, PRECISIONS, CellInputError,
                   CellSpec, run_cell)
from .cellio import write_cell
from .model import MODEL_CONFIGS

EXIT_ERROR = 1  # the cell crashed (its JSON, status error, is written), or its JSON could not be written
EXIT_USAGE = 2  # bad input; nothing is written


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


def _add_cell_parser(sub) -> None:
    p = sub.add_parser("cell", help="train GPT-2 at one grid cell and write its JSON record",
                       description="Train GPT-2 at one cell of the grid and write one JSON record (atomically). "
                       "Exit 0 for status ok/oom/unsupported/diverged, 1 for error, 2 for bad input.")
    p.add_argument("--model", required=True, choices=list(MODEL_CONFIGS), help="GPT-2 size")
    p.add_argument("--attn", required=True, choices=attention.names(), help="attention implementation")
    p.add_argument("--mode", default="compiled", choices=MODES, help="torch.compile or eager (default: compiled)")
    p.add_argument("--seq-len", required=True, type=_positive_int, help="context length in tokens")
    p.add_argument("--kv-heads", type=_positive_int, default=None,
                   help="key/value heads (default: the model's head count; fewer = grouped-query, 1 = multi-query)")
    p.add_argument("--precision", default="fp16", choices=PRECISIONS,
                   help="fp16 = autocast + gradient scaling (the study's), bf16 = autocast, fp32 (default: fp16)")
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                   help="adamw = torch AdamW (foreach), adamw8bit = bitsandbytes AdamW8bit (default: adamw)")
    p.add_argument("--harness", default="native", choices=HARNESSES,
                   help="native = our timed loop, composer = MosaicML Composer + SpeedMonitor (default: native)")
    p.add_argument("--batch-policy", default=None, choices=BATCH_POLICIES,
                   help="fixed = --batch-size, study = the 2023 study's sizes, search = largest that fits from "
                   "--batch-start (default: fixed if --batch-size is given, else study)")
    p.add_argument("--batch-size", type=_positive_int, help="batch size for the fixed policy")
    p.add_argument("--batch-start", type=_positive_int, default=64, help="starting size for search (default: 64)")
    p.add_argument("--steps", type=_positive_int, default=125, help="training steps (default: 125)")
    p.add_argument("--window", type=_positive_int, default=25,
                   help="throughput is averaged over the last WINDOW steps (default: 25)")
    p.add_argument("--memory-cap-gib", type=_positive_float, default=None,
                   help="cap the GPU memory this process may use, in GiB (12 replays the study's card)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto = CUDA if available (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and data (default: 0)")
    p.add_argument("--run", default=None, help="name of the sweep this cell belongs to (recorded)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the profiled step that records which kernels ran")
    p.add_argument("--isolate", default="auto", choices=ISOLATION,
                   help="run each batch attempt in a fresh process (auto: on GPU yes, on CPU no)")
    p.add_argument("--out", required=True, help="where to write the JSON record")


def parse_spec(args: argparse.Namespace) -> CellSpec:
    policy = args.batch_policy or ("fixed" if args.batch_size is not None else "study")
    return CellSpec(
        model=args.model, attn=args.attn, mode=args.mode, seq_len=args.seq_len, precision=args.precision,
        optimizer=args.optimizer, harness=args.harness, kv_heads=args.kv_heads, batch_policy=policy,
        batch_size=args.batch_size, batch_start=args.batch_start, steps=args.steps, window=args.window,
        device=args.device, memory_cap_gib=args.memory_cap_gib, seed=args.seed, run=args.run,
        profile=args.profile, isolate=args.isolate,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnsweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_cell_parser(sub)
    status.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "cell":
        spec = parse_spec(args)
        try:
            spec.validate()
            record = run_cell(spec)
        except CellInputError as e:
            parser.error(str(e))  # exits with EXIT_USAGE and names the option
        try:
            write_cell(args.out, record)
        except OSError as e:
            # A full disk or an unwritable folder: one line naming the file and the reason, not a traceback.
            # write_json_atomic has removed its temporary file, so nothing that looks like a record is left.
            where = f" ({e.filename})" if e.filename and e.filename != args.out else ""  # e.g. the parent
            print(f"attnsweep cell: measured (status {record['status']}) but cannot write the record to "
                  f"{args.out}: {e.strerror or e}{where} (errno {e.errno}); nothing was written", file=sys.stderr)
            return EXIT_ERROR
        print(f"{args.out}: {record['status']}"
              + (f" ({record['reason']})" if record["reason"] else f", {record['tokens_per_sec']:.0f} tokens/s"),
              file=sys.stderr)
        return EXIT_ERROR if record["status"] == "error" else 0
    if args.command == "status":
        return status.run(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
