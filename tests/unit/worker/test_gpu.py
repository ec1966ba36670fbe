"""The CuPy path agrees with the NumPy path (skipped where there is no CUDA device / CuPy)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from services.worker.analytics import run_analysis

pytestmark = pytest.mark.gpu

JOBS: list[tuple[str, dict[str, Any], float]] = [
    ("describe", {"columns": ["a", "b", "c"]}, 1e-9),
    ("aggregate", {"group_by": ["region", "flag"],
                   "aggregates": {"a": ["count", "sum", "mean", "min", "max", "std"]}}, 1e-9),
    ("histogram", {"column": "b", "bins": 20}, 1e-9),
    ("correlation", {"columns": ["a", "b", "c"], "method": "pearson"}, 1e-9),
    ("correlation", {"columns": ["a", "b", "c"], "method": "spearman"}, 1e-9),
    ("ols", {"y": "b", "x": ["a", "c", "flag"]}, 1e-7),
    ("logistic", {"y": "outcome", "x": ["a", "b", "flag"]}, 1e-6),
    ("kmeans", {"columns": ["a", "b"], "k": 3, "seed": 1}, 1e-4),
    ("pca", {"columns": ["a", "b", "c"]}, 1e-7),
]


def _agree(cpu: Any, gpu: Any, rtol: float, where: str = "result") -> None:
    if isinstance(cpu, dict):
        assert set(cpu) == set(gpu), where
        for key in cpu:
            if key != "backend":
                _agree(cpu[key], gpu[key], rtol, f"{where}.{key}")
    elif isinstance(cpu, list):
        assert len(cpu) == len(gpu), where
        for i, (c, g) in enumerate(zip(cpu, gpu, strict=True)):
            _agree(c, g, rtol, f"{where}[{i}]")
    elif isinstance(cpu, float) and not isinstance(cpu, bool):
        assert gpu == pytest.approx(cpu, rel=rtol, abs=rtol), where
    else:
        assert cpu == gpu, where


@pytest.mark.parametrize(("name", "params", "rtol"), JOBS, ids=[f"{j[0]}-{i}" for i, j in enumerate(JOBS)])
def test_gpu_path_agrees_with_cpu_path(mixed_table: pa.Table, name: str, params: dict[str, Any],
                                       rtol: float) -> None:
    import cupy  # type: ignore[import-not-found]

    cpu = run_analysis(name, params, mixed_table, xp=np).result
    gpu = run_analysis(name, params, mixed_table, xp=cupy).result
    assert cpu["backend"] == "numpy" and gpu["backend"] == "cupy"
    _agree(cpu, gpu, rtol)


def test_gpu_kmeans_from_the_same_init_agrees_on_a_million_rows() -> None:
    import cupy

    from services.worker.analytics.kmeans import lloyd, with_ones

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 16))[rng.integers(0, 8, 1_000_000)] + rng.normal(size=(1_000_000, 16)))
    x = x.astype(np.float32)
    init = x[:8].astype(np.float64)
    cpu = lloyd(np, with_ones(np, x), init, 10, 0.0, lambda f: None)
    gpu = lloyd(cupy, with_ones(cupy, cupy.asarray(x)), cupy.asarray(init), 10, 0.0, lambda f: None)
    assert gpu[2] == pytest.approx(cpu[2], rel=1e-4)


def test_hardware_names_the_device() -> None:
    from services.worker.analytics import detect_hardware

    info = detect_hardware()
    assert info.gpus and info.gpus[0].name and info.gpus[0].memory_bytes > 0 and info.backend == "cupy"
