"""Shared test fixtures and the GPU skip rule. Keep this small."""

from __future__ import annotations

import pytest
import torch


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
