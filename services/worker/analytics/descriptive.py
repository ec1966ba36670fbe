"""Descriptive statistics, grouped aggregates, histograms and correlation matrices.

Sums, means and variances are computed in float64 whatever the column type, so the NumPy and CuPy
paths agree to about 1e-12 relative; quantiles use linear interpolation (NumPy's default).
No statistic rests on fewer than `min_group_size` rows (disclosure.py): smaller groups, bins and
columns are suppressed and counted in the result. Nor is any one row's value reported as an extreme: a
`min` or `max` is the mean of the `min_group_size` smallest or largest values (with 1, the exact min and
max), and a histogram without a range runs between those two means, the values beyond them counted in
its first and last bins (bottom- and top-coded).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, StrictInt, field_validator, model_validator

from services.worker.analytics.backend import backend_name, jsonable, to_numpy
from services.worker.analytics.data import MAX_SQUARABLE, host_column, numeric_block
from services.worker.analytics.outcome import AnalysisOutcome, Progress
from services.worker.analytics.plots import histogram_png
from services.worker.analytics.validation import (
    AnalysisFailed,
    AnalysisParams,
    JobRefused,
    Schema,
    require_columns,
    require_distinct,
    require_numeric,
    require_rows,
)
from services.worker.column_types import is_numeric

MAX_GROUPS = 10_000
MAX_HISTOGRAM_MAGNITUDE = 1e300  # beyond this, bin widths (high - low) overflow float64


class DescribeParams(AnalysisParams):
    columns: list[str] = Field(min_length=1, max_length=256)

    def check(self, schema: Schema, n_rows: int, min_group_size: int) -> None:
        require_distinct(self.columns, "describe")
        require_numeric(schema, self.columns, "describe")


def _extremes(xp: ModuleType, x: Any, k: int) -> tuple[Any, Any]:
    """The means of the k smallest and of the k largest of the values `x` (at least k of them): extremes that
    are no single row's value (with k = 1, the min and the max)."""
    ordered = xp.sort(x)
    return xp.sum(ordered[:k] / k), xp.sum(ordered[-k:] / k)  # each part first: no overflow near 1e308


def describe(params: DescribeParams, table: pa.Table, xp: ModuleType, progress: Progress,
             min_group_size: int) -> AnalysisOutcome:
    """Per column: count (non-null), nulls, mean, std (ddof=1), min, quartiles, max (min and max: the means of
    the `min_group_size` most extreme values).

    Each column keeps all its own non-null rows (no listwise deletion across columns). A column with
    fewer than `min_group_size` values reports only its counts and is listed in `columns_suppressed`.
    """
    stats: dict[str, Any] = {}
    suppressed: list[str] = []
    for i, column in enumerate(params.columns):
        x = xp.asarray(host_column(table, column, np.float64))
        x = x[xp.isfinite(x)]
        n = int(x.size)
        entry: dict[str, Any] = {"count": n, "nulls": table.num_rows - n}
        if 0 < n < min_group_size:
            suppressed.append(column)
        elif n:
            q = xp.quantile(x, xp.asarray([0.25, 0.5, 0.75]))
            low, high = _extremes(xp, x, min_group_size)
            entry.update(mean=xp.mean(x), std=xp.std(x, ddof=1) if n > 1 else None,
                         min=low, q25=q[0], median=q[1], q75=q[2], max=high)
        stats[column] = entry
        progress((i + 1) / len(params.columns))
    return AnalysisOutcome(jsonable({"backend": backend_name(xp), "rows": table.num_rows, "columns": stats,
                                     "min_group_size": min_group_size, "columns_suppressed": suppressed}))


AggregateFunction = Literal["count", "sum", "mean", "min", "max", "std"]


