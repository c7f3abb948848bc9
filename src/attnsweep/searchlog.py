"""A warm-up's batch search, kept across stopped sweeps: one JSON line per attempt (`attnsweep warmup --search-log`).

Without a memory cap a warm-up's attempts each hold a GPU alone and each compiles from cold (10-70 s on an H200),
and a sweep run in parts under a deadline stops the warm-ups in flight: without a log, everything such a search had
found is lost with it and found again by the next part. With the log, the next part's search takes the outcomes
already known (whether a batch size fitted, its peak memory) instead of running them again; the search, and so its
answer, is the same, since the outcomes it is given are the ones it would have measured. Only the attempt at the
answer runs again when it came from the log: its compile cache went with the stopped warm-up.

An entry counts only for the same cell under the same conditions (`key`: the cell's options, the code's hash, the
GPU's model and the memory the search may use), so an entry from other code, another GPU or another cap is never
taken; it stays in the file, unused. Outcomes taken are `ok` and `oom`; anything else runs again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REUSED = ("ok", "oom")
# An attempt taken from the log, in the record's batch_attempts (its seconds: the earlier attempt's). Two jobs write
# the log: a warm-up, each attempt of its search, and a timed run that ran out of memory at the size its warm-up
# fitted (cell.timed_cell), whose next warm-up then searches below it.
FROM_LOG = ("from the search log: an earlier job of this cell ran it (a warm-up stopped before it ended, or a timed "
            "run that ran out of memory at the size its warm-up fitted)")


@dataclass(frozen=True)
class Known:
    """An attempt an earlier warm-up of the cell made: its outcome, peak memory when it fitted, and wall time."""

    outcome: str
    peak_bytes: int | None
    seconds: float


class SearchLog:
    """The search log of one cell's warm-up at `path`, for attempts made under `key`."""

    def __init__(self, path: str | os.PathLike, key: Mapping) -> None:
        self.path = Path(path)
        self.key = json.loads(json.dumps(dict(key), sort_keys=True))  # as it reads back from the file

    def known(self) -> dict[int, Known]:
        """{batch size: what an earlier attempt under this key found}; the latest entry for a size wins."""
        found: dict[int, Known] = {}
        for entry in entries(self.path):
            try:
                if entry.get("key") != self.key or entry["outcome"] not in REUSED:
                    continue
                found[int(entry["batch_size"])] = Known(entry["outcome"], entry.get("peak_bytes"),
                                                         float(entry["seconds"]))
            except (ValueError, KeyError, TypeError):
                continue
        return found

    def add(self, batch_size: int, outcome: str, peak_bytes: int | None, seconds: float) -> None:
        """Append one attempt, flushed to disk before the search goes on (the sweep may stop it at any moment)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": self.key, "batch_size": batch_size, "outcome": outcome, "peak_bytes": peak_bytes,
                           "seconds": round(seconds, 3)}, sort_keys=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def entries(path: str | os.PathLike) -> list[dict]:
    """Every entry of the search log at `path`, in order (none where there is no log). A line that does not parse
    as an object (a write cut short when its process was killed) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out
