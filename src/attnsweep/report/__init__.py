"""From cell JSONs to the study's outputs: `aggregate` (summary.csv), `tables` (markdown) and `figures` (PNG).

Tables and figures read only summary.csv, so every number they show can be traced to a row and its cell file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..cellio import atomic_temporary, remove_stale_temporaries

log = logging.getLogger("attnsweep.report")


@contextmanager
def logged(path: str | os.PathLike) -> Iterator[None]:
    """Log to `path` (a Snakemake job's log); an exception is logged there too, then re-raised for Snakemake."""
    handler = logging.FileHandler(path, mode="w")
    # No timestamps: rerunning an aggregation on the same cells (as a fresh clone may) leaves every file unchanged.
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    except BaseException:
        log.exception("failed")
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside `path` for the block to write, renamed onto `path` only once the block has ended
    without an error: an aggregation stopped mid-write (a sweep's deadline stops the whole process group) leaves the
    old file or the new one, never part of one, in results that are committed and copied between machines. What a
    killed writer left (`.NAME.*.tmp.EXT`) goes first: one job writes each output. The temporary keeps the output's
    suffix, from which matplotlib takes the format."""
    path = Path(path)
    remove_stale_temporaries(path, path.suffix)
    with atomic_temporary(path, path.suffix) as (fd, tmp):
        os.close(fd)  # the block writes by path
        yield tmp
