"""Anonymize a table: the engine's entry point. Pure: columns in, published columns and a report out.

``anonymize_table`` runs the global (optimal full-domain generalization + suppression) or the
multidimensional (Mondrian) mode, computes the metrics, and *always* re-checks the published rows
with ``verify_published`` before returning; a shortfall raises ``PrivacyViolation`` and nothing is
returned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.anonymizer import mondrian
from services.anonymizer.definition import ResolvedDefinition
from services.anonymizer.dp import CellAggregate, DPError, cell_aggregates
from services.anonymizer.encoding import EncodedTable, encode
from services.anonymizer.hierarchy import BoolArray, FloatArray, Hierarchy, IntArray
from services.anonymizer.lattice import GlobalRecoding, optimal_search
from services.anonymizer.metrics import discernibility, granularity_loss, non_uniform_entropy
from services.anonymizer.privacy_checks import verify_published
from services.anonymizer.privacy_model import PrivacyModel

Mode = Literal["global", "multidimensional"]


@dataclass(frozen=True)
class AnonymizationReport:
    """What a published version guarantees and what it cost. ``utility = 1 - loss`` (ARX Loss)."""

    mode: Mode
    k: int
    l: int  # noqa: E741
    l_kind: str
    t: float | None
    suppression_limit: float
    rows_in: int
    rows_published: int
    rows_suppressed: int
    equivalence_classes: int
    loss: float
    utility: float
    discernibility: int
    non_uniform_entropy_bits: float
    levels: dict[str, int] | None
    nodes_checked: int | None


@dataclass(frozen=True)
class AnonymizedTable:
    """Published rows (QIs generalized, other columns as given) and ``source_rows[r]``, the input row of row r."""

    columns: dict[str, list[str]]
    source_rows: list[int]
    report: AnonymizationReport


@dataclass(frozen=True)
class _Recoding:
    labels: list[list[str]]  # per QI, per tuple
    shares: FloatArray  # tuples x QIs
    covered_rows: FloatArray  # tuples x QIs
    class_ids: IntArray
    suppressed: BoolArray
    levels: dict[str, int] | None
    nodes_checked: int | None


def anonymize_table(columns: Mapping[str, Sequence[object]], hierarchies: Mapping[str, Hierarchy],
                    model: PrivacyModel, sensitive: Sequence[str] = (), passthrough: Sequence[str] = (),
                    mode: Mode = "global", owners: Sequence[object] | IntArray | None = None) -> AnonymizedTable:
    """Anonymize ``columns`` so every published class meets ``model``, with the least ARX Loss the mode finds.

    ``hierarchies`` names the quasi-identifiers; ``sensitive`` columns are protected by l/t and published
    as is, like ``passthrough`` columns; any other column is dropped. ``owners[r]`` is the member of row r
    (each with at most ``model.max_rows_per_member`` rows: the caller bounds them): the searches ask for
    classes of ``model.row_k`` rows and the final check counts k in distinct owners. Without owners each
    row is one person's. Raises ``KeyError`` for a missing column, ``HierarchyError`` for a value a
    hierarchy lacks (counted, never quoted), ``NoAnonymousNode``/``MondrianError`` when the model cannot
    be met within the suppression limit, ``PrivacyViolation`` if the final check fails.
    """
    for name in passthrough:
        if name not in columns:
            raise KeyError(f"column {name!r} is not in the table; fix the definition")
    if mode not in ("global", "multidimensional"):
        raise ValueError(f"mode {mode!r} is unknown; use 'global' or 'multidimensional'")
    table = encode(columns, hierarchies, sensitive)
    recoding = _global(table, model) if mode == "global" else _multidimensional(table, model)
    keep_tuple = ~recoding.suppressed
    rows = np.flatnonzero(keep_tuple[table.row_tuple])
    row_tuples = table.row_tuple[rows]
    published: dict[str, list[str]] = {}
    for i, name in enumerate(table.quasi_identifiers):
        labels = np.asarray(recoding.labels[i], dtype=object)
        published[name] = [str(v) for v in labels[row_tuples]] if len(labels) else []
    for name in (*sensitive, *passthrough):
        values = columns[name]
        published[name] = [str(values[int(r)]) for r in rows]
    reference = {name: dict(zip(vals, np.bincount(table.sensitive_codes[:, j], weights=table.counts,
                                                  minlength=len(vals)) / max(table.n_rows, 1), strict=True))
                 for j, (name, vals) in enumerate(zip(table.sensitive, table.sensitive_values, strict=True))}
    verify_published({q: published[q] for q in table.quasi_identifiers}, {s: published[s] for s in sensitive},
                     model, reference, None if owners is None else _rows_of(owners, rows))
    return AnonymizedTable(published, [int(r) for r in rows], _report(table, model, mode, recoding))


def _rows_of(owners: Sequence[object] | IntArray, rows: IntArray) -> Sequence[object] | IntArray:
    if isinstance(owners, np.ndarray):
        return owners[rows]
    return [owners[int(r)] for r in rows]


def _report(table: EncodedTable, model: PrivacyModel, mode: Mode, rec: _Recoding) -> AnonymizationReport:
    counts = table.counts
    n = table.n_rows
    shares = np.where(rec.suppressed[:, None], 1.0, rec.shares)
    covered = np.where(rec.suppressed[:, None], float(n), rec.covered_rows)
    leaf_rows = np.stack([np.bincount(table.leaves[:, i], weights=counts)[table.leaves[:, i]]
                          for i in range(table.leaves.shape[1])], axis=1).astype(np.float64) \
        if table.leaves.shape[1] else covered
    domain_sizes = [len(h.leaves) for h in table.hierarchies]
    loss = granularity_loss((counts[:, None] * shares).sum(axis=0), n, domain_sizes)
    kept = ~rec.suppressed
    sizes = np.bincount(rec.class_ids[kept], weights=counts[kept]).astype(np.int64)
    sizes = sizes[sizes > 0]
    suppressed_rows = int(counts[rec.suppressed].sum())
    return AnonymizationReport(
        mode=mode, k=model.k, l=model.l, l_kind=model.l_kind, t=model.t, suppression_limit=model.suppression_limit,
        rows_in=n, rows_published=n - suppressed_rows, rows_suppressed=suppressed_rows,
        equivalence_classes=len(sizes), loss=loss, utility=1.0 - loss,
        discernibility=discernibility(sizes, suppressed_rows, n),
        non_uniform_entropy_bits=non_uniform_entropy(leaf_rows, covered, counts),
        levels=rec.levels, nodes_checked=rec.nodes_checked)


def _global(table: EncodedTable, model: PrivacyModel) -> _Recoding:
    engine = GlobalRecoding(table, model)
    search = optimal_search(engine)
    best = engine.check(search.best.node, with_tuples=True)
    labels, shares, covered = [], [], []
    for i, (h, lvl) in enumerate(zip(table.hierarchies, best.node, strict=True)):
        codes = h.codes[lvl][table.leaves[:, i]]
        labels.append([h.level_labels[lvl][c] for c in codes])
        shares.append(h.shares[lvl][codes])
        covered.append(np.bincount(codes, weights=table.counts, minlength=len(h.level_labels[lvl]))[codes]
                       .astype(np.float64))
    n_t = len(table.counts)
    assert best.class_ids is not None
    return _Recoding(labels, _stack(shares, n_t), _stack(covered, n_t), best.class_ids, best.suppressed_tuples,
                     dict(zip(table.quasi_identifiers, best.node, strict=True)), search.nodes_checked)


def _multidimensional(table: EncodedTable, model: PrivacyModel) -> _Recoding:
    part = mondrian.partition(table, model)
    domain = [len(h.leaves) for h in table.hierarchies]
    class_shares = mondrian.shares(part, domain)
    labels, covered = [], []
    for i, h in enumerate(table.hierarchies):
        names = interval_labels(h, part.ranks[i])
        class_labels = [names(int(lo), int(hi)) for lo, hi in zip(part.low[:, i], part.high[:, i], strict=True)]
        labels.append([class_labels[c] for c in part.class_ids])
        rows_by_rank = np.zeros(len(h.leaves) + 1)
        np.add.at(rows_by_rank, part.ranks[i][table.leaves[:, i]] + 1, table.counts)
        prefix = np.cumsum(rows_by_rank)
        class_covered = prefix[part.high[:, i] + 1] - prefix[part.low[:, i]]
        covered.append(class_covered[part.class_ids].astype(np.float64))
    n_t = len(table.counts)
    shares = class_shares[part.class_ids] if class_shares.size else np.zeros((n_t, 0))
    return _Recoding(labels, shares, _stack(covered, n_t), part.class_ids, part.suppressed_tuples, None, None)


def _stack(columns: Sequence[FloatArray], n_tuples: int) -> FloatArray:
    return np.stack(columns, axis=1).astype(np.float64) if columns else np.zeros((n_tuples, 0))


def interval_labels(h: Hierarchy, rank: IntArray) -> Callable[[int, int], str]:
    """A namer for rank intervals of ``h``: the hierarchy label covering exactly that interval if there is
    one (lowest level first), else ``[first..last]`` in the hierarchy's leaf order."""
    by_rank = [""] * len(h.leaves)
    for leaf, r in zip(h.leaves, rank, strict=True):
        by_rank[int(r)] = leaf
    exact: dict[tuple[int, int], str] = {}
    for level in range(h.height - 1, -1, -1):
        spans: dict[str, list[int]] = {}
        for label, r in zip(h.labels[level], rank, strict=True):
            spans.setdefault(label, []).append(int(r))
        for label, rs in spans.items():
            if max(rs) - min(rs) + 1 == len(rs):
                exact[(min(rs), max(rs))] = label

    def name(low: int, high: int) -> str:
        return exact.get((low, high), f"[{by_rank[low]}..{by_rank[high]}]")

    return name


