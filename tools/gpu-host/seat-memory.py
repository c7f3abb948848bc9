"""On the GPU host: the GPU memory one attempt still holds when it gives up its run seat.

    python3 tools/gpu-host/seat-memory.py OUT.json [attnsweep cell options: --model, --attn, --seq-len, ...]

With run seats 0 the seat is the GPU's timed lock, and the timed job that takes it next allocates beside whatever
the attempt's process still holds then. This runs `attempt.measure` of the cell code on PYTHONPATH (the checkout's,
or a candidate's copy of src/) with a real seat (a lock folder of its own), and reads, as the seat is released: the
caching allocator's reserved and allocated bytes in this process and the bytes in use on the whole device
(`torch.cuda.mem_get_info`, the CUDA context included). Also the attempt's outcome and its window's tokens/s, which a
change after the window must leave as they were. One process measures one attempt: run it once per side. The
options are `attnsweep cell`'s (as ab-code.sh's), read by its own parser, so the spec is the one that command builds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Iterator

import torch

from attnsweep import attempt, cli, codestamp


def main(out: str, options: list[str]) -> None:
    args = cli.build_parser().parse_args(["cell", *options, "--out", out])
    spec = cli.parse_spec(args, on_gpu=True)
    spec.validate()
    seen: dict[str, int] = {}
    seat = attempt._run_seat

    @contextlib.contextmanager
    def watched(compiled: bool) -> Iterator[object]:
        with seat(compiled) as take:
            yield take
            # The last thing before the seat's lock is released.
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            seen.update(reserved=torch.cuda.memory_reserved(), allocated=torch.cuda.memory_allocated(),
                        device_used=total - free)

    attempt._run_seat = watched
    with tempfile.TemporaryDirectory() as locks:
        os.environ.update({attempt.RUN_SEATS_ENV: "0", attempt.WORKER_ENV[0]: locks, attempt.WORKER_ENV[1]: "0"})
        result = attempt.measure(spec, int(spec.batch_size or 1), torch.device("cuda"))
    m = result.measurement
    record = {"spec": dataclasses.asdict(spec), "outcome": result.outcome, "detail": result.detail,
              "code": codestamp.source_hash()[:8],
              "gpu": torch.cuda.get_device_name(), "at_seat_release_bytes": seen,
              "window_tokens_per_sec": m.window_tokens_per_sec if m else None,
              "peak_memory_bytes": m.peak_memory_bytes if m else None}
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    gib = {k: round(v / 2**30, 2) for k, v in seen.items()}
    print(f"{out}: {result.outcome}, code {record['code']}, tokens/s {record['window_tokens_per_sec']}, "
          f"at seat release GiB {gib}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.split("\n\n")[1])
    main(sys.argv[1], sys.argv[2:])
