"""Shared test fixtures and the GPU skip rule. Keep this small."""

from __future__ import annotations

import os

import pytest
import torch

# Sweeps run by the tests start preloaded interpreters (attnsweep.preload): let each go soon after its last job.
os.environ.setdefault("ATTNSWEEP_PRELOAD_IDLE_S", "10")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests marked `gpu` run on the GPU host (`pytest -m gpu`); elsewhere they skip with a reason, not fail.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fresh_dynamo():
    """Reset torch.compile's caches and counters before and after a test, so graph counts are the test's own."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