class AggregateParams(AnalysisParams):
    group_by: list[str] = Field(min_length=1, max_length=4)
    aggregates: dict[str, list[AggregateFunction]] = Field(min_length=1, max_length=64)

    def check(self, schema: Schema, n_rows: int, min_group_size: int) -> None:
        require_distinct(self.group_by, "group_by")
        require_columns(schema, self.group_by, "group_by")
        for column in self.group_by:
            kind = schema[column].lower()
            if is_numeric(kind) and kind not in ("bool", "boolean") and "int" not in kind:
                raise JobRefused(f"group_by column {column!r} is continuous ({kind}): its groups would be single "
                                 f"rows, and groups under {min_group_size} rows are suppressed; group by a "
                                 "categorical column (str, bool or int codes), or use histogram for its "
                                 "distribution")
        require_numeric(schema, self.aggregates, "aggregated")
        for column, functions in self.aggregates.items():
            if not functions:
                raise JobRefused(f"aggregates[{column!r}] is empty; list at least one of "
                                 "count, sum, mean, min, max, std")


def _group_codes(table: pa.Table, group_by: list[str]) -> tuple[np.ndarray, list[list[Any]]]:
    """Per row, the index of its group (groups sorted by key codes), and the key values per group.

    Null keys form a group of their own (key value None).
    """
    codes, dictionaries = [], []
    for column in group_by:
        encoded = table.column(column).combine_chunks().dictionary_encode(null_encoding="encode")
        codes.append(np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64))
        dictionaries.append(encoded.dictionary)
    unique, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    if unique.shape[0] > MAX_GROUPS:
        raise AnalysisFailed(f"grouping by {', '.join(group_by)} gives {unique.shape[0]} groups, more than "
                             f"{MAX_GROUPS}; group by fewer or coarser columns")
    keys = [dictionaries[j].take(pa.array(unique[:, j])).to_pylist() for j in range(len(group_by))]
    return inverse.reshape(-1), [list(row) for row in zip(*keys, strict=True)]


