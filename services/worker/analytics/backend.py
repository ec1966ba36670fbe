"""Array-module selection (CuPy on a CUDA device, NumPy otherwise) and hardware detection.

Every analysis is written once against an array module `xp`; this module decides which one.
CuPy is optional: it is imported lazily and every probe is guarded, so a machine without CuPy or
without a CUDA device silently gets NumPy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

BackendName = Literal["auto", "numpy", "cupy"]
BACKEND_ENV = "DATACOOP_WORKER_BACKEND"


def _cupy_with_device() -> ModuleType | None:
    """CuPy if it imports and sees at least one CUDA device; None otherwise (never raises)."""
    try:
        import cupy

        if int(cupy.cuda.runtime.getDeviceCount()) > 0:
            return cupy  # type: ignore[no-any-return]
    except Exception:
        return None
    return None


def gpu_available() -> bool:
    """True when CuPy is importable and a CUDA device is present."""
    return _cupy_with_device() is not None


def select_xp(prefer: BackendName | None = None) -> ModuleType:
    """The array module to compute with.

    `prefer` (or env DATACOOP_WORKER_BACKEND when None): "auto" (default) picks CuPy when a CUDA
    device is there, else NumPy; "numpy" forces NumPy; "cupy" requires CuPy and a device and raises
    RuntimeError naming what is missing otherwise.
    """
    choice = prefer or os.environ.get(BACKEND_ENV, "auto")
    if choice == "numpy":
        return np
    cupy = _cupy_with_device()
    if choice == "cupy" and cupy is None:
        raise RuntimeError("backend 'cupy' asked for, but CuPy is not installed or no CUDA device is "
                           f"visible; install cupy-cuda12x on a GPU machine or set {BACKEND_ENV}=numpy")
    if choice not in ("auto", "cupy"):
        raise ValueError(f"unknown backend {choice!r}; use auto, numpy or cupy")
    return cupy if cupy is not None else np


def backend_name(xp: ModuleType) -> str:
    """"cupy" or "numpy", for results and logs."""
    return "cupy" if xp.__name__.startswith("cupy") else "numpy"


def to_numpy(a: Any) -> np.ndarray:
    """A host NumPy copy of an xp array (no copy when it already is NumPy)."""
    get = getattr(a, "get", None)
    return get() if callable(get) else np.asarray(a)


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as CuPy reports it; memory in bytes."""

    index: int
    name: str
    memory_bytes: int
    compute_capability: str


@dataclass(frozen=True)
class HardwareInfo:
    """What a worker can offer: CPU cores, host memory (bytes, 0 if unknown), CUDA devices."""

    cpu_cores: int
    memory_bytes: int
    gpus: tuple[GpuInfo, ...]

    @property
    def backend(self) -> str:
        return "cupy" if self.gpus else "numpy"


def _host_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _gpus() -> tuple[GpuInfo, ...]:
    cupy = _cupy_with_device()
    if cupy is None:
        return ()
    found = []
    try:
        for index in range(int(cupy.cuda.runtime.getDeviceCount())):
            props = cupy.cuda.runtime.getDeviceProperties(index)
            name = props["name"]
            found.append(GpuInfo(
                index=index,
                name=name.decode() if isinstance(name, bytes) else str(name),
                memory_bytes=int(props["totalGlobalMem"]),
                compute_capability=f"{props['major']}.{props['minor']}",
            ))
    except Exception:
        return tuple(found)
    return tuple(found)


def detect_hardware() -> HardwareInfo:
    """Probe this machine; never raises (a failed probe reads as 'not there')."""
    return HardwareInfo(cpu_cores=os.cpu_count() or 1, memory_bytes=_host_memory_bytes(), gpus=_gpus())


def jsonable(value: Any) -> Any:
    """`value` with every xp/NumPy array and scalar turned into plain Python (lists, float, int).

    Non-finite floats become None, so results are strict JSON.
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "get") and not isinstance(value, dict) and hasattr(value, "dtype"):
        value = value.get()
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer | int):
        return int(value)
    if isinstance(value, np.floating | float):
        f = float(value)
        return f if np.isfinite(f) else None
    return value
