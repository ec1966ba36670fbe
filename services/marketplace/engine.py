"""Answering queries with differential privacy, over versions loaded into DuckDB.

Mechanism: Laplace (pure epsilon-DP, so a budget composes by adding epsilons), the noise drawn with
`services.anonymizer.dp.noise`. Neighbouring tables differ by one member's records. A member has at
most `m` rows in a version (the largest of its `contributor_weights`), so:
- a count cell moves by at most m: count sensitivity m;
- values are clamped to [lower, upper] before summing: a sum cell moves by at most
  m * max(|lower|, |upper|);
- cells (group-by values x histogram bins) are disjoint and a row lies in one, so releasing every
  cell costs what one cell costs (parallel composition);
- mean = noisy sum / noisy count, each with half the epsilon (sequential composition), clamped to
  the bounds (post-processing, free).
The set of released cells does not depend on the filtered rows: it is the product of each group-by
column's values over the whole published version (the cells of a k-anonymous release, public to its
buyers) and every histogram bin; an empty cell is released with noise like any other.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from services.anonymizer.dp import noise
from services.marketplace.index import VersionIndex, build_index
from services.marketplace.query import MAX_CELLS, Query, QueryInvalid, plan, validate


@dataclass(frozen=True)
class LoadedVersion:
    table: str
    columns: dict[str, str]
    rows: int
    max_rows_per_member: int
    index: VersionIndex


@dataclass(frozen=True)
class Answer:
    """A released answer: per cell the noisy figures, and the Laplace scale of each figure's noise."""

    cells: list[dict[str, Any]]
    count_scale: float | None
    sum_scale: float | None
    sensitivity: dict[str, float]

    def noise_view(self) -> dict[str, Any]:
        """Laplace scale b (the noise's standard deviation is b * sqrt(2))."""
        view: dict[str, Any] = {"mechanism": "laplace", "sensitivity": self.sensitivity}
        if self.count_scale is not None:
            view["count_scale"] = self.count_scale
            view["count_std"] = self.count_scale * math.sqrt(2)
        if self.sum_scale is not None:
            view["sum_scale"] = self.sum_scale
            view["sum_std"] = self.sum_scale * math.sqrt(2)
        return view


