"""Principal component analysis by eigendecomposition of the float64 covariance matrix.

Matches scikit-learn's PCA (full SVD): explained_variance uses ddof=1, components are rows with
scikit-learn's sign convention (the largest-magnitude loading of each component is positive), to
~1e-9 relative on well-separated eigenvalues; components of (near-)equal eigenvalues are not unique.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pyarrow as pa
from pydantic import Field, StrictBool, StrictInt, model_validator

from services.worker.analytics.backend import backend_name, jsonable, to_numpy
from services.worker.analytics.data import MAX_SQUARABLE, numeric_block
from services.worker.analytics.outcome import AnalysisOutcome, Progress
from services.worker.analytics.plots import pca_png, sample_rows
from services.worker.analytics.validation import (
    AnalysisParams,
    JobRefused,
    Schema,
    require_distinct,
    require_numeric,
    require_rows,
)


class PcaParams(AnalysisParams):
    columns: list[str] = Field(min_length=1, max_length=512)
    n_components: StrictInt | None = Field(default=None, ge=1)
    standardize: StrictBool = False

    @model_validator(mode="after")
    def _components_fit(self) -> PcaParams:
        if self.n_components is not None and self.n_components > len(self.columns):
            raise ValueError(f"n_components={self.n_components} exceeds the {len(self.columns)} columns; "
                             "ask for at most one component per column")
        return self

    def check(self, schema: Schema, n_rows: int, min_group_size: int) -> None:
        require_distinct(self.columns, "PCA")
        require_numeric(schema, self.columns, "PCA")
        require_rows(n_rows, max(2, min_group_size), "PCA")
        if self.n_components is not None and self.n_components > n_rows:
            raise JobRefused(f"n_components={self.n_components} exceeds the {n_rows} rows; ask for fewer")


def pca(params: PcaParams, table: pa.Table, xp: ModuleType, progress: Progress,
        min_group_size: int) -> AnalysisOutcome:
    """Components, explained variance (ddof=1) and its ratio, column means (and scales when
    `standardize`, which divides each centered column by its ddof=1 standard deviation), plus a
    scree/score plot of a 5,000-row sample."""
    block = numeric_block(table, params.columns, xp, min_rows=max(2, min_group_size), max_abs=MAX_SQUARABLE)
    x = block.values
    n, p = x.shape
    mean = x.mean(axis=0)
    x = x - mean
    scale = xp.ones(p)
    if params.standardize:
        scale = xp.sqrt((x * x).sum(axis=0) / (n - 1))
        scale = xp.where(scale > 0, scale, 1.0)
        x = x / scale
    cov = (x.T @ x) / (n - 1)
    eigenvalues, vectors = xp.linalg.eigh(cov)
    order = xp.argsort(-eigenvalues)
    eigenvalues, components = xp.maximum(eigenvalues[order], 0.0), vectors[:, order].T
    biggest = xp.argmax(xp.abs(components), axis=1)
    signs = xp.sign(components[xp.arange(p), biggest])
    components = components * xp.where(signs == 0, 1.0, signs)[:, None]
    total = float(eigenvalues.sum())
    m = params.n_components or min(n, p)
    variance = to_numpy(eigenvalues[:m])
    sample = xp.asarray(sample_rows(n, 5000))
    scores = to_numpy(x[sample] @ components[: min(m, 2)].T)
    ratio = variance / total if total > 0 else np.zeros_like(variance)
    progress(1.0)
    result = {"backend": backend_name(xp), "columns": params.columns, "n_components": m,
              "components": to_numpy(components[:m]), "explained_variance": variance,
              "explained_variance_ratio": ratio, "mean": to_numpy(mean),
              "scale": to_numpy(scale) if params.standardize else None,
              "rows_used": n, "rows_dropped": block.rows_dropped}
    return AnalysisOutcome(jsonable(result), pca_png(ratio, scores, min_group_size))
