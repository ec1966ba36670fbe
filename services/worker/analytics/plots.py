"""PNG plots of results, drawn with matplotlib's Agg canvas (no pyplot, no global state).

Every function takes host NumPy arrays and returns the PNG bytes; plots are for people to look at,
so they are not part of the numbers two workers must agree on.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def histogram_png(edges: np.ndarray, counts: np.ndarray, column: str) -> bytes:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True)
    ax.set_xlabel(column)
    ax.set_ylabel("count")
    ax.set_title(f"Histogram of {column}")
    return _png(fig)


def scatter_png(points: np.ndarray, labels: np.ndarray | None, axes: Sequence[str], title: str,
                centers: np.ndarray | None = None) -> bytes:
    """Scatter of 2-D `points` (a sample), colored by `labels`, with optional centers as crosses."""
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    ax.scatter(points[:, 0], points[:, 1], c=labels, s=4, alpha=0.6,
               cmap="tab10" if labels is not None else None)
    if centers is not None:
        ax.scatter(centers[:, 0], centers[:, 1], marker="x", s=80, c="black")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title)
    return _png(fig)


def pca_png(ratio: np.ndarray, scores: np.ndarray) -> bytes:
    """Scree plot (explained variance ratio) beside a scatter of the first two component scores."""
    fig = Figure(figsize=(10, 4))
    scree, scatter = fig.subplots(1, 2)
    steps = np.arange(1, ratio.size + 1)
    scree.bar(steps, ratio)
    scree.plot(steps, np.cumsum(ratio), marker="o", color="black")
    scree.set_xlabel("component")
    scree.set_ylabel("explained variance ratio")
    if scores.shape[1] >= 2:
        scatter.scatter(scores[:, 0], scores[:, 1], s=4, alpha=0.6)
        scatter.set_xlabel("PC1")
        scatter.set_ylabel("PC2")
    else:
        scatter.hist(scores[:, 0], bins=50)
        scatter.set_xlabel("PC1")
    return _png(fig)


def sample_rows(n_rows: int, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `limit` rows, the same for the same inputs (for plots only)."""
    if n_rows <= limit:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=limit, replace=False))
