"""From a pyarrow Table to xp arrays: the one place where rows with missing values are dropped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from services.worker.analytics.validation import AnalysisFailed


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


def numeric_block(table: pa.Table, columns: Sequence[str], xp: ModuleType, dtype: type = np.float64,
                  min_rows: int = 1, order: Literal["C", "F"] = "C",
                  constant_first: bool = False) -> NumericBlock:
    """Stack `columns` into an (n, p) `dtype` array on xp, dropping incomplete rows.

    Listwise deletion: a row with a null/NaN/inf in any of the requested columns is left out, and
    the count is reported so results can say how many rows they rest on. order "F" (column-major)
    is much cheaper to build and is what BLAS-bound row-chunked algorithms read just as fast;
    `constant_first` puts a column of ones before `columns` (a regression intercept).
    """
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
