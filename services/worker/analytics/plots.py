"""PNG plots of results, drawn with matplotlib's Agg canvas (no pyplot, no global state).

Every function takes host NumPy arrays and returns the PNG bytes, or None when the plot cannot be
drawn (extreme values matplotlib can't lay out): a plot is for people to look at, never a reason to
lose a valid result, and not part of the numbers two workers must agree on. Point clouds are drawn
as 2-D histograms with cells of fewer than `min_count` points left blank, so no plot shows where a
single row lies.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Sequence
from typing import ParamSpec

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

P = ParamSpec("P")
log = logging.getLogger("datacoop.worker")


def _best_effort(draw: Callable[P, bytes]) -> Callable[P, bytes | None]:
    @functools.wraps(draw)
    def drawn(*args: P.args, **kwargs: P.kwargs) -> bytes | None:
        try:
            return draw(*args, **kwargs)
        except Exception as exc:  # matplotlib's many ways to fail on extreme axes
            log.warning("plot %s not drawn (%s); the result goes without it", draw.__name__, exc)
            return None
    return drawn


def _density(ax: Axes, points: np.ndarray, min_count: int, bins: int = 40) -> None:
    """A 2-D histogram of `points` with the cells of fewer than `min_count` points blank."""
    counts, x_edges, y_edges = np.histogram2d(points[:, 0], points[:, 1], bins=bins)
    ax.pcolormesh(x_edges, y_edges, np.ma.masked_less(counts, max(min_count, 1)).T, cmap="viridis")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


@_best_effort
def histogram_png(edges: np.ndarray, counts: np.ndarray, column: str) -> bytes:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True)
    ax.set_xlabel(column)
    ax.set_ylabel("count")
    ax.set_title(f"Histogram of {column}")
    return _png(fig)


@_best_effort
def scatter_png(points: np.ndarray, axes: Sequence[str], title: str, min_count: int,
                centers: np.ndarray | None = None) -> bytes:
    """Density of 2-D `points` (a sample; cells under `min_count` blank), optional centers as crosses."""
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    _density(ax, points, min_count)
    if centers is not None:
        ax.scatter(centers[:, 0], centers[:, 1], marker="x", s=80, c="black")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title)
    return _png(fig)


@_best_effort
def pca_png(ratio: np.ndarray, scores: np.ndarray, min_count: int) -> bytes:
    """Scree plot (explained variance ratio) beside the density of the first two component scores
    (cells under `min_count` blank), or their histogram (bins under `min_count` left out)."""
    fig = Figure(figsize=(10, 4))
    scree, scatter = fig.subplots(1, 2)
    steps = np.arange(1, ratio.size + 1)
    scree.bar(steps, ratio)
    scree.plot(steps, np.cumsum(ratio), marker="o", color="black")
    scree.set_xlabel("component")
    scree.set_ylabel("explained variance ratio")
    if scores.shape[1] >= 2:
        _density(scatter, scores[:, :2], min_count)
        scatter.set_xlabel("PC1")
        scatter.set_ylabel("PC2")
    else:
        counts, edges = np.histogram(scores[:, 0], bins=50)
        scatter.stairs(np.where(counts < min_count, 0, counts), edges, fill=True)
        scatter.set_xlabel("PC1")
    return _png(fig)


def sample_rows(n_rows: int, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `limit` rows, the same for the same inputs (for plots only)."""
    if n_rows <= limit:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=limit, replace=False))
