"""k-means: greedy k-means++ seeding and Lloyd iterations, vectorized over row chunks.

Distances are computed in float32 one chunk of rows at a time (so 1,000,000 x 16 with k = 8 needs
~70 MB beyond the data, most of it for k-means++): the Lloyd passes need only -2 x.c + ||c||^2, as
||x||^2 is the same for every center, and the inertia adds ||x||^2 back; center sums
are float32 per chunk, accumulated in float64; inertia is float32 per row, summed in float64.
Iteration and stopping rules follow scikit-learn's Lloyd: stop when no label changes or when the
summed squared center shift falls below tol x mean feature variance; with the same initial
centers both reach the same centers, and inertia agrees to ~1e-5 relative (float32 distances).
Values beyond +-1e15 are refused (their float32 squared distances would overflow), and no cluster
of fewer than `min_group_size` rows is reported (disclosure.py).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, StrictInt

from services.worker.analytics.backend import backend_name, jsonable, to_numpy
from services.worker.analytics.data import numeric_block
from services.worker.analytics.outcome import AnalysisOutcome, Progress
from services.worker.analytics.plots import sample_rows, scatter_png
from services.worker.analytics.validation import (
    AnalysisFailed,
    AnalysisParams,
    JobRefused,
    Schema,
    require_distinct,
    require_numeric,
)

# Rows per chunk x max(k, columns), bounding the distance/one-hot temporaries: small on CPU so they
# stay in cache (measured best around 2^16 on 2 cores), large on GPU so kernel launches amortize.
CHUNK_ELEMENTS_CPU = 1 << 16
CHUNK_ELEMENTS_GPU = 1 << 26
MAX_ABS = 1e15  # 256 columns of squared differences up to (2e15)^2 stay below float32's 3.4e38
MAX_K = 4096


class KMeansParams(AnalysisParams):
    columns: list[str] = Field(min_length=1, max_length=256)
    k: StrictInt
    max_iter: StrictInt = Field(default=100, ge=1, le=1000)
    tol: float = Field(default=1e-4, ge=0, allow_inf_nan=False)
    seed: StrictInt = Field(default=0, ge=0)
    init: Literal["k-means++"] | list[list[float]] = "k-means++"

    def check(self, schema: Schema, n_rows: int, min_group_size: int) -> None:
        require_distinct(self.columns, "k-means")
        require_numeric(schema, self.columns, "k-means")
        most = min(n_rows // min_group_size, MAX_K)
        if self.k < 1:
            raise JobRefused(f"k={self.k} is out of range: use 1 <= k <= {most}")
        if self.k > most:
            raise JobRefused(f"k={self.k} is out of range: use 1 <= k <= {most} (the dataset has {n_rows} rows, "
                             f"and a cluster must average at least {min_group_size} rows to be reported; "
                             f"at most {MAX_K} clusters)")
        if isinstance(self.init, list) and (len(self.init) != self.k or
                                            any(len(c) != len(self.columns) for c in self.init) or
                                            not np.isfinite(np.asarray(self.init, dtype=float)).all()):
            raise JobRefused(f"init must be {self.k} centers of {len(self.columns)} finite numbers each "
                             "(one per column), or 'k-means++'")


def _chunk_rows(xp: ModuleType, n: int, k: int, p: int) -> int:
    budget = CHUNK_ELEMENTS_CPU if backend_name(xp) == "numpy" else CHUNK_ELEMENTS_GPU
    return max(256, min(n, budget // max(k, p)))


def _sq_distances(xp: ModuleType, x: Any, x_sq: Any, points: Any) -> Any:
    """(m, n) squared distances from each of the m `points` to every row of x, clamped at 0."""
    n, p = x.shape
    rows = _chunk_rows(xp, n, points.shape[0], p)
    p_sq = (points * points).sum(axis=1)[:, None]
    out = xp.empty((points.shape[0], n), dtype=x.dtype)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        d = points @ x[start:stop].T
        d *= -2.0
        d += p_sq
        d += x_sq[start:stop]
        out[:, start:stop] = d
    return xp.maximum(out, 0.0, out=out)


def kmeans_plusplus(xp: ModuleType, x: Any, x_sq: Any, k: int, rng: np.random.Generator) -> Any:
    """Greedy k-means++ (scikit-learn's variant: 2 + log k candidates per step, keep the best).

    Random draws come from the host generator, so NumPy and CuPy pick the same rows up to ties in
    float32 distance sums.
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centers = xp.empty((k, x.shape[1]), dtype=x.dtype)
    centers[0] = x[int(rng.integers(n))]
    closest = _sq_distances(xp, x, x_sq, centers[:1])[0].astype(xp.float64)
    for c in range(1, k):
        cumulative = xp.cumsum(closest)
        targets = xp.asarray(rng.uniform(size=trials)) * cumulative[-1]
        candidates = xp.minimum(xp.searchsorted(cumulative, targets), n - 1)
        to_candidates = xp.minimum(closest[None, :], _sq_distances(xp, x, x_sq, x[candidates]))
        best = int(xp.argmin(to_candidates.sum(axis=1)))
        centers[c] = x[candidates[best]]
        closest = to_candidates[best]
    return centers


def with_ones(xp: ModuleType, x: Any) -> Any:
    """x (n, p) with a leading column of ones, column-major: the layout `lloyd` works on.

    Column-major makes both per-chunk products plain (non-transposed) BLAS calls, measured ~20%
    faster than row-major. The analysis builds this directly from the table
    (numeric_block(order="F", constant_first=True)), so it costs no extra copy there.
    """
    xa = xp.empty((x.shape[0], x.shape[1] + 1), dtype=x.dtype, order="F")
    xa[:, 0] = 1.0
    xa[:, 1:] = x
    return xa


def _lloyd_pass(xp: ModuleType, xa: Any, centers: Any, labels: Any, sq_out: Any = None) -> tuple[Any, Any]:
    """Assign every row to its nearest center (into `labels`); return per-center sums and counts;
    with `sq_out`, also write each row's squared distance to its center there (see `_sq_to_assigned`).

    `xa` is the data with a leading column of ones. The centers go in as rows (||c||^2, -2c), so one
    (k, 1 + p) @ (1 + p, rows) product per chunk yields ||c||^2 - 2 x.c (the distance less ||x||^2,
    which does not change the nearest center), and one (k, rows) @ (rows, 1 + p) product of the 0/1
    nearest-center matrix yields the counts and the sums together. The chunk buffers are reused.
    Ties (equal float32 distances to two centers, about one row in a million on continuous data) are
    found by counting, and only that chunk is redone resolving each tie to the lower center index, as
    scikit-learn does.
    """
    n, width = xa.shape
    k = centers.shape[0]
    rows = _chunk_rows(xp, n, k, width)
    c_aug = xp.empty((k, width), dtype=xa.dtype)
    c_aug[:, 0] = (centers * centers).sum(axis=1)
    c_aug[:, 1:] = centers * -2.0
    ids = xp.arange(k, dtype=xa.dtype)
    d_buf = xp.empty((k, rows), dtype=xa.dtype)
    hits_buf = xp.empty((k, rows), dtype=xa.dtype)
    labels_buf = xp.empty(rows, dtype=xa.dtype)
    totals = xp.zeros((k, width))
    centers_t = _centers_t(xp, centers, xa.dtype) if sq_out is not None else None
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        xc, d, hits = xa[start:stop], d_buf[:, : stop - start], hits_buf[:, : stop - start]
        xp.matmul(c_aug, xc.T, out=d)
        xp.equal(d, d.min(axis=0), out=hits)
        part = hits @ xc
        if float(part[:, 0].sum()) != stop - start:
            hits *= xp.cumsum(hits, axis=0) == 1  # keep each row's first nearest center only
            part = hits @ xc
        totals += part
        xp.matmul(ids, hits, out=labels_buf[: stop - start])
        labels[start:stop] = labels_buf[: stop - start]
        if centers_t is not None:
            _sq_chunk(xp, xc, centers_t, hits, sq_out[start:stop])
    return totals[:, 1:], xp.rint(totals[:, 0]).astype(xp.int64)


def _centers_t(xp: ModuleType, centers: Any, dtype: Any) -> Any:
    """(1 + p, k): a row of ones over the centers as columns, so (centers_t @ one_hot) is each row's
    own center with the leading ones column that `xa` has."""
    centers_t = xp.ones((centers.shape[1] + 1, centers.shape[0]), dtype=dtype)
    centers_t[1:] = centers.T
    return centers_t


def _sq_chunk(xp: ModuleType, xc: Any, centers_t: Any, one_hot: Any, out: Any) -> None:
    """Squared distance of each row of the chunk `xc` (rows, 1 + p) to the center `one_hot` marks,
    from differences (no cancellation), all in the (1 + p, rows) layout `xc.T` already has."""
    diff = xc.T - centers_t @ one_hot
    diff *= diff
    diff.sum(axis=0, out=out)


def _sq_to_assigned(xp: ModuleType, xa: Any, centers: Any, labels: Any) -> Any:
    """Per row, the float32 squared distance to its assigned center, from differences (no cancellation).

    The assigned centers come from a 0/1 (k, rows) matrix built from the labels and one small product,
    which keeps every array of a chunk contiguous (a gather of centers by label per row is ~2.5x slower).
    """
    n, width = xa.shape
    k = centers.shape[0]
    rows = _chunk_rows(xp, n, k, width)
    centers_t = _centers_t(xp, centers, xa.dtype)
    ids = xp.arange(k, dtype=labels.dtype)[:, None]
    one_hot_buf = xp.empty((k, rows), dtype=xa.dtype)
    out = xp.empty(n, dtype=xa.dtype)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        one_hot = one_hot_buf[:, : stop - start]
        xp.equal(ids, labels[start:stop], out=one_hot)
        _sq_chunk(xp, xa[start:stop], centers_t, one_hot, out[start:stop])
    return out


def lloyd(xp: ModuleType, xa: Any, init: Any, max_iter: int, tol: float,
          progress: Progress) -> tuple[Any, Any, float, int, bool]:
    """Lloyd iterations on `xa` = with_ones(x) from `init` (k, p).

    Returns centers (float64), labels (int32), inertia (float32 per row, summed in float64, as
    scikit-learn does for float32 data), iterations, converged. An empty cluster is moved onto the
    row farthest from its center, as scikit-learn does.
    """
    x = xa[:, 1:]
    n = x.shape[0]
    tol_abs = tol * float(xp.var(x.astype(xp.float64), axis=0).mean()) if tol else 0.0
    centers = xp.asarray(init, dtype=xp.float64)
    labels = xp.zeros(n, dtype=xp.int32)
    previous = xp.full(n, -1, dtype=xp.int32)
    strict, converged, iterations = False, False, 0
    for iterations in range(1, max_iter + 1):
        sums, counts = _lloyd_pass(xp, xa, centers, labels)
        new = sums / xp.maximum(counts, 1)[:, None]
        empty = to_numpy(xp.flatnonzero(counts == 0))
        if empty.size:
            farthest = xp.argsort(-_sq_to_assigned(xp, xa, centers, labels))[: empty.size]
            new[xp.asarray(empty)] = x[farthest].astype(xp.float64)
        progress(min(0.99, iterations / max_iter))
        if bool((labels == previous).all()):
            centers, strict, converged = new, True, True
            break
        shift = float(((new - centers) ** 2).sum())
        centers = new
        previous, labels = labels, previous
        if shift <= tol_abs:
            converged = True
            break
    if strict:  # the labels are final; the centers moved to their means
        sq = _sq_to_assigned(xp, xa, centers, labels)
    else:  # one more assignment so the labels match the final centers, with the distances on the way
        sq = xp.empty(n, dtype=xa.dtype)
        _lloyd_pass(xp, xa, centers, labels, sq_out=sq)
    inertia = float(sq.sum(dtype=xp.float64))
    return centers, labels, inertia, iterations, converged


def kmeans(params: KMeansParams, table: pa.Table, xp: ModuleType, progress: Progress,
           min_group_size: int) -> AnalysisOutcome:
    """k-means on the rows complete in `columns` (float32 distances, see module doc); returns
    centers (column units), cluster sizes, inertia, iterations and convergence, and a density plot
    of a 5,000-row sample on the first two columns. Per-row labels are not returned, nor clusters of
    fewer than `min_group_size` rows (counted in `clusters_suppressed`, `rows_suppressed`);
    AnalysisFailed when every cluster is that small."""
    block = numeric_block(table, params.columns, xp, dtype=np.float32, min_rows=max(params.k, min_group_size),
                          order="F", constant_first=True, max_abs=MAX_ABS)
    x = block.values[:, 1:]
    rng = np.random.default_rng(params.seed)
    if isinstance(params.init, list):
        init = xp.asarray(params.init, dtype=xp.float64)
    else:
        init = kmeans_plusplus(xp, x, (x * x).sum(axis=1), params.k, rng)
    fit = lloyd(xp, block.values, init, params.max_iter, params.tol, progress)
    centers, labels, inertia, iterations, converged = fit
    sizes = to_numpy(xp.bincount(labels, minlength=params.k))
    shown = sizes >= min_group_size
    if not shown.any():
        raise AnalysisFailed(f"every one of the {params.k} clusters has fewer than {min_group_size} rows, so all "
                             "would be suppressed; use a smaller k")
    centers_h = to_numpy(centers)
    sample = sample_rows(x.shape[0], 5000, params.seed)
    points = to_numpy(x[xp.asarray(sample)])
    axes = params.columns[:2] if len(params.columns) > 1 else [params.columns[0], params.columns[0]]
    if points.shape[1] == 1:
        points, centers_plot = np.repeat(points, 2, axis=1), np.repeat(centers_h, 2, axis=1)
    else:
        centers_plot = centers_h[:, :2]
    png = scatter_png(points[:, :2], axes, f"k-means, k={params.k}", min_group_size, centers_plot[shown])
    progress(1.0)
    result = {"backend": backend_name(xp), "columns": params.columns, "k": params.k, "centers": centers_h[shown],
              "sizes": sizes[shown], "inertia": inertia, "iterations": iterations, "converged": converged,
              "rows_used": int(x.shape[0]), "rows_dropped": block.rows_dropped, "min_group_size": min_group_size,
              "clusters_suppressed": int((~shown).sum()), "rows_suppressed": int(sizes[~shown].sum())}
    return AnalysisOutcome(jsonable(result), png)
