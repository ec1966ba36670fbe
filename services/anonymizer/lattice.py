"""Optimal full-domain generalization with record suppression (global recoding), in the manner of ARX's Flash.

A lattice node gives one generalization level per quasi-identifier. A node is *anonymous* if, after
suppressing every equivalence class that fails the privacy model, at most the suppression limit of
rows is gone. For k-anonymity and distinct l-diversity this is monotone: generalizing only merges
classes, and a class containing a passing class passes, so the suppressed rows can only shrink; a
node above an anonymous node is anonymous and one below a non-anonymous node is not (predictive
tagging). Entropy-l and t-closeness are monotone only without suppression (a passing class merged
with a failing one can fail: H and EMD are concave/convex in the *mixture*, not bounded by the
passing part), so with a suppression limit > 0 they get no tagging, only the bound below.

The Loss objective is *not* monotone once suppression is allowed, so the search does not stop at
the anonymity frontier. It uses a sound lower bound instead: a node's loss with no suppression
(suppression only raises a cell's share to 1; data-free and monotone) plus the least cost of the rows
it must suppress in any case (rows in classes smaller than k on some pair of its QIs; see
``loss_bounds``). Nodes are visited in increasing bound; nodes tagged non-anonymous are skipped; the
search stops when the bound exceeds the best loss found. The result is the exact optimum (ties:
fewer total levels, then lexicographic), as ``exhaustive_search`` confirms in the tests.

Dot products are written as ``(a * b).sum()`` on purpose: numpy's ``@`` goes to a threaded BLAS,
whose thread hand-off costs milliseconds per call on a busy 2-core machine.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.anonymizer.encoding import EncodedTable, Grouper
from services.anonymizer.hierarchy import BoolArray, FloatArray, IntArray
from services.anonymizer.metrics import granularity_loss
from services.anonymizer.privacy_checks import failing_classes
from services.anonymizer.privacy_model import PrivacyModel

Node = tuple[int, ...]
_CacheEntry = tuple["IntArray | None", IntArray, "IntArray | None"]  # tuple class ids, class reps, class sizes


class NoAnonymousNode(RuntimeError):
    """Not even full generalization meets the model within the suppression limit."""


@dataclass(frozen=True)
class NodeResult:
    """One lattice node checked against the data: ``loss`` is ARX Loss including suppression."""

    node: Node
    anonymous: bool
    suppressed_rows: int
    loss: float
    class_ids: IntArray | None
    failing_classes: BoolArray

    @property
    def suppressed_tuples(self) -> BoolArray:
        """Per encoded tuple: is it suppressed (its class fails the model)? Needs ``check(..., with_tuples=True)``."""
        if self.class_ids is None:
            raise ValueError("this result was checked on class sizes only; re-check with with_tuples=True")
        return self.failing_classes[self.class_ids]


@dataclass(frozen=True)
class SearchResult:
    """The optimal node and how much work found it."""

    best: NodeResult
    nodes_in_lattice: int
    nodes_checked: int


class GlobalRecoding:
    """Checks lattice nodes of one encoded table against one privacy model (no I/O; results depend
    only on the table, the model and the node)."""

    CACHE_SLOTS = 256

    def __init__(self, table: EncodedTable, model: PrivacyModel) -> None:
        self.table = table
        self.model = model
        self.max_suppressed = model.max_suppressed_rows(table.n_rows)
        self.domain_sizes = [len(h.leaves) for h in table.hierarchies]
        counts = table.counts.astype(np.float64)
        self._weights = counts
        self._codes: list[list[IntArray]] = []
        self._shares: list[list[FloatArray]] = []
        self._share_sums: list[FloatArray] = []
        for i, h in enumerate(table.hierarchies):
            leaves = table.leaves[:, i]
            codes = [h.codes[lvl][leaves] for lvl in range(h.height)]
            shares = [h.shares[lvl][c] for lvl, c in enumerate(codes)]
            self._codes.append(codes)
            self._shares.append(shares)
            self._share_sums.append(np.array([float((counts * s).sum()) for s in shares]))
        self._max_share = [np.array([float(s.max()) if s.size else 0.0 for s in h.shares]) for h in table.hierarchies]
        self._sens_cards = [len(v) for v in table.sensitive_values]
        self._group = Grouper()
        self._sizes_only = model.l == 1 and model.t is None
        self._cache: list[_CacheEntry] = []
        self._cache_nodes = np.zeros((self.CACHE_SLOTS, len(table.hierarchies)), dtype=np.int64)
        self._cache_sizes = np.zeros(self.CACHE_SLOTS, dtype=np.int64)
        self._cache_next = 0
        n = max(table.n_rows, 1)
        self._reference = [np.bincount(table.sensitive_codes[:, j], weights=counts, minlength=c) / n
                           for j, c in enumerate(self._sens_cards)]

    def all_nodes(self) -> IntArray:
        """Every node of the lattice, one row each."""
        heights = self.table.heights
        if not heights:
            return np.zeros((1, 0), dtype=np.int64)
        return np.array(list(itertools.product(*(range(h) for h in heights))), dtype=np.int64)

    def loss_bounds(self, nodes: IntArray, forced: IntArray | None = None) -> FloatArray:
        """A lower bound on each node's real loss.

        Without suppression the bound is the node's loss were nothing suppressed (monotone in the
        lattice). With it, the bound adds the least extra loss of the rows the node must suppress for
        sure: rows in classes of fewer than k rows on some *pair* of its QIs (a class on all QIs lies
        inside a class on any pair, so it is smaller still), each costing at least
        ``sum_i (1 - largest share at level_i)``.
        """
        q = nodes.shape[1]
        sums = np.stack([self._share_sums[i][nodes[:, i]] for i in range(q)], axis=1).sum(axis=1) \
            if q else np.zeros(len(nodes))
        if forced is not None and q:
            least = np.stack([1.0 - self._max_share[i][nodes[:, i]] for i in range(q)], axis=1).sum(axis=1)
            sums = sums + forced * least
        r = sums / max(q, 1) / max(self.table.n_rows, 1)
        m = float(np.mean(1.0 / np.asarray(self.domain_sizes, dtype=np.float64))) if q else 1.0
        return np.zeros(len(nodes)) if m >= 1.0 else np.maximum(0.0, (r - m) / (1.0 - m))

    def forced_suppression(self, nodes: IntArray) -> IntArray:
        """Per node, rows that must be suppressed whatever else holds: the most, over QI pairs, of rows in
        classes of fewer than k (row_k) rows when grouped on that pair at the node's levels."""
        t = self.table
        q = nodes.shape[1]
        forced = np.zeros(len(nodes), dtype=np.int64)
        for i, j in itertools.combinations(range(q), 2):
            hi, hj = t.hierarchies[i], t.hierarchies[j]
            table = np.zeros((hi.height, hj.height), dtype=np.int64)
            for a in range(hi.height):
                for b in range(hj.height):
                    ids, g = self._group([self._codes[i][a], self._codes[j][b]],
                                       [len(hi.level_labels[a]), len(hj.level_labels[b])])
                    sizes = np.bincount(ids, weights=t.counts, minlength=g)
                    table[a, b] = int(sizes[sizes < self.model.row_k].sum())
            np.maximum(forced, table[nodes[:, i], nodes[:, j]], out=forced)
        return forced

    def check(self, node: Sequence[int], with_tuples: bool = False) -> NodeResult:
        """Group the tuples at ``node``, suppress failing classes, and score it.

        Classes are rolled up from the cached check of a less general node with the fewest classes
        (ARX's snapshot idea): grouping its classes is far cheaper than grouping all tuples. With k
        alone (no l, no t) only class sizes matter, so the roll-up never touches tuples and the
        result's ``class_ids`` is None unless ``with_tuples``.
        """
        node = tuple(int(x) for x in node)
        t = self.table
        class_ids: IntArray | None
        if self._sizes_only and not with_tuples:
            class_ids = None
            reps, sizes = self._class_sizes(node)
            bad = sizes < self.model.row_k
        else:
            class_ids, reps = self._classes(node, use_cache=not self._sizes_only)
            bad, sizes = failing_classes(class_ids, len(reps), t.counts, t.sensitive_codes, self._sens_cards,
                                         self._reference, self.model)
        suppressed_rows = int(sizes[bad].sum())
        loss = self._loss(node, reps, sizes, bad, suppressed_rows)
        return NodeResult(node, suppressed_rows <= self.max_suppressed, suppressed_rows, loss, class_ids, bad)

    def _loss(self, node: Node, reps: IntArray, sizes: IntArray, bad: BoolArray, suppressed_rows: int) -> float:
        # All tuples of a class share its cells, so one representative per class gives its share;
        # sum over whichever of the kept or suppressed classes is fewer.
        n_bad = int(np.count_nonzero(bad))
        if n_bad == 0:
            share_total = sum(self._share_sums[i][lvl] for i, lvl in enumerate(node))
        elif 2 * n_bad <= len(reps):
            bad_reps = reps[bad]
            class_share = sum(self._shares[i][lvl][bad_reps] for i, lvl in enumerate(node))
            share_total = (sum(self._share_sums[i][lvl] for i, lvl in enumerate(node))
                           + suppressed_rows * len(node) - float((sizes[bad] * class_share).sum()))
        else:
            good = ~bad
            good_reps = reps[good]
            class_share = sum(self._shares[i][lvl][good_reps] for i, lvl in enumerate(node))
            share_total = suppressed_rows * len(node) + float((sizes[good] * class_share).sum())
        q = max(len(node), 1)
        return granularity_loss([share_total / q] * q, self.table.n_rows, self.domain_sizes)

    def _cards(self, node: Node) -> list[int]:
        return [len(h.level_labels[lvl]) for h, lvl in zip(self.table.hierarchies, node, strict=True)]

    def _class_sizes(self, node: Node) -> tuple[IntArray, IntArray]:
        """One representative tuple and the row count of each class at ``node`` (k-only roll-up)."""
        t = self.table
        if not node:
            return np.zeros(min(len(t.counts), 1), np.int64), np.array([t.n_rows] if len(t.counts) else [], np.int64)
        source = self._best_cached(node)
        src_reps, src_sizes = (np.arange(len(t.counts)), t.counts) if source is None else (source[1], source[2])
        rep_ids, n_classes = self._group([self._codes[i][lvl][src_reps] for i, lvl in enumerate(node)],
                                         self._cards(node))
        sizes = np.bincount(rep_ids, weights=src_sizes, minlength=n_classes).astype(np.int64)
        reps = np.empty(n_classes, dtype=np.int64)
        reps[rep_ids] = src_reps
        self._remember(node, None, reps, sizes)
        return reps, sizes

    def _classes(self, node: Node, use_cache: bool = True) -> tuple[IntArray, IntArray]:
        """Class of each tuple at ``node`` and one representative tuple per class."""
        t = self.table
        if not node:
            return np.zeros(len(t.counts), np.int64), np.zeros(min(len(t.counts), 1), np.int64)
        cards = self._cards(node)
        source = self._best_cached(node) if use_cache else None
        if source is None or source[0] is None or len(source[1]) > len(t.counts) // 2:
            class_ids, n_classes = self._group([self._codes[i][lvl] for i, lvl in enumerate(node)], cards)
        else:
            src_ids, src_reps = source[0], source[1]
            rep_ids, n_classes = self._group([self._codes[i][lvl][src_reps] for i, lvl in enumerate(node)], cards)
            class_ids = rep_ids[src_ids]
        reps = np.empty(n_classes, dtype=np.int64)
        reps[class_ids] = np.arange(len(class_ids))
        if use_cache:
            self._remember(node, class_ids, reps, None)
        return class_ids, reps

    def _best_cached(self, node: Node) -> _CacheEntry | None:
        if not self._cache:
            return None
        below = (self._cache_nodes[: len(self._cache)] <= np.asarray(node)).all(axis=1)
        if not below.any():
            return None
        sizes = np.where(below, self._cache_sizes[: len(self._cache)], np.iinfo(np.int64).max)
        return self._cache[int(np.argmin(sizes))]

    def _remember(self, node: Node, class_ids: IntArray | None, reps: IntArray, sizes: IntArray | None) -> None:
        slot = self._cache_next % self.CACHE_SLOTS
        entry = (class_ids, reps, sizes)
        if slot < len(self._cache):
            self._cache[slot] = entry
        else:
            self._cache.append(entry)
        self._cache_nodes[slot] = node
        self._cache_sizes[slot] = len(reps)
        self._cache_next += 1