def _grouped(xp: ModuleType, x: Any, groups: Any, n_groups: int, functions: Sequence[str],
             k: int = 1) -> dict[str, Any]:
    """Per group: the `functions` of its values; min and max are the means of its k most extreme values."""
    valid = xp.isfinite(x)
    x, groups = x[valid], groups[valid]
    count = xp.bincount(groups, minlength=n_groups)
    total = xp.bincount(groups, weights=x, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    out: dict[str, Any] = {}
    for function in functions:
        if function == "count":
            out[function] = count
        elif function == "sum":
            out[function] = total
        elif function == "mean":
            out[function] = mean
        elif function == "std":
            squares = xp.bincount(groups, weights=(x - mean[groups]) ** 2, minlength=n_groups)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[function] = xp.where(count > 1, xp.sqrt(squares / xp.maximum(count - 1, 1)), xp.nan)
    if {"min", "max"} & set(functions):
        order = xp.lexsort(xp.stack([x, groups.astype(x.dtype)]))
        ordered = x[order]
        starts = xp.cumsum(count) - count
        present = count > 0
        safe_starts = xp.minimum(starts, max(int(x.size) - 1, 0))
        if x.size:
            taken = xp.maximum(xp.minimum(count, k), 1)  # a group of fewer than k values is suppressed later
            step = xp.arange(k)[None, :]
            used = step < taken[:, None]  # each group's k (or all its) most extreme values, as a gather
            first = xp.minimum(safe_starts[:, None] + step, x.size - 1)
            final = xp.clip(starts[:, None] + count[:, None] - 1 - step, 0, x.size - 1)
            low = xp.where(used, ordered[first] / taken[:, None], 0.0).sum(axis=1)
            high = xp.where(used, ordered[final] / taken[:, None], 0.0).sum(axis=1)
            out["min"] = xp.where(present, low, xp.nan)
            out["max"] = xp.where(present, high, xp.nan)
        else:
            out["min"] = out["max"] = xp.full(n_groups, xp.nan)
    return {f: out[f] for f in functions}


def aggregate(params: AggregateParams, table: pa.Table, xp: ModuleType,
              progress: Progress, min_group_size: int) -> AnalysisOutcome:
    """Grouped count/sum/mean/min/max/std (ddof=1) per aggregated column, nulls skipped per column.

    Groups come sorted by key (nulls first per key column); a group with no value for a column
    reports count 0 and None for the other functions. Groups of fewer than `min_group_size` rows
    are left out (counted in `groups_suppressed`, `rows_suppressed`); where a shown group has fewer
    than `min_group_size` values of a column, that column's statistics other than count are None.
    AnalysisFailed when every group is that small.
    """
    inverse, keys = _group_codes(table, params.group_by)
    sizes = np.bincount(inverse, minlength=len(keys))
    shown = sizes >= min_group_size
    if not shown.any():
        raise AnalysisFailed(f"every one of the {len(keys)} groups of {', '.join(params.group_by)} has fewer than "
                             f"{min_group_size} rows, so all would be suppressed; group by fewer or coarser columns")
    groups = xp.asarray(inverse)
    shown_index = np.flatnonzero(shown)
    columns: dict[str, Any] = {}
    for i, (column, functions) in enumerate(params.aggregates.items()):
        x = xp.asarray(host_column(table, column, np.float64))
        values = {f: to_numpy(v)[shown_index] for f, v in _grouped(xp, x, groups, len(keys),
                                                                     [*functions, "count"], min_group_size).items()}
        few = values["count"] < min_group_size
        columns[column] = {f: values[f] if f == "count" else np.where(few, np.nan, values[f]) for f in functions}
        progress((i + 1) / len(params.aggregates))
    return AnalysisOutcome(jsonable({"backend": backend_name(xp), "group_by": params.group_by,
                                     "keys": [keys[g] for g in shown_index], "aggregates": columns,
                                     "min_group_size": min_group_size,
                                     "groups_suppressed": int((~shown).sum()),
                                     "rows_suppressed": int(sizes[~shown].sum())}))


class HistogramParams(AnalysisParams):
    column: str
    bins: StrictInt | list[float] = 30
    range: tuple[float, float] | None = None

    @field_validator("bins")
    @classmethod
    def _bins_make_sense(cls, bins: int | list[float]) -> int | list[float]:
        if isinstance(bins, int):
            if not 1 <= bins <= 10_000:
                raise ValueError(f"bins={bins} is out of range; use a count from 1 to 10000 or a list of "
                                 "edges")
        else:
            increasing = all(b > a for a, b in itertools.pairwise(bins))
            if len(bins) < 2 or not all(np.isfinite(bins)) or not increasing:
                raise ValueError("bin edges must be at least 2 finite, strictly increasing numbers")
            if len(bins) > 10_001:
                raise ValueError("at most 10001 bin edges; use fewer bins")
            if max(abs(bins[0]), abs(bins[-1])) > MAX_HISTOGRAM_MAGNITUDE:
                raise ValueError(f"bin edges must lie within +-{MAX_HISTOGRAM_MAGNITUDE:.0e}; give edges that "
                                 "span the column's values")
        return bins

    @model_validator(mode="after")
    def _range_makes_sense(self) -> HistogramParams:
        if self.range is not None:
            lo, hi = self.range
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ValueError(f"range {list(self.range)} must be two finite numbers with low < high")
            if isinstance(self.bins, list):
                raise ValueError("give either bin edges or a range with a bin count, not both")
            if max(abs(lo), abs(hi)) > MAX_HISTOGRAM_MAGNITUDE:
                raise ValueError(f"range {list(self.range)} must lie within +-{MAX_HISTOGRAM_MAGNITUDE:.0e}; give "
                                 "a range that spans the column's values")
            if not bool((np.diff(np.linspace(lo, hi, self.bins + 1)) > 0).all()):
                raise ValueError(f"range {list(self.range)} is too narrow for {self.bins} distinct bins at "
                                 "float64 precision; widen the range or use fewer bins")
        return self

    def check(self, schema: Schema, n_rows: int, min_group_size: int) -> None:
        require_numeric(schema, [self.column], "histogram")


def histogram(params: HistogramParams, table: pa.Table, xp: ModuleType,
              progress: Progress, min_group_size: int) -> AnalysisOutcome:
    """Counts per bin, as numpy.histogram defines them (last bin closed); values outside the
    range/edges are counted in `outside`, nulls in `nulls`. Without a range, from the mean of the
    `min_group_size` smallest values to that of the largest, with the values beyond counted in the first
    and last bins (with min_group_size 1: min..max of the data, as numpy's).

    A bin holding 1 to min_group_size - 1 values reports None (`bins_suppressed`, `rows_suppressed`):
    counts + outside + nulls + rows_suppressed = rows.
    """
    x = xp.asarray(host_column(table, params.column, np.float64))
    x = x[xp.isfinite(x)]
    nulls = table.num_rows - int(x.size)
    if x.size == 0 and params.range is None and isinstance(params.bins, int):
        raise AnalysisFailed(f"column {params.column!r} has no values; pick a column with data or give "
                             "a range")
    bins = xp.asarray(params.bins, dtype=xp.float64) if isinstance(params.bins, list) else params.bins
    span = params.range
    if span is None and isinstance(params.bins, int) and x.size >= min_group_size:
        low, high = (float(v) for v in _extremes(xp, x, min_group_size))  # no row's own value as an edge
        if high > low:
            span = (low, high)
            x = xp.clip(x, low, high)  # bottom- and top-coded into the first and last bins
    try:
        with np.errstate(all="ignore"):  # overflowing spans raise below, as the job's fault
            counts, edges = xp.histogram(x, bins=bins, range=span)
    except (ValueError, FloatingPointError, OverflowError) as exc:
        raise AnalysisFailed(f"column {params.column!r} cannot be binned as asked ({exc}); its values span more "
                             "than float64 bins can hold: give a range or bin edges around the values of "
                             "interest") from None
    counts_h, edges_h = to_numpy(counts), to_numpy(edges)
    few = (counts_h > 0) & (counts_h < min_group_size)
    shown = np.where(few, 0, counts_h)
    progress(1.0)
    result = {"backend": backend_name(xp), "column": params.column, "edges": edges_h,
              "counts": [None if hidden else int(c) for c, hidden in zip(counts_h, few, strict=True)],
              "nulls": nulls, "outside": int(x.size) - int(counts_h.sum()),
              "min_group_size": min_group_size, "bins_suppressed": int(few.sum()),
              "rows_suppressed": int(counts_h[few].sum())}
    return AnalysisOutcome(jsonable(result), histogram_png(edges_h, shown, params.column))


class CorrelationParams(AnalysisParams):
    columns: list[str] = Field(min_length=2, max_length=256)
    method: Literal["pearson", "spearman"] = "pearson"

    def check(self, schema: Schema, n_rows: int, min_group_size: int) -> None:
        require_distinct(self.columns, "correlation")
        require_numeric(schema, self.columns, "correlation")
        require_rows(n_rows, max(2, min_group_size), "a correlation")


def average_ranks(xp: ModuleType, x: Any) -> Any:
    """1-based ranks of a 1-D array, ties sharing their average rank (scipy.stats.rankdata 'average')."""
    order = xp.argsort(x, kind="stable")
    ordered = x[order]
    starts_run = xp.concatenate([xp.asarray([True]), ordered[1:] != ordered[:-1]])
    run = xp.cumsum(starts_run) - 1
    starts = xp.flatnonzero(starts_run)
    ends = xp.concatenate([starts[1:], xp.asarray([x.size])])
    ranks = xp.empty(x.size, dtype=xp.float64)
    ranks[order] = ((starts + ends - 1) / 2.0 + 1.0)[run]
    return ranks


def correlation(params: CorrelationParams, table: pa.Table, xp: ModuleType,
                progress: Progress, min_group_size: int) -> AnalysisOutcome:
    """Pearson or Spearman correlation matrix over the rows complete in all columns (listwise).

    A constant column has undefined correlation: its row and column are None (diagonal too).
    """
    block = numeric_block(table, params.columns, xp, min_rows=max(2, min_group_size), max_abs=MAX_SQUARABLE)
    x = block.values
    if params.method == "spearman":
        x = xp.stack([average_ranks(xp, x[:, j]) for j in range(x.shape[1])], axis=1)
    centered = x - x.mean(axis=0)
    cov = centered.T @ centered
    scale = xp.sqrt(xp.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = xp.clip(cov / xp.outer(scale, scale), -1.0, 1.0)
    corr = xp.where(xp.outer(scale, scale) > 0, corr, xp.nan)
    diagonal = xp.arange(corr.shape[0])
    corr[diagonal, diagonal] = xp.where(scale > 0, 1.0, xp.nan)
    progress(1.0)
    return AnalysisOutcome(jsonable({"backend": backend_name(xp), "method": params.method,
                                     "columns": params.columns, "rows_used": int(x.shape[0]),
                                     "rows_dropped": block.rows_dropped, "matrix": to_numpy(corr)}))
