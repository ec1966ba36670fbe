import json
import os

import numpy as np
import pytest

from services.worker.analytics.backend import HardwareInfo, detect_hardware, jsonable, select_xp


def test_numpy_is_chosen_without_a_gpu_or_when_forced() -> None:
    assert select_xp("numpy") is np


def test_auto_falls_back_to_numpy_when_cupy_is_missing() -> None:
    try:
        import cupy  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        assert select_xp("auto") is np
    else:
        pytest.skip("cupy is installed here")


def test_asking_for_cupy_without_it_says_what_is_missing() -> None:
    try:
        select_xp("cupy")
    except RuntimeError as error:
        assert "DATACOOP_WORKER_BACKEND=numpy" in str(error)


def test_hardware_reports_cpu_cores_and_memory() -> None:
    info = detect_hardware()
    assert isinstance(info, HardwareInfo)
    assert info.cpu_cores == (os.cpu_count() or 1)
    assert info.memory_bytes > 0
    assert info.backend in ("numpy", "cupy")
    assert all(g.memory_bytes > 0 and "." in g.compute_capability for g in info.gpus)


def test_results_become_strict_json() -> None:
    value = jsonable({"a": np.arange(3), "b": np.float32(1.5), "c": np.nan,
                      "d": (np.int64(2), np.bool_(True))})
    assert value == {"a": [0, 1, 2], "b": 1.5, "c": None, "d": [2, True]}
    json.dumps(value, allow_nan=False)