def _ordered(nodes: IntArray, bounds: FloatArray) -> IntArray:
    keys = [nodes[:, i] for i in range(nodes.shape[1] - 1, -1, -1)]
    return np.lexsort((*keys, nodes.sum(axis=1), np.round(bounds, 12)))


def _better(a: NodeResult, b: NodeResult | None) -> bool:
    if b is None:
        return True
    if abs(a.loss - b.loss) > 1e-12:
        return a.loss < b.loss
    return (sum(a.node), a.node) < (sum(b.node), b.node)


def optimal_search(engine: GlobalRecoding) -> SearchResult:
    """The anonymous node of least Loss (exact), checking as few nodes as tagging and the bound allow.

    Nodes are visited in increasing loss bound. An unclassified node is classified Flash-style: a
    binary search along a path from it to the top finds the path's lowest anonymous node, and each
    check tags its whole up-set (anonymous) or down-set (not anonymous). Anonymous nodes with a bound
    below the best loss so far are then checked for their real loss.
    """
    return _Flash(engine).run()


class _Flash:
    def __init__(self, engine: GlobalRecoding) -> None:
        self.engine = engine
        self.nodes = engine.all_nodes()
        forced = engine.forced_suppression(self.nodes)
        self.bounds = engine.loss_bounds(self.nodes, forced)
        self.heights = np.asarray(engine.table.heights, dtype=np.int64)
        self.radix = np.cumprod([1, *self.heights[::-1][:-1]])[::-1] if len(self.heights) else np.zeros(0, np.int64)
        self.status = np.where(forced > engine.max_suppressed, -1, 0).astype(np.int8)
        self._at_least = [[self.nodes[:, i] >= lvl for lvl in range(h)] for i, h in enumerate(self.heights)]
        self._at_most = [[self.nodes[:, i] <= lvl for lvl in range(h)] for i, h in enumerate(self.heights)]
        self.loss = np.full(len(self.nodes), np.nan)
        self.best: NodeResult | None = None
        self.checked = 0
        m = engine.model
        self.monotone = m.suppression_limit == 0 or (m.t is None and (m.l == 1 or m.l_kind == "distinct"))

    def _index(self, node: IntArray) -> int:
        return int((node * self.radix).sum())

    def _check(self, idx: int) -> bool:
        result = self.engine.check(self.nodes[idx])
        self.checked += 1
        if not self.monotone:
            self.status[idx] = 1 if result.anonymous else -1
            if result.anonymous:
                self.loss[idx] = result.loss
                if _better(result, self.best):
                    self.best = result
            return result.anonymous
        if result.anonymous:
            if self.status[idx] != 1:  # else an anonymous predecessor already tagged the whole up-set
                self.status[self._up_set(idx)] = 1
            self.loss[idx] = result.loss
            if _better(result, self.best):
                self.best = result
        else:
            self.status[self._down_set(idx)] = -1
        return result.anonymous

    def _up_set(self, idx: int) -> BoolArray:
        node = self.nodes[idx]
        return np.asarray(np.logical_and.reduce([self._at_least[i][lvl] for i, lvl in enumerate(node)]), np.bool_)

    def _down_set(self, idx: int) -> BoolArray:
        node = self.nodes[idx]
        return np.asarray(np.logical_and.reduce([self._at_most[i][lvl] for i, lvl in enumerate(node)]), np.bool_)

    def _path_up(self, idx: int) -> list[int]:
        path = [idx]
        node = self.nodes[idx].copy()
        while True:
            steps = [i for i in range(len(node)) if node[i] < self.heights[i] - 1]
            if not steps:
                return path
            candidates = []
            for i in steps:
                node[i] += 1
                j = self._index(node)
                candidates.append((self.bounds[j], j, i))
                node[i] -= 1
            _, j, i = min(candidates)
            node[i] += 1
            path.append(j)

    def _classify(self, idx: int) -> None:
        path = self._path_up(idx)
        lo, hi = -1, len(path) - 1  # invariant: path[lo] bad (or before start), path[hi] good
        while hi - lo > 1:
            mid = (lo + hi) // 2
            state = self.status[path[mid]]
            good = bool(state == 1) if state else self._check(path[mid])
            if good:
                hi = mid
            else:
                lo = mid

    def run(self) -> SearchResult:
        top = len(self.nodes) - 1
        if self.monotone and not self._check(top):
            raise NoAnonymousNode(_no_node_message(self.engine))
        for idx in _ordered(self.nodes, self.bounds):
            if self.best is not None and self.bounds[idx] > self.best.loss + 1e-12:
                break
            if self.status[idx] == 0 and self.monotone:
                self._classify(int(idx))
            elif self.status[idx] == 0:
                self._check(int(idx))
            if self.status[idx] == 1 and np.isnan(self.loss[idx]):
                self._check(int(idx))
        if self.best is None:
            raise NoAnonymousNode(_no_node_message(self.engine))
        return SearchResult(self.best, len(self.nodes), self.checked)