def anonymize(columns: Mapping[str, Sequence[object]], definition: ResolvedDefinition,
              mode: Mode = "global", owners: Sequence[object] | IntArray | None = None) -> AnonymizedTable:
    """Anonymize ``columns`` as ``definition`` says (its QIs, sensitive and passthrough columns, model);
    ``owners`` as in ``anonymize_table``."""
    return anonymize_table(columns, definition.hierarchies, definition.model, definition.sensitive,
                           definition.passthrough, mode, owners)


def cell_aggregates_of(columns: Mapping[str, Sequence[object]], published: AnonymizedTable,
                       definition: ResolvedDefinition, rng: np.random.Generator) -> list[CellAggregate]:
    """DP counts (and sums/means of the raw ``aggregates.value_column``) per published QI cell.

    Cells are the distinct QI-value tuples of ``published`` (already public with the version); values are
    taken from the input rows behind each published row, clamped to ``value_bounds``. Spends the
    definition's ``aggregates.epsilon`` once, for neighbours that differ by one member's rows: at most
    ``privacy.max_rows_per_member`` of them (the caller bounds them), so the sensitivities scale by it.
    """
    spec = definition.definition.aggregates
    qis = list(definition.hierarchies)
    keys = list(zip(*(published.columns[q] for q in qis), strict=True)) if qis else []
    values = None
    if spec.value_column is not None:
        raw = columns[spec.value_column]
        values = []
        unreadable = 0
        for r in published.source_rows:
            try:
                values.append(float(raw[r]))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                unreadable += 1
        if unreadable:  # counted, never quoted: this message reaches logs and the build's public detail
            raise DPError(f"aggregates.value_column {spec.value_column!r} holds {unreadable} value(s) that are not "
                          "numbers; declare the column integer with min..max so the definition says what it holds")
    return cell_aggregates(keys, spec.epsilon, rng, values, spec.value_bounds, spec.mechanism, spec.delta,
                           rows_per_member=definition.model.max_rows_per_member)
