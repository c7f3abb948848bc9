"""The installed versions of the distributions a measurement depends on, from their package metadata: nothing is
imported, so the workflow can ask at parse time without starting torch."""

from __future__ import annotations

import importlib.metadata
from functools import lru_cache

# Distributions whose versions decide a throughput number (import names differ; metadata names are used).
VERSIONED = ("torch", "triton", "flash-attn", "flash-attn-4", "bitsandbytes", "mosaicml", "numpy", "snakemake")
# Of those, the ones whose presence or version decides whether a cell can run at all: an attention implementation's
# modules and version checks (attention.unsupported_reason), 8-bit AdamW's bitsandbytes, the composer harness.
DECIDE_SUPPORT = ("torch", "triton", "flash-attn", "flash-attn-4", "bitsandbytes", "mosaicml")


def version(dist: str) -> str | None:
    """The installed version of distribution `dist`, None where it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """The versions of VERSIONED, read once per process (and once per preloaded interpreter)."""
    return {d: version(d) for d in VERSIONED}