def exhaustive_search(engine: GlobalRecoding) -> SearchResult:
    """Check every node; the baseline that ``optimal_search`` must agree with."""
    nodes = engine.all_nodes()
    best: NodeResult | None = None
    for node in nodes:
        result = engine.check(node)
        if result.anonymous and _better(result, best):
            best = result
    if best is None:
        raise NoAnonymousNode(_no_node_message(engine))
    return SearchResult(best, len(nodes), len(nodes))


def _no_node_message(engine: GlobalRecoding) -> str:
    m = engine.model
    rows = engine.table.n_rows
    if rows < m.row_k:
        fewer = (f", or lower privacy.max_rows_per_member (now {m.max_rows_per_member}: classes are sized for "
                 "members who each hold that many rows)") if m.max_rows_per_member > 1 else ""
        return (f"only {rows} row(s): {m.k_text} needs at least {m.row_k} in a class; wait for more members' "
                f"records (or lower k{fewer})")
    model = ", ".join([m.k_text, *([f"l={m.l} ({m.l_kind})"] if m.l > 1 else []),
                       *([f"t={m.t}"] if m.t is not None else [])])
    return (f"no generalization of the {rows} rows meets {model} within the suppression limit "
            f"{m.suppression_limit:.0%}; raise the suppression limit, lower k" + ("/l" if m.l > 1 else "")
            + (", or add sensitive-value diversity" if m.l > 1 or m.t is not None else ""))
