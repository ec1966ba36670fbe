"""What every analysis returns, and the progress callback it may call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Progress = Callable[[float], None]
"""Called with the fraction done, 0.0..1.0, non-decreasing; 1.0 is always the last call."""


def no_progress(_fraction: float) -> None:
    """The default progress callback: ignores reports."""


@dataclass(frozen=True)
class AnalysisOutcome:
    """`result` is JSON-serializable (plain dict/list/str/int/float/bool/None, no NaN);
    `plot_png` is a PNG image for analyses that draw one, else None."""

    result: dict[str, Any]
    plot_png: bytes | None = None
