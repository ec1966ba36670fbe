"""From a pyarrow Table to xp arrays: the one place where rows with missing values are dropped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

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


def numeric_block(table: pa.Table, columns: Sequence[str], xp: ModuleType,
                  dtype: type = np.float64, min_rows: int = 1) -> NumericBlock:
    """Stack `columns` into an (n, p) C-ordered `dtype` array on xp, dropping incomplete rows.

    Listwise deletion: a row with a null/NaN/inf in any of the requested columns is left out, and
    the count is reported so results can say how many rows they rest on.
    """
    host = np.empty((table.num_rows, len(columns)), dtype=dtype)
    for j, column in enumerate(columns):
        host[:, j] = host_column(table, column, dtype)
    keep = np.isfinite(host).all(axis=1)
    dropped = int(keep.size - keep.sum())
    if dropped:
        host = host[keep]
    if host.shape[0] < min_rows:
        raise AnalysisFailed(f"only {host.shape[0]} rows have values in all of {', '.join(columns)} "
                             f"({dropped} have missing values); at least {min_rows} are needed")
    return NumericBlock(values=xp.asarray(host), columns=tuple(columns), rows_dropped=dropped, keep=keep)
