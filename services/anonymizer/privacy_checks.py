"""Checks of k-anonymity, l-diversity and t-closeness, per equivalence class.

``failing_classes`` is the vectorized check the searches use on encoded tuples; ``verify_published``
is the independent last check on the rows about to be published: it recomputes classes from the
output values themselves and raises ``PrivacyViolation`` if any class falls short.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.anonymizer.encoding import group_ids
from services.anonymizer.hierarchy import BoolArray, FloatArray, IntArray, distinct_strings
from services.anonymizer.privacy_model import PrivacyModel

_EPS = 1e-9


class PrivacyViolation(RuntimeError):
    """An output about to be published does not meet its privacy model; it must not be published."""


def failing_classes(class_ids: IntArray, n_classes: int, counts: IntArray, sensitive_codes: IntArray,
                    sensitive_cards: Sequence[int], reference: Sequence[FloatArray],
                    model: PrivacyModel, min_rows: int | None = None) -> tuple[BoolArray, IntArray]:
    """Which classes fail ``model`` (mask over 0..n_classes-1), and each class's row count.

    ``class_ids[t]`` is the class of tuple t, which stands for ``counts[t]`` rows with sensitive codes
    ``sensitive_codes[t]``; ``reference[j]`` is attribute j's distribution over the whole input (for t).
    A class needs ``min_rows`` rows, by default ``model.row_k`` (k members at the model's rows per member).
    """
    sizes = np.bincount(class_ids, weights=counts, minlength=n_classes).astype(np.int64)
    bad = sizes < (model.row_k if min_rows is None else min_rows)
    needs_diversity = model.l > 1 or model.t is not None
    for j, card in enumerate(sensitive_cards if needs_diversity else ()):
        pair_ids, n_pairs = group_ids([class_ids, sensitive_codes[:, j]], [n_classes, card])
        pair_rows = np.bincount(pair_ids, weights=counts, minlength=n_pairs)
        first = np.empty(n_pairs, dtype=np.int64)
        first[pair_ids] = np.arange(len(pair_ids))
        pair_class = class_ids[first]
        pair_value = sensitive_codes[first, j]
        if model.l > 1 and model.l_kind == "distinct":
            bad |= np.bincount(pair_class, minlength=n_classes) < model.l
        p = pair_rows / np.maximum(sizes[pair_class], 1)
        if model.l > 1 and model.l_kind == "entropy":
            entropy = -np.bincount(pair_class, weights=p * np.log(p), minlength=n_classes)
            bad |= entropy < np.log(model.l) - _EPS
        if model.t is not None:
            q = reference[j][pair_value]
            tv = 0.5 * (np.bincount(pair_class, weights=np.abs(p - q), minlength=n_classes)
                        + 1.0 - np.bincount(pair_class, weights=q, minlength=n_classes))
            bad |= tv > model.t + _EPS
    return bad, sizes


def owner_codes(owners: Sequence[object] | IntArray) -> tuple[IntArray, int]:
    """Owners as integer codes and how many codes: an integer array is taken as codes already (the build
    passes them, a million rows' owners turned to strings and sorted cost a second), anything else is
    compared as strings."""
    if isinstance(owners, np.ndarray):
        if np.issubdtype(owners.dtype, np.integer):
            codes = owners.astype(np.int64, copy=False)
            return codes, int(codes.max()) + 1 if len(codes) else 1
        owners = list(owners)
    uniq, codes = distinct_strings(owners)
    return codes, max(len(uniq), 1)


def distinct_per_class(class_ids: IntArray, n_classes: int, owners: Sequence[object] | IntArray) -> IntArray:
    """How many distinct ``owners`` (one per row: codes, or values compared as strings) each class holds."""
    codes, n_owners = owner_codes(owners)
    pair_ids, n_pairs = group_ids([class_ids, codes], [n_classes, n_owners])
    first = np.empty(n_pairs, dtype=np.int64)
    first[pair_ids] = np.arange(len(pair_ids))
    return np.bincount(class_ids[first], minlength=n_classes).astype(np.int64)


def verify_published(qi_columns: Mapping[str, Sequence[object]], sensitive_columns: Mapping[str, Sequence[object]],
                     model: PrivacyModel, reference: Mapping[str, Mapping[str, float]] | None = None,
                     owners: Sequence[object] | IntArray | None = None) -> None:
    """Raise ``PrivacyViolation`` unless every class of the published rows meets ``model``.

    Classes are rows with equal values in every QI column (as published, compared as strings).
    ``owners[r]`` is whose row r is (a member, a pseudonym, or an integer code of one): then k counts
    distinct owners per class,
    people and not rows. Without owners each row is taken as one person's and a class needs
    ``model.row_k`` rows. ``reference[attr][value]`` is the input's distribution for t-closeness
    (defaults to the output's). An empty output passes (nothing is disclosed).

    The message never quotes a value of the rows (it reaches logs, events and the public build API):
    it counts the failing classes and gives the rows and members of one of them.
    """
    lengths = {len(v) for v in (*qi_columns.values(), *sensitive_columns.values())}
    if owners is not None:
        lengths.add(len(owners))
    if len(lengths) > 1:
        raise PrivacyViolation(f"published columns have different lengths {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    if n == 0:
        return
    qi_codes, cards = [], []
    for values in qi_columns.values():
        uniq, inv = distinct_strings(values)
        qi_codes.append(inv)
        cards.append(len(uniq))
    class_ids, n_classes = group_ids(qi_codes, cards) if qi_codes else (np.zeros(n, dtype=np.int64), 1)
    sens_codes, sens_cards, refs = [], [], []
    for name, values in sensitive_columns.items():
        uniq, inv = distinct_strings(values)
        sens_codes.append(inv)
        sens_cards.append(len(uniq))
        if reference is not None and name in reference:
            refs.append(np.array([reference[name].get(str(u), 0.0) for u in uniq], dtype=np.float64))
        else:
            refs.append(np.bincount(inv, minlength=len(uniq)) / n)
    codes = np.stack(sens_codes, axis=1) if sens_codes else np.zeros((n, 0), dtype=np.int64)
    bad, sizes = failing_classes(class_ids, n_classes, np.ones(n, dtype=np.int64), codes, sens_cards, refs, model,
                                 min_rows=0 if owners is not None else None)
    people = distinct_per_class(class_ids, n_classes, owners) if owners is not None else sizes
    if owners is not None:
        bad |= people < model.k
    if bad.any():
        worst = int(np.flatnonzero(bad)[np.argmin(people[bad])])
        raise PrivacyViolation(
            f"{int(bad.sum())} of {n_classes} equivalence class(es) fail {model.k_text}, l={model.l} "
            f"({model.l_kind}), t={model.t}; one holds {int(sizes[worst])} row(s) of "
            f"{int(people[worst]) if owners is not None else 'unknown'} member(s); do not publish, re-run the "
            "anonymization")
