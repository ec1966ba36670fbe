"""Information-loss metrics, as ARX defines them.

- **Loss** (ARX's granularity / "Loss"): for QI i, a cell's share is the fraction of the hierarchy's
  domain (leaves) that its generalized value covers; a suppressed cell counts 1. r_i is the mean
  share over all input rows, m_i = 1/|domain_i| the smallest possible share, and
  ``loss = (mean_i r_i - mean_i m_i) / (1 - mean_i m_i)`` in [0, 1]; utility = 1 - loss.
- **Discernibility** (DM*): sum over classes of size², plus n for every suppressed row.
- **Non-uniform entropy**: sum over rows and QIs of -log2(P(original value | generalized value)),
  with probabilities from the input's frequencies; a suppressed cell's generalized value is ``*``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.anonymizer.hierarchy import FloatArray, IntArray


def granularity_loss(share_sums: Sequence[float] | FloatArray, n_rows: int, domain_sizes: Sequence[int]) -> float:
    """ARX Loss from per-QI sums of shares over all input rows (suppressed rows count 1)."""
    if n_rows == 0 or not len(domain_sizes):
        return 0.0
    r = float(np.mean(np.asarray(share_sums, dtype=np.float64) / n_rows))
    m = float(np.mean(1.0 / np.asarray(domain_sizes, dtype=np.float64)))
    return 0.0 if m >= 1.0 else max(0.0, (r - m) / (1.0 - m))


def discernibility(class_sizes: IntArray, suppressed_rows: int, n_rows: int) -> int:
    """DM*: sum of squared sizes of published classes plus n per suppressed row."""
    return int(np.sum(class_sizes.astype(np.int64) ** 2)) + suppressed_rows * n_rows


def non_uniform_entropy(leaf_rows: FloatArray, covered_rows: FloatArray, weights: IntArray) -> float:
    """Sum of ``weights * -log2(leaf_rows / covered_rows)`` over tuples and QIs, in bits.

    ``leaf_rows[t, i]``: input rows with tuple t's original value of QI i; ``covered_rows[t, i]``: input
    rows whose value lies under tuple t's published value (n for a suppressed cell).
    """
    if weights.size == 0:
        return 0.0
    return float(np.sum(weights[:, None] * -np.log2(leaf_rows / covered_rows)))
