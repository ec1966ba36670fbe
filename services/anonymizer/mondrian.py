"""Multidimensional (Mondrian) local recoding: for when one generalization level per column loses too much.

Leaves of each hierarchy are put in an order where every subtree is contiguous (so a rank interval
can be read as a set of values and, when it matches one, a hierarchy label). The table starts as one
partition; a partition is cut at the (row-weighted) median of the QI whose rank interval is widest
relative to its domain, and the cut is kept only if both halves still satisfy the whole privacy model
(k, l, t) on their own. A partition no QI can cut is published as one equivalence class whose cell
for QI i is the rank interval its rows span. Every class therefore meets the model by construction;
nothing is suppressed unless the whole table fails the model (then everything is, if the limit allows).

Loss is ARX's granularity Loss with a cell's share = leaves in its interval / domain size, so figures
compare directly with the global mode's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.anonymizer.encoding import EncodedTable
from services.anonymizer.hierarchy import BoolArray, FloatArray, Hierarchy, IntArray
from services.anonymizer.privacy_checks import failing_classes
from services.anonymizer.privacy_model import PrivacyModel


def leaf_order(h: Hierarchy) -> IntArray:
    """``rank[leaf]``: position of each leaf in an order where every subtree is contiguous.

    Groups are ordered by first appearance in the hierarchy's rows, so ordered data (ages) stays ordered.
    """
    keys: list[list[int]] = []
    for level in range(h.height - 1, 0, -1):
        first: dict[str, int] = {}
        for j, label in enumerate(h.labels[level]):
            first.setdefault(label, j)
        keys.append([first[label] for label in h.labels[level]])
    keys.append(list(range(len(h.leaves))))
    order = np.lexsort(tuple(np.asarray(k) for k in reversed(keys)))
    rank = np.empty(len(h.leaves), dtype=np.int64)
    rank[order] = np.arange(len(h.leaves))
    return rank


@dataclass(frozen=True)
class Partitioning:
    """``class_ids[t]``: class of tuple t; ``low[c, i]``/``high[c, i]``: rank interval of class c on QI i;
    ``suppressed_tuples``: all True only when the whole table fails the model."""

    class_ids: IntArray
    low: IntArray
    high: IntArray
    ranks: tuple[IntArray, ...]
    suppressed_tuples: BoolArray


class MondrianError(RuntimeError):
    """The table cannot meet the model even as a single class, and suppressing it all is not allowed."""


def partition(table: EncodedTable, model: PrivacyModel) -> Partitioning:
    """Mondrian partitioning of ``table``'s tuples under ``model`` (strict median cuts, relaxed when tied)."""
    ranks = tuple(leaf_order(h) for h in table.hierarchies)
    tuple_ranks = np.stack([r[table.leaves[:, i]] for i, r in enumerate(ranks)], axis=1) \
        if ranks else np.zeros((len(table.counts), 0), dtype=np.int64)
    domain = np.asarray([len(h.leaves) for h in table.hierarchies], dtype=np.float64)
    cards = [len(v) for v in table.sensitive_values]
    n = max(table.n_rows, 1)
    reference = [np.bincount(table.sensitive_codes[:, j], weights=table.counts, minlength=c) / n
                 for j, c in enumerate(cards)]

    def acceptable(members: IntArray) -> bool:
        bad, _ = failing_classes(np.zeros(len(members), dtype=np.int64), 1, table.counts[members],
                                 table.sensitive_codes[members], cards, reference, model)
        return not bool(bad[0])

    everything = np.arange(len(table.counts))
    if len(everything) == 0 or not acceptable(everything):
        if model.max_suppressed_rows(table.n_rows) < table.n_rows:
            raise MondrianError(f"the table of {table.n_rows} rows fails {model.k_text}, l={model.l} even as one "
                                "class; lower k/l or allow suppressing everything")
        q = len(ranks)
        return Partitioning(np.zeros(len(everything), dtype=np.int64), np.zeros((1, q), np.int64),
                            np.zeros((1, q), np.int64), ranks, np.ones(len(everything), dtype=np.bool_))
    finals: list[IntArray] = []
    stack = [everything]
    while stack:
        members = stack.pop()
        cut = _cut(members, tuple_ranks, table.counts, domain, acceptable)
        if cut is None:
            finals.append(members)
        else:
            stack.extend(cut)
    class_ids = np.empty(len(everything), dtype=np.int64)
    low = np.empty((len(finals), len(ranks)), dtype=np.int64)
    high = np.empty_like(low)
    for c, members in enumerate(finals):
        class_ids[members] = c
        low[c] = tuple_ranks[members].min(axis=0)
        high[c] = tuple_ranks[members].max(axis=0)
    return Partitioning(class_ids, low, high, ranks, np.zeros(len(everything), dtype=np.bool_))


def _cut(members: IntArray, tuple_ranks: IntArray, counts: IntArray, domain: FloatArray,
         acceptable: Callable[[IntArray], bool]) -> tuple[IntArray, IntArray] | None:
    sub = tuple_ranks[members]
    widths = (sub.max(axis=0) - sub.min(axis=0)) / domain
    for i in np.argsort(-widths, kind="stable"):
        if widths[i] <= 0:
            break
        values = sub[:, i]
        order = np.argsort(values, kind="stable")
        cumulative = np.cumsum(counts[members][order])
        median = values[order][int(np.searchsorted(cumulative, cumulative[-1] / 2.0))]
        for threshold in (median, median - 1):
            left = values <= threshold
            if left.all() or not left.any():
                continue
            halves = (members[left], members[~left])
            if all(acceptable(h) for h in halves):
                return halves
    return None


def shares(p: Partitioning, domain_sizes: list[int]) -> FloatArray:
    """Per class and QI, the fraction of the domain its interval covers."""
    return (p.high - p.low + 1) / np.asarray(domain_sizes, dtype=np.float64)
