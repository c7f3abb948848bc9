"""From cell JSONs to the study's outputs: `aggregate` (summary.csv), `tables` (markdown) and `figures` (PNG).

Tables and figures read only summary.csv, so every number they show can be traced to a row and its cell file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

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

