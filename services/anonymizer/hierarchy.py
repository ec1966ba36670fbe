"""Generalization hierarchies: value trees over a finite domain of leaf values.

A hierarchy has one row per leaf (original value) and one column per level, from the value itself
(level 0) to the most general label (usually ``*``). Every level must be a function of the level
below it (a tree), so full-domain generalization to level h is well defined and monotone.

Hierarchies are read from ARX-style CSVs (``;``-separated) or generated: numeric bands, postcode
prefixes, dates to month/year. Generated ones are materialized over a declared finite domain so
that ARX's Loss metric (which needs the domain size) is defined.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class HierarchyError(ValueError):
    """A hierarchy is malformed or does not cover a value; the message says which and how to fix it."""


@dataclass(frozen=True)
class Hierarchy:
    """A value tree over ``leaves``; ``labels[h][j]`` is leaf j generalized to level h.

    Promised after construction: every level has one label per leaf, leaves are unique, level 0 is
    the leaf itself, and level h+1 is a function of level h. ``codes[h]`` maps leaf index to the
    integer code of its level-h label; ``shares[h][c]`` is the fraction of the domain (leaves) whose
    level-h label has code c (ARX's granularity share).
    """

    name: str
    leaves: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    codes: tuple[IntArray, ...] = field(init=False, repr=False, compare=False)
    level_labels: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)
    shares: tuple[FloatArray, ...] = field(init=False, repr=False, compare=False)
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.leaves:
            raise HierarchyError(f"hierarchy {self.name!r} has no values; give at least one row")
        if not self.labels or tuple(self.labels[0]) != tuple(self.leaves):
            raise HierarchyError(f"hierarchy {self.name!r}: level 0 must be the values themselves")
        index: dict[str, int] = {}
        for j, leaf in enumerate(self.leaves):
            if leaf in index:
                raise HierarchyError(f"hierarchy {self.name!r} lists value {leaf!r} twice; keep one row")
            index[leaf] = j
        codes: list[IntArray] = []
        names: list[tuple[str, ...]] = []
        shares: list[FloatArray] = []
        n = len(self.leaves)
        for h, level in enumerate(self.labels):
            if len(level) != n:
                raise HierarchyError(f"hierarchy {self.name!r}: level {h} has {len(level)} labels for {n} values")
            uniq, inv = np.unique(np.asarray(level, dtype=object).astype(str), return_inverse=True)
            codes.append(inv.astype(np.int64))
            names.append(tuple(str(u) for u in uniq))
            shares.append(np.bincount(inv, minlength=len(uniq)).astype(np.float64) / n)
        for h in range(len(self.labels) - 1):
            parent_of: dict[str, str] = {}
            for below, above in zip(self.labels[h], self.labels[h + 1], strict=True):
                if parent_of.setdefault(below, above) != above:
                    raise HierarchyError(
                        f"hierarchy {self.name!r} is not a tree: level-{h} label {below!r} generalizes to both "
                        f"{parent_of[below]!r} and {above!r} at level {h + 1}; make each label have one parent")
        object.__setattr__(self, "codes", tuple(codes))
        object.__setattr__(self, "level_labels", tuple(names))
        object.__setattr__(self, "shares", tuple(shares))
        object.__setattr__(self, "index", index)

    @property
    def height(self) -> int:
        """Number of levels, including level 0."""
        return len(self.labels)

    def encode(self, values: Sequence[object], column: str | None = None) -> IntArray:
        """Leaf indices of ``values`` (column ``column``, default the hierarchy's name).

        Raises HierarchyError when the hierarchy lacks some: the message names the column and the
        hierarchy and counts the values and rows, but never quotes a value. ``values`` are members' data
        and the message reaches logs, the datasets topic and the public build API. Declaring the column's
        domain in the definition (``values`` or ``min``/``max``) makes the definition check list what
        the hierarchy lacks, before any record is read.
        """
        distinct, inverse = distinct_strings(values)
        leaf = np.array([self.index.get(v, -1) for v in distinct], dtype=np.int64)
        out = leaf[inverse] if len(distinct) else np.empty(len(values), dtype=np.int64)
        if len(distinct) and (leaf < 0).any():
            missing_values = int((leaf < 0).sum())
            missing_rows = int((out < 0).sum())
            raise HierarchyError(
                f"column {column or self.name!r} holds {missing_values} distinct value(s), in {missing_rows} row(s), "
                f"that hierarchy {self.name!r} lacks (not shown: they are members' data); declare the column's "
                "domain (values, or min..max) in the definition, whose check then lists the domain values the "
                "hierarchy lacks, and extend the hierarchy")
        return out

    def missing(self, values: Sequence[object]) -> list[str]:
        """The values (as strings) that are not leaves of this hierarchy, sorted."""
        return sorted({str(v) for v in values} - self.index.keys())


def distinct_strings(values: Sequence[object]) -> tuple[list[str], IntArray]:
    """``np.unique([str(v) for v in values], return_inverse=True)``: the sorted distinct ``str`` of the
    values and each value's index among them. Long columns are dictionary-encoded by Arrow first, so
    only the distinct values are turned into strings in Python (same result, a fraction of the time)."""
    if len(values) >= 4096:
        try:
            encoded = pc.dictionary_encode(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            encoded = None
        if encoded is not None and encoded.null_count == 0:
            names = [str(v) for v in encoded.dictionary.to_pylist()]
            distinct = sorted(set(names))
            position = {v: i for i, v in enumerate(distinct)}
            mapping = np.array([position[v] for v in names], dtype=np.int64)
            return distinct, mapping[encoded.indices.to_numpy(zero_copy_only=False)]
    uniq, inverse = np.unique(np.asarray([str(v) for v in values], dtype=str), return_inverse=True)
    return [str(u) for u in uniq], inverse.astype(np.int64).reshape(-1)


def from_rows(name: str, rows: Sequence[Sequence[str]]) -> Hierarchy:
    """A hierarchy from rows ``[value, level1, ..., top]``; all rows must have the same length."""
    if not rows:
        raise HierarchyError(f"hierarchy {name!r} has no rows")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise HierarchyError(f"hierarchy {name!r}: row {i + 1} has {len(row)} levels, row 1 has {width}; "
                                 "give every row the same number of levels")
    labels = tuple(tuple(row[h] for row in rows) for h in range(width))
    return Hierarchy(name=name, leaves=labels[0], labels=labels)


def from_csv(name: str, path: Path) -> Hierarchy:
    """Read an ARX-style ``;``-separated hierarchy file (no header)."""
    if not path.is_file():
        raise HierarchyError(f"hierarchy file for {name!r} not found at {path}; check the path or "
                             "DATACOOP_SHARED_DIR")
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter=";") if r]
    return from_rows(name, rows)


def numeric_bands(name: str, minimum: int, maximum: int, widths: Sequence[int]) -> Hierarchy:
    """Integers ``minimum..maximum`` grouped into bands of each width (aligned to multiples of it), then ``*``.

    Each width must be a multiple of the previous one so bands nest (the result is a tree).
    """
    if maximum < minimum:
        raise HierarchyError(f"numeric hierarchy {name!r}: max {maximum} is below min {minimum}")
    prev = 1
    for w in widths:
        if w <= 0 or w % prev:
            raise HierarchyError(f"numeric hierarchy {name!r}: band widths {list(widths)} must be positive and "
                                 "each a multiple of the one before")
        prev = w
    values = list(range(minimum, maximum + 1))
    rows = []
    for v in values:
        row = [str(v)]
        for w in widths:
            lo = (v // w) * w
            row.append(f"{lo}-{lo + w - 1}")
        row.append("*")
        rows.append(row)
    return from_rows(name, rows)


def postcode_prefixes(name: str, length: int, keep: Sequence[int], alphabet: str = "0123456789") -> Hierarchy:
    """All codes of ``length`` characters from ``alphabet``, generalized by keeping ``keep`` leading characters.

    ``keep`` must be strictly decreasing and below ``length``; the rest is masked with ``*``.
    The domain has len(alphabet)**length leaves, so keep it to what fits in memory (<= ~10**6).
    """
    if any(b >= a for a, b in zip([length, *keep], keep, strict=False)) or any(k < 0 for k in keep):
        raise HierarchyError(f"postcode hierarchy {name!r}: keep {list(keep)} must be strictly decreasing "
                             f"prefix lengths below {length}")
    if len(alphabet) ** length > 2_000_000:
        raise HierarchyError(f"postcode hierarchy {name!r}: {len(alphabet)}**{length} codes is too large a domain; "
                             "use a shorter code or a CSV hierarchy of the codes that exist")
    import itertools
    codes = ["".join(p) for p in itertools.product(alphabet, repeat=length)]
    rows = [[c, *(c[:k] + "*" * (length - k) for k in keep), "*"] for c in codes]
    return from_rows(name, rows)


def dates(name: str, first: date, last: date) -> Hierarchy:
    """ISO dates ``first..last`` generalized to month (YYYY-MM), year (YYYY), then ``*``."""
    if last < first:
        raise HierarchyError(f"date hierarchy {name!r}: last {last} is before first {first}")
    days = (last - first).days + 1
    rows = []
    for d in range(days):
        iso = (first + timedelta(days=d)).isoformat()
        rows.append([iso, iso[:7], iso[:4], "*"])
    return from_rows(name, rows)