class QueryEngine:
    """One in-memory DuckDB holding the versions queried so far (loaded once from their Parquet).

    Queries run on their own cursor, so they may run in worker threads beside each other.
    """

    def __init__(self, memory_limit: str = "2GB") -> None:
        self._db = duckdb.connect(":memory:", config={"memory_limit": memory_limit})
        self._loaded: dict[tuple[str, int], LoadedVersion] = {}
        self._domains: dict[tuple[str, str], list[Any]] = {}
        self._lock = threading.Lock()

    def load(self, dataset_id: str, version: int, path: Path, max_rows_per_member: int) -> LoadedVersion:
        key = (dataset_id, version)
        with self._lock:
            found = self._loaded.get(key)
            if found is not None:
                return found
            table = "v_" + hashlib.sha256(f"{dataset_id}/{version}".encode()).hexdigest()[:16]
            cur = self._db.cursor()
            cur.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM read_parquet(?)", [str(path)])
            columns = {name: str(kind) for name, kind, *_ in cur.execute(f"DESCRIBE {table}").fetchall()}
            row = cur.execute(f"SELECT count(*) FROM {table}").fetchone()
            loaded = LoadedVersion(table, columns, int(row[0]) if row else 0, max(max_rows_per_member, 1),
                                   build_index(cur, table, columns))
            self._loaded[key] = loaded
            return loaded

    def domain(self, version: LoadedVersion, column: str) -> list[Any]:
        """The values of a group-by column over the whole version (sorted, NULL last)."""
        key = (version.table, column)
        values = self._domains.get(key)
        if values is None:
            cur = self._db.cursor()
            rows = cur.execute(f'SELECT DISTINCT "{column}" FROM {version.table} ORDER BY 1 NULLS LAST').fetchall()
            values = self._domains[key] = [r[0] for r in rows]
        return values

    def true_cells(self, version: LoadedVersion, query: Query, use_index: bool = True
                   ) -> tuple[list[tuple[Any, ...]], np.ndarray, np.ndarray | None]:
        """Every released cell and its exact count (and clamped sum): what noise is added to."""
        validate(query, version.columns)
        domains = [self.domain(version, c) for c in query.group_by]
        if query.aggregate == "histogram":
            domains.append(list(range(query.bins)))
        cells = list(itertools.product(*domains)) if domains else [()]
        if len(cells) > MAX_CELLS:
            raise QueryInvalid(f"the query has {len(cells)} cells; at most {MAX_CELLS}: group by fewer or "
                               "coarser columns, or use fewer bins")
        if use_index and version.index.can_answer(query):
            return (cells, *self._from_index(version.index, query, cells))
        p = plan(query, version.columns, version.table)
        rows = self._db.cursor().execute(p.sql, p.params).fetchall()
        position = {c: i for i, c in enumerate(cells)}
        counts = np.zeros(len(cells))
        sums = np.zeros(len(cells)) if query.aggregate in ("sum", "mean") else None
        width = len(domains)
        for r in rows:
            i = position[tuple(r[:width])]
            counts[i] = r[-1]
            if sums is not None:
                sums[i] = r[width] or 0.0
        return cells, counts, sums

    @staticmethod
    def _from_index(index: VersionIndex, query: Query, cells: list[tuple[Any, ...]]
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Sum the index's cells over the dimensions not grouped by, then read them in `cells` order."""
        counts, sums = index.cell_figures(query)
        kept = [index.dims.index(c) for c in query.group_by]
        dropped = tuple(i for i in range(len(index.dims)) if i not in kept)
        order = np.argsort(np.argsort(kept)) if kept else np.array([], dtype=int)

        def collapse(grid: np.ndarray) -> np.ndarray:
            reduced = grid.sum(axis=dropped) if dropped else grid
            return np.transpose(reduced, order) if kept else reduced

        positions = [{v: i for i, v in enumerate(index.domains[d])} for d in kept]
        at = tuple(np.array([positions[j][cell[j]] for cell in cells], dtype=np.int64) for j in range(len(kept)))
        c = collapse(counts)
        s = collapse(sums) if sums is not None else None
        if not kept:
            return np.array([float(c)]), (np.array([float(s)]) if s is not None else None)
        return c[at], (s[at] if s is not None else None)

    def answer(self, version: LoadedVersion, query: Query, rng: np.random.Generator) -> Answer:
        cells, counts, sums = self.true_cells(version, query)
        m = float(version.max_rows_per_member)
        eps = query.epsilon
        count_scale = sum_scale = None
        sensitivity: dict[str, float] = {}
        noisy_counts = noisy_sums = None
        if query.aggregate in ("count", "histogram", "mean"):
            share = eps / 2 if query.aggregate == "mean" else eps
            sensitivity["count"] = m
            count_scale = m / share
            noisy_counts = counts + noise("laplace", share, m, len(cells), rng)
        if sums is not None:
            assert query.bounds is not None
            share = eps / 2 if query.aggregate == "mean" else eps
            s = m * (max(abs(query.bounds[0]), abs(query.bounds[1])) or 1.0)
            sensitivity["sum"] = s
            sum_scale = s / share
            noisy_sums = sums + noise("laplace", share, s, len(cells), rng)
        group_by = list(query.group_by)
        out = []
        for i, cell in enumerate(cells):
            entry: dict[str, Any] = {}
            if group_by:
                entry["group"] = dict(zip(group_by, cell[:len(group_by)], strict=True))
            if query.aggregate == "histogram":
                assert query.bounds is not None
                lower, upper = query.bounds
                b = int(cell[-1])
                width = (upper - lower) / query.bins
                entry["bin"] = [lower + b * width, lower + (b + 1) * width]
            if noisy_counts is not None and query.aggregate != "mean":
                entry["count"] = float(noisy_counts[i])
            if noisy_sums is not None and query.aggregate == "sum":
                entry["sum"] = float(noisy_sums[i])
            if query.aggregate == "mean":
                assert noisy_counts is not None and noisy_sums is not None and query.bounds is not None
                n = float(noisy_counts[i])
                entry["mean"] = float(np.clip(noisy_sums[i] / n, *query.bounds)) if n >= 1 else None
            out.append(entry)
        return Answer(out, count_scale, sum_scale, sensitivity)
