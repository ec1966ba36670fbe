"""Differentially private counts, sums and means per generalized cell (Laplace or Gaussian mechanism).

Neighbouring tables differ by one member's rows added or removed: at most ``rows_per_member`` rows
(the build keeps each member to the definition's ``max_rows_per_member``). Cells are disjoint, so one
row touches one cell (parallel composition), and one member's rows change the counts by at most
``rows_per_member`` in all, spread over cells or in one (L1 and L2 sensitivity both at most that).
Per cell we release a count and, if a value column is given, a sum; the definition's epsilon (and,
for the Gaussian mechanism, its delta) is split evenly between them (sequential composition adds both),
and the mean is noisy_sum / noisy_count (post-processing, no extra cost).

Sensitivity: count ``rows_per_member`` (1 for one row per member). Sum: values are first clamped to
``[lower, upper]``, so one row changes a sum by at most ``max(|lower|, |upper|)`` and one member's rows
by ``rows_per_member`` times that. Both are bounds on the L1 and on the L2 sensitivity (the L2 one is
reached when all of a member's rows fall in one cell).
- Laplace: noise scale b = sensitivity / epsilon_part; gives (epsilon, 0)-DP.
- Gaussian: the analytic Gaussian mechanism (Balle & Wang, 2018): the smallest sigma with
  Phi(D/(2s) - e*s/D) - exp(e)*Phi(-D/(2s) - e*s/D) <= delta, found by bisection; (epsilon, delta)-DP
  for any epsilon > 0 (the classic sqrt(2 ln(1.25/delta)) bound needs epsilon < 1 and is looser).

Cells: pass ``cells`` (the full set of possible cells, fixed independently of the data) to make the
set of released cells data-independent; if omitted, the cells present in the data are used, which
is sound only when their presence is already public (e.g. the cells of a published k-anonymous version).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Mechanism = Literal["laplace", "gaussian"]


class DPError(ValueError):
    """Parameters that give no privacy or no answer; the message says which."""


@dataclass(frozen=True)
class CellAggregate:
    """Noisy figures for one cell. ``mean`` is None when no value column was given or the noisy count is < 1."""

    cell: Hashable
    count: float
    total: float | None
    mean: float | None


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest noise standard deviation giving (epsilon, delta)-DP at this L2 sensitivity (analytic Gaussian)."""
    if epsilon <= 0 or not 0 < delta < 1 or sensitivity <= 0:
        raise DPError(f"gaussian mechanism needs epsilon > 0, 0 < delta < 1, sensitivity > 0; got "
                      f"epsilon={epsilon}, delta={delta}, sensitivity={sensitivity}")

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2.0))

    def delta_of(sigma: float) -> float:
        a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
        return phi(a - b) - math.exp(epsilon) * phi(-a - b)

    lo, hi = 1e-6 * sensitivity, sensitivity
    while delta_of(hi) > delta:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if delta_of(mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def noise(mechanism: Mechanism, epsilon: float, sensitivity: float, size: int, rng: np.random.Generator,
          delta: float | None = None) -> np.ndarray:
    """``size`` draws of noise calibrated to ``sensitivity`` at ``epsilon`` (and ``delta`` for gaussian)."""
    if epsilon <= 0 or not math.isfinite(epsilon):
        raise DPError(f"epsilon={epsilon} gives no privacy guarantee; use a finite epsilon > 0")
    if mechanism == "laplace":
        return rng.laplace(0.0, sensitivity / epsilon, size)
    if mechanism == "gaussian":
        if delta is None:
            raise DPError("the gaussian mechanism needs delta; set aggregates.delta (e.g. 1e-6)")
        return rng.normal(0.0, gaussian_sigma(epsilon, delta, sensitivity), size)
    raise DPError(f"mechanism {mechanism!r} is unknown; use 'laplace' or 'gaussian'")


def cell_aggregates(keys: Sequence[Hashable], epsilon: float, rng: np.random.Generator,
                    values: Sequence[float] | None = None, bounds: tuple[float, float] | None = None,
                    mechanism: Mechanism = "laplace", delta: float | None = None,
                    cells: Sequence[Hashable] | None = None, rows_per_member: int = 1) -> list[CellAggregate]:
    """Noisy count (and sum, mean of ``values`` clamped to ``bounds``) for each cell, at total ``epsilon``.

    ``keys[r]`` is row r's cell; one member has at most ``rows_per_member`` rows (the noise scales by it).
    Pass ``rng = np.random.default_rng(seed)`` for reproducible tests.
    """
    if isinstance(rows_per_member, bool) or not isinstance(rows_per_member, int) or rows_per_member < 1:
        raise DPError(f"rows_per_member={rows_per_member!r}: give the most rows one member has, a whole number >= 1")
    if values is not None:
        if bounds is None or not bounds[0] <= bounds[1]:
            raise DPError(f"sums need clamping bounds lower <= upper; got {bounds}")
        if len(values) != len(keys):
            raise DPError(f"{len(values)} values for {len(keys)} rows; give one value per row")
    universe = list(dict.fromkeys(keys)) if cells is None else list(cells)
    position = {c: i for i, c in enumerate(universe)}
    unknown = sum(1 for k in keys if k not in position)
    if unknown:  # counted, never quoted: a cell is a row's values
        raise DPError(f"{unknown} row(s) fall in cells that are not among the given cells; list every possible cell")
    index = np.fromiter((position[k] for k in keys), dtype=np.int64, count=len(keys))
    counts = np.bincount(index, minlength=len(universe)).astype(np.float64)
    share = epsilon / 2 if values is not None else epsilon
    # sequential composition adds deltas as well as epsilons: count and sum each get half of delta too
    delta_share = None if delta is None else (delta / 2 if values is not None else delta)
    noisy_counts = counts + noise(mechanism, share, float(rows_per_member), len(universe), rng, delta_share)
    if values is None:
        return [CellAggregate(c, float(n), None, None) for c, n in zip(universe, noisy_counts, strict=True)]
    assert bounds is not None
    lower, upper = bounds
    clamped = np.clip(np.asarray(values, dtype=np.float64), lower, upper)
    sums = np.bincount(index, weights=clamped, minlength=len(universe))
    sensitivity = rows_per_member * (max(abs(lower), abs(upper)) or 1.0)
    noisy_sums = sums + noise(mechanism, share, sensitivity, len(universe), rng, delta_share)
    out = []
    for c, n, s in zip(universe, noisy_counts, noisy_sums, strict=True):
        mean = float(np.clip(s / n, lower, upper)) if n >= 1 else None
        out.append(CellAggregate(c, float(n), float(s), mean))
    return out
