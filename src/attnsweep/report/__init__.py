"""From cell JSONs to the study's outputs: `aggregate` (summary.csv), `tables` (markdown) and `figures` (PNG).

Tables and figures read only summary.csv, so every number they show can be traced to a row and its cell file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    killed writer left (`.NAME.*.tmp.EXT`) goes first: one job writes each output."""
    path = Path(path)
    for left in path.parent.glob(f".{path.name}.*.tmp{path.suffix}"):
        left.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        mask = os.umask(0)  # mkstemp makes the file private (0600); reading the umask means setting it
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
