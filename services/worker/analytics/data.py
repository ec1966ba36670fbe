"""From a pyarrow Table to xp arrays: the one place where rows with missing values are dropped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from services.worker.analytics.validation import AnalysisFailed

MAX_SQUARABLE = 1e100
"""The largest magnitude sums of squares and cross-products (X'X, covariances) take in float64 over
any realistic row count without overflowing (1e200 per term, 1e308 at most)."""


@dataclass(frozen=True)
class NumericBlock:
    """Rows x columns on the compute device; `rows_dropped` rows had a null or non-finite value."""

    values: Any
    columns: tuple[str, ...]
    rows_dropped: int
    keep: np.ndarray  # host bool mask over the table's rows: which rows are in `values`


def host_column(table: pa.Table, column: str, dtype: type) -> np.ndarray:
    """A column as a host NumPy array of `dtype`; nulls become NaN (float dtypes)."""
    chunked = table.column(column)
    if chunked.null_count:
        chunked = chunked.cast(pa.float64())
    return np.asarray(chunked.to_numpy(), dtype=dtype)


def require_within(values: np.ndarray, column: str, max_abs: float) -> None:
    """AnalysisFailed when a finite value of `column` lies beyond +-max_abs."""
    finite = values[np.isfinite(values)]
    if finite.size and float(np.abs(finite).max()) > max_abs:
        raise AnalysisFailed(f"column {column!r} has values out of range for this analysis (largest magnitude "
                             f"{float(np.abs(finite).max()):.3g}, at most {max_abs:.0e} is supported); rescale the "
                             "column (e.g. to thousands or millions) or leave it out")


def numeric_block(table: pa.Table, columns: Sequence[str], xp: ModuleType, dtype: type = np.float64,
                  min_rows: int = 1, order: Literal["C", "F"] = "C",
                  constant_first: bool = False, max_abs: float | None = None) -> NumericBlock:
    """Stack `columns` into an (n, p) `dtype` array on xp, dropping incomplete rows.

    Listwise deletion: a row with a null/NaN/inf in any of the requested columns is left out, and
    the count is reported so results can say how many rows they rest on. order "F" (column-major)
    is much cheaper to build and is what BLAS-bound row-chunked algorithms read just as fast;
    `constant_first` puts a column of ones before `columns` (a regression intercept). A finite value
    beyond `max_abs` (what the analysis' sums of squares or `dtype` can hold) is AnalysisFailed saying
    so, rather than being dropped as missing or overflowing into a misleading result.
    """
    if max_abs is not None:
        for column in columns:
            require_within(host_column(table, column, np.float64), column, max_abs)
    host_columns = [host_column(table, column, dtype) for column in columns]
    keep = np.ones(table.num_rows, dtype=bool)
    for values in host_columns:
        keep &= np.isfinite(values)
    n_kept = int(keep.sum())
    dropped = table.num_rows - n_kept
    offset = int(constant_first)
    host: np.ndarray[Any, Any] = np.empty((n_kept, len(columns) + offset), dtype=dtype, order=order)
    if constant_first:
        host[:, 0] = 1.0
    for j, values in enumerate(host_columns):
        host[:, j + offset] = values[keep] if dropped else values
    if host.shape[0] < min_rows:
        raise AnalysisFailed(f"only {host.shape[0]} rows have values in all of {', '.join(columns)} "
                             f"({dropped} have missing values); at least {min_rows} are needed")
    return NumericBlock(values=xp.asarray(host), columns=tuple(columns), rows_dropped=dropped, keep=keep)
