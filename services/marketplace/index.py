"""A per-version index that answers most queries without scanning the rows.

A version never changes once published, so at load time DuckDB sorts it once into this index:
- dimensions: the text/boolean columns with few values (at most MAX_VALUES each, no NULLs, at most
  MAX_CELLS combinations); a cell is one combination of their values;
- per cell, its row count; per numeric column, the non-NULL values of each cell sorted, with
  prefix sums.
A clamped sum over a cell is then exact arithmetic on two binary searches:
    sum(clamp(x, lo, hi)) = lo * #(x < lo) + sum(lo <= x <= hi) + hi * #(x > hi)
so a count, sum or mean grouped by and filtered on dimensions costs O(cells * log rows), not a scan.
Anything else (filters on other columns, histograms) is answered by DuckDB's plain aggregate; both
paths give the same true figures (tests/unit/marketplace/test_index.py), before noise.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from typing import Any

import duckdb
import numpy as np

from services.marketplace.query import Query, is_groupable, is_numeric

MAX_VALUES = 64
MAX_CELLS = 4096
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "in": lambda a, b: a in b, "not in": lambda a, b: a not in b}


@dataclass(frozen=True)
class SortedColumn:
    values: np.ndarray  # per cell, ascending; cells one after another
    prefix: np.ndarray  # prefix[i] = sum(values[:i])
    starts: np.ndarray  # cell k's values are values[starts[k]:starts[k + 1]]


@dataclass(frozen=True)
class VersionIndex:
    dims: list[str]
    domains: list[list[Any]]
    counts: np.ndarray  # rows per cell, shape = (len(d) for d in domains)
    numeric: dict[str, SortedColumn]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(d) for d in self.domains)

    def can_answer(self, query: Query) -> bool:
        if query.aggregate not in ("count", "sum", "mean") or not self.dims:
            return False
        if query.column is not None and query.column not in self.numeric:
            return False
        if any(c not in self.dims for c in query.group_by):
            return False
        for f in query.filters:
            if f.column not in self.dims:
                return False
            kind = type(self.domains[self.dims.index(f.column)][0])
            if any(type(v) is not kind for v in (f.value if isinstance(f.value, list) else [f.value])):
                return False
        return True

    def cell_figures(self, query: Query) -> tuple[np.ndarray, np.ndarray | None]:
        """Per index cell (shape `self.shape`): rows counted and (sum/mean) the clamped sum, filters applied."""
        if query.column is None:
            counts, sums = self.counts.astype(np.float64), None
        else:
            assert query.bounds is not None
            counts, sums = self._clamped(self.numeric[query.column], *query.bounds)
        mask = np.ones(self.shape, dtype=bool)
        for f in query.filters:
            axis = self.dims.index(f.column)
            keep = np.array([_OPS[f.op](v, f.value) for v in self.domains[axis]], dtype=bool)
            mask &= keep.reshape([-1 if i == axis else 1 for i in range(len(self.dims))])
        return np.where(mask, counts, 0.0), (np.where(mask, sums, 0.0) if sums is not None else None)

    def _clamped(self, col: SortedColumn, lower: float, upper: float) -> tuple[np.ndarray, np.ndarray]:
        n_cells = len(col.starts) - 1
        counts = np.empty(n_cells)
        sums = np.empty(n_cells)
        for k in range(n_cells):
            a, b = int(col.starts[k]), int(col.starts[k + 1])
            seg = col.values[a:b]
            i = a + int(np.searchsorted(seg, lower, "left"))   # values[a:i] < lower
            j = a + int(np.searchsorted(seg, upper, "right"))  # values[j:b] > upper
            counts[k] = b - a
            sums[k] = lower * (i - a) + (col.prefix[j] - col.prefix[i] if j > i else 0.0) + upper * (b - j)
        return counts.reshape(self.shape), sums.reshape(self.shape)


def build_index(cur: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str]) -> VersionIndex:
    """Sort the version into its index (DuckDB does the sorting; the arrays are numpy)."""
    candidates = []
    for col, kind in columns.items():
        if not is_groupable(kind):
            continue
        row = cur.execute(f'SELECT count(DISTINCT "{col}"), count(*) FILTER ("{col}" IS NULL) FROM {table}').fetchone()
        assert row is not None
        if 0 < row[0] <= MAX_VALUES and row[1] == 0:
            candidates.append((int(row[0]), col))
    dims: list[str] = []
    for size, col in sorted(candidates):
        if prod([size, *(len(_domain(cur, table, d)) for d in dims)]) <= MAX_CELLS:
            dims.append(col)
    domains = [_domain(cur, table, d) for d in dims]
    if not dims:
        return VersionIndex([], [], np.zeros(0), {})
    cell = _cell_sql(dims, domains)
    params = [v for d in domains for v in d]
    shape = tuple(len(d) for d in domains)
    n_cells = prod(shape)
    got = cur.execute(f"SELECT {cell} AS cell, count(*) FROM {table} GROUP BY cell", params).fetchall()
    counts = np.zeros(n_cells)
    for k, n in got:
        counts[int(k)] = n
    numeric = {}
    for col, kind in columns.items():
        if not is_numeric(kind):
            continue
        arrays = cur.execute(f'SELECT {cell} AS cell, CAST("{col}" AS DOUBLE) AS x FROM {table} '
                             f'WHERE "{col}" IS NOT NULL ORDER BY cell, x', params).fetchnumpy()
        cells = np.asarray(arrays["cell"], dtype=np.int64)
        values = np.asarray(arrays["x"], dtype=np.float64)
        numeric[col] = SortedColumn(values, np.concatenate([[0.0], np.cumsum(values)]),
                                    np.searchsorted(cells, np.arange(n_cells + 1), "left"))
    return VersionIndex(dims, domains, counts.reshape(shape), numeric)


def _domain(cur: duckdb.DuckDBPyConnection, table: str, col: str) -> list[Any]:
    return [r[0] for r in cur.execute(f'SELECT DISTINCT "{col}" FROM {table} ORDER BY 1').fetchall()]


def _cell_sql(dims: list[str], domains: list[list[Any]]) -> str:
    """The cell number of a row: mixed radix over each dimension's position in its domain."""
    terms = []
    stride = 1
    for col, dom in reversed(list(zip(dims, domains, strict=True))):
        marks = ", ".join("?" for _ in dom)
        terms.append(f'(list_position([{marks}], "{col}") - 1) * {stride}')
        stride *= len(dom)
    return " + ".join(reversed(terms))
