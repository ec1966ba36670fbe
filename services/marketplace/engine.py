"""Answering queries with differential privacy, over versions loaded into DuckDB.

Mechanism: Laplace, the noise drawn with `services.anonymizer.dp.noise`. Neighbouring tables differ
by one member's records. A member has at most `m` rows in a version: the bound its definition sets
(`privacy.max_rows_per_member`, public and independent of the data; the larger of it and the version's
largest `contributor_weights` entry, which never exceeds it, for versions published before bounds), so:
- cells (group-by values x histogram bins) are disjoint and a row lies in one, so one member moves
  the vector of cell counts by at most m in L1 norm, however its rows spread: count sensitivity m;
- values are clamped to [lower, upper] before summing: the sums move by at most
  m * max(|lower|, |upper|) in L1 norm;
- mean = noisy sum / noisy count, each with half the epsilon (sequential composition), clamped to
  the bounds (post-processing, free).
Without group-by the cells (one, or the histogram's bins) are fixed by the query alone: every one is
released, and the answer is pure epsilon-DP.

With group-by, which group values exist is itself data: a group only one member populates must not
show. So the candidates are the groups present in the whole version, and a cell is released only
when its noisy count exceeds a threshold (partition selection; a sum query spends half its epsilon
on the counts it needs for that). One member can make at most K = m * bins candidate cells exist on
its own (bins = 1 unless a histogram), each of count at most m, so the chance that any of them shows
is at most (K / 2) * exp(-(threshold - m) / b) for count noise scale b. With

    threshold = m + b * (epsilon + ln(K / (2 * delta)))

that chance is at most delta * exp(-epsilon), and the answer is (epsilon, delta)-DP (the cells both
neighbours have are epsilon-DP as before; the threshold is post-processing of their noisy counts).
Nothing else about the candidates is told: a suppressed cell is simply absent.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from services.anonymizer.dp import noise
from services.marketplace.index import VersionIndex, build_index
from services.marketplace.query import MAX_CELLS, Query, QueryInvalid, plan, validate

DEFAULT_DELTA = 1e-6


MAX_NOISE_SCALE = 1e200  # a Laplace scale beyond this answers nothing (and sums near it overflow doubles)


def _check_scales(query: Query, m: float, share: float) -> None:
    """QueryInvalid unless the sensitivity and noise scales of `query` are finite and below MAX_NOISE_SCALE:
    absurd bounds would spend budget on an answer of nulls or infinities."""
    scales = {"count": m / share}
    if query.bounds is not None and query.aggregate in ("sum", "mean"):
        lower, upper = query.bounds
        scales["sum"] = m * (max(abs(float(lower)), abs(float(upper))) or 1.0) / share  # inf on overflow
    for what, scale in scales.items():
        if not math.isfinite(scale) or scale > MAX_NOISE_SCALE:
            raise QueryInvalid(f"bounds {list(query.bounds or ())} with epsilon {query.epsilon_charged} give a {what} "
                               f"noise scale of {scale:.3g} (at most {MAX_NOISE_SCALE:.0e}): the answer would be "
                               "meaningless; narrow the bounds to the range the column's values take, nothing was "
                               "spent")


def selection_threshold(max_rows_per_member: float, count_scale: float, epsilon: float, delta: float,
                        cells_per_group: int = 1) -> float:
    """The noisy count a grouped cell must exceed to be released (see the module's docstring)."""
    if not 0 < delta < 1:
        raise QueryInvalid(f"delta={delta} must be in (0, 1)")
    m = max_rows_per_member
    candidates = m * cells_per_group
    return m + count_scale * (epsilon + math.log(candidates / (2 * delta)))


@dataclass(frozen=True)
class LoadedVersion:
    table: str
    columns: dict[str, str]
    rows: int
    max_rows_per_member: int
    index: VersionIndex
    groupable: tuple[str, ...] = ()  # the columns a query may group by (query.groupable_columns)


@dataclass(frozen=True)
class Answer:
    """A released answer: per cell the noisy figures, and the Laplace scale of each figure's noise."""

    cells: list[dict[str, Any]]
    count_scale: float | None
    sum_scale: float | None
    sensitivity: dict[str, float]
    threshold: float | None = None
    delta: float | None = None

    def noise_view(self) -> dict[str, Any]:
        """Laplace scale b (the noise's standard deviation is b * sqrt(2))."""
        view: dict[str, Any] = {"mechanism": "laplace", "sensitivity": self.sensitivity}
        if self.count_scale is not None:
            view["count_scale"] = self.count_scale
            view["count_std"] = self.count_scale * math.sqrt(2)
        if self.sum_scale is not None:
            view["sum_scale"] = self.sum_scale
            view["sum_std"] = self.sum_scale * math.sqrt(2)
        if self.threshold is not None:
            view["partition_selection"] = {
                "threshold": self.threshold, "delta": self.delta,
                "rule": "a group-by cell is released only when its noisy count exceeds the threshold; an absent "
                        "cell may be empty or small"}
        return view


class QueryEngine:
    """One in-memory DuckDB holding the versions queried so far (loaded once from their Parquet).

    Queries run on their own cursor, so they may run in worker threads beside each other.
    """

    def __init__(self, memory_limit: str = "2GB") -> None:
        self._db = duckdb.connect(":memory:", config={"memory_limit": memory_limit})
        self._loaded: dict[tuple[str, int], LoadedVersion] = {}
        self._groups: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = {}
        self._lock = threading.Lock()

    def load(self, dataset_id: str, version: int, path: Path, max_rows_per_member: int, *,
             groupable: Iterable[str]) -> LoadedVersion:
        """Load the version once; `groupable` are the columns queries may group by (none: no group-by)."""
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
                                   build_index(cur, table, columns), tuple(groupable))
            self._loaded[key] = loaded
            return loaded

    def groups(self, version: LoadedVersion, group_by: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """The combinations of the group-by columns present in the whole version (sorted, NULL last): the
        candidates of partition selection. Only call after validate() has checked the column names."""
        key = (version.table, group_by)
        found = self._groups.get(key)
        if found is None:
            cols = ", ".join('"' + c.replace('"', '""') + '"' for c in group_by)
            order = ", ".join(f"{i + 1} NULLS LAST" for i in range(len(group_by)))
            rows = self._db.cursor().execute(f"SELECT DISTINCT {cols} FROM {version.table} ORDER BY {order}").fetchall()
            found = self._groups[key] = [tuple(r) for r in rows]
        return found

    def true_cells(self, version: LoadedVersion, query: Query, use_index: bool = True
                   ) -> tuple[list[tuple[Any, ...]], np.ndarray, np.ndarray | None]:
        """Every candidate cell and its exact count (and clamped sum): what noise is added to."""
        validate(query, version.columns, version.groupable)
        groups = self.groups(version, tuple(query.group_by)) if query.group_by else [()]
        bins = [(b,) for b in range(query.bins)] if query.aggregate == "histogram" else [()]
        if len(groups) * len(bins) > MAX_CELLS:  # the count is data: never told
            raise QueryInvalid(f"the query has more than {MAX_CELLS} candidate cells: group by fewer or coarser "
                               "columns, or use fewer bins")
        cells = [g + b for g, b in itertools.product(groups, bins)]
        width = len(query.group_by) + (1 if query.aggregate == "histogram" else 0)
        if use_index and version.index.can_answer(query):
            return (cells, *self._from_index(version.index, query, cells))
        p = plan(query, version.columns, version.table)
        rows = self._db.cursor().execute(p.sql, p.params).fetchall()
        position = {c: i for i, c in enumerate(cells)}
        counts = np.zeros(len(cells))
        sums = np.zeros(len(cells)) if query.aggregate in ("sum", "mean") else None
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

    def answer(self, version: LoadedVersion, query: Query, rng: np.random.Generator,
               delta: float = DEFAULT_DELTA) -> Answer:
        """The noisy answer at the epsilon the query is charged (`query.epsilon_charged`: its epsilon rounded up
        to a whole micro-epsilon, never the raw float) and, with group-by, `delta` (see the module's docstring).
        Raises QueryInvalid, before touching the data, when the bounds make the noise scale useless."""
        m = float(version.max_rows_per_member)
        eps = query.epsilon_charged
        grouped = bool(query.group_by)
        share = eps / 2 if query.aggregate == "mean" or (grouped and query.aggregate == "sum") else eps
        _check_scales(query, m, share)
        cells, counts, sums = self.true_cells(version, query)
        count_scale = sum_scale = threshold = None
        sensitivity: dict[str, float] = {}
        noisy_counts = noisy_sums = None
        if query.aggregate in ("count", "histogram", "mean") or grouped:
            sensitivity["count"] = m
            count_scale = m / share
            noisy_counts = counts + noise("laplace", share, m, len(cells), rng)
        if sums is not None:
            assert query.bounds is not None
            s = m * (max(abs(query.bounds[0]), abs(query.bounds[1])) or 1.0)
            sensitivity["sum"] = s
            sum_scale = s / share
            noisy_sums = sums + noise("laplace", share, s, len(cells), rng)
        released: list[int] = list(range(len(cells)))
        if grouped:
            assert noisy_counts is not None and count_scale is not None
            per_group = query.bins if query.aggregate == "histogram" else 1
            threshold = selection_threshold(m, count_scale, eps, delta, per_group)
            released = np.flatnonzero(noisy_counts > threshold).tolist()
        group_by = list(query.group_by)
        out = []
        for i in released:
            cell = cells[i]
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
        return Answer(out, count_scale, sum_scale, sensitivity, threshold, delta if grouped else None)
