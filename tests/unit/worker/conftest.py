"""Worker analytics tests: `gpu`-marked tests skip cleanly without CuPy and a CUDA device."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from services.worker.analytics.backend import gpu_available


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device; none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def mixed_table() -> pa.Table:
    """400 rows: numeric columns with a few nulls, a string and a bool column, a binary outcome."""
    rng = np.random.default_rng(7)
    n = 400
    a = rng.normal(10.0, 2.0, n)
    b = rng.normal(0.0, 1.0, n) + 0.5 * a
    c = rng.integers(0, 100, n)
    logit = -3.0 + 0.25 * a - 0.8 * b
    outcome = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    a_with_nulls = pa.array(a, mask=np.isin(np.arange(n), [3, 50, 399]))
    return pa.table({
        "a": a_with_nulls, "b": b, "c": c,
        "region": pa.array(rng.choice(["north", "south", "east"], n)),
        "flag": pa.array(rng.random(n) < 0.3),
        "outcome": outcome,
    })
