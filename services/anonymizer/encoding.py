"""Integer encoding of a table for fast, vectorized group-bys.

Rows are reduced to their distinct (quasi-identifier leaves, sensitive values) tuples with a row
count each; every search works on these tuples, so its cost depends on distinct tuples, not rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.anonymizer.hierarchy import Hierarchy, IntArray, distinct_strings


class Grouper:
    """Assigns dense group ids to rows of small-integer columns without sorting.

    Keys are packed mixed-radix; a packed key below ``max_span`` is grouped with a scratch slot array
    (every row writes its index to ``slots[key]``, then reads back one representative per key), which
    is O(rows) and cache-friendly. Larger keys fall back to ``np.unique``. One Grouper is not
    thread-safe (it reuses its scratch array); results never depend on what it grouped before.
    """

    def __init__(self, max_span: int = 1 << 22) -> None:
        self.max_span = max_span
        self._slots = np.empty(max_span, dtype=np.int32)

    def __call__(self, columns: Sequence[IntArray], cardinalities: Sequence[int]) -> tuple[IntArray, int]:
        """Dense ids 0..g-1 (equal rows, equal id; order unspecified) and the group count g."""
        n = len(columns[0]) if columns else 0
        if not columns or n == 0:
            return np.zeros(n, dtype=np.int64), (1 if n else 0)
        key = columns[0].astype(np.int64, copy=False)
        span = int(cardinalities[0])
        for col, card in zip(columns[1:], cardinalities[1:], strict=True):
            if span * int(card) > self.max_span:
                key, span = self._compress(key, span)
            key = key * int(card) + col
            span *= int(card)
        return self._compress(key, span)

    def _compress(self, key: IntArray, span: int) -> tuple[IntArray, int]:
        if span > self.max_span:
            uniq, inv = np.unique(key, return_inverse=True)
            return inv.astype(np.int64, copy=False), len(uniq)
        rows = np.arange(len(key), dtype=np.int32)
        self._slots[key] = rows
        representative = self._slots[key]
        is_first = representative == rows
        dense = np.cumsum(is_first, dtype=np.int64) - 1
        return dense[representative], int(dense[-1]) + 1


def group_ids(columns: Sequence[IntArray], cardinalities: Sequence[int]) -> tuple[IntArray, int]:
    """Dense group ids (0..g-1) of the rows of ``columns`` (codes in ``0..cardinality-1``) and the count g."""
    n = len(columns[0]) if columns else 0
    return Grouper(min(1 << 22, 8 * n + 1024))(columns, cardinalities)


@dataclass(frozen=True)
class EncodedTable:
    """A table's distinct tuples: ``leaves[t, i]`` is QI i's leaf index, ``sensitive[t, j]`` attribute j's
    code, ``counts[t]`` how many rows share the tuple; ``row_tuple[r]`` is row r's tuple."""

    quasi_identifiers: tuple[str, ...]
    hierarchies: tuple[Hierarchy, ...]
    sensitive: tuple[str, ...]
    sensitive_values: tuple[tuple[str, ...], ...]
    leaves: IntArray
    sensitive_codes: IntArray
    counts: IntArray
    row_tuple: IntArray

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum())

    @property
    def heights(self) -> tuple[int, ...]:
        return tuple(h.height for h in self.hierarchies)

    def generalized(self, node: Sequence[int]) -> list[IntArray]:
        """Per QI, each tuple's code at the node's level."""
        return [h.codes[lvl][self.leaves[:, i]] for i, (h, lvl) in enumerate(zip(self.hierarchies, node, strict=True))]

    def cardinalities(self, node: Sequence[int]) -> list[int]:
        return [len(h.level_labels[lvl]) for h, lvl in zip(self.hierarchies, node, strict=True)]


def encode(columns: Mapping[str, Sequence[object]], hierarchies: Mapping[str, Hierarchy],
           sensitive: Sequence[str] = ()) -> EncodedTable:
    """Encode ``columns`` (name -> values, all the same length) for the QIs in ``hierarchies``.

    Raises KeyError naming a missing column, HierarchyError counting (never quoting) values a hierarchy lacks.
    """
    names = tuple(hierarchies)
    for name in (*names, *sensitive):
        if name not in columns:
            raise KeyError(f"column {name!r} is not in the table (it has {sorted(columns)}); fix the definition")
    lengths = {len(columns[c]) for c in (*names, *sensitive)}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths {sorted(lengths)}; give a rectangular table")
    n = lengths.pop() if lengths else 0
    leaf_cols = [hierarchies[c].encode(columns[c], c) for c in names]
    sens_cols: list[IntArray] = []
    sens_values: list[tuple[str, ...]] = []
    for c in sensitive:
        uniq, inv = distinct_strings(columns[c])
        sens_cols.append(inv)
        sens_values.append(tuple(uniq))
    cards = [len(hierarchies[c].leaves) for c in names] + [len(v) for v in sens_values]
    all_cols = leaf_cols + sens_cols
    if n == 0:
        ids, g = np.zeros(0, dtype=np.int64), 0
    else:
        ids, g = group_ids(all_cols, cards)
    first = np.full(g, -1, dtype=np.int64)
    first[ids[::-1]] = np.arange(n - 1, -1, -1)
    stacked = np.stack(all_cols, axis=1) if all_cols else np.zeros((n, 0), dtype=np.int64)
    rep = stacked[first] if g else stacked[:0]
    if g and all_cols:  # lexicographic tuple order: generalized keys stay nearly sorted (cache locality)
        order = np.lexsort(rep.T[::-1])
        rank = np.empty(g, dtype=np.int64)
        rank[order] = np.arange(g)
        rep, ids = rep[order], rank[ids]
    q = len(names)
    return EncodedTable(
        quasi_identifiers=names, hierarchies=tuple(hierarchies[c] for c in names), sensitive=tuple(sensitive),
        sensitive_values=tuple(sens_values), leaves=np.ascontiguousarray(rep[:, :q]),
        sensitive_codes=np.ascontiguousarray(rep[:, q:]), counts=np.bincount(ids, minlength=g).astype(np.int64),
        row_tuple=ids)
