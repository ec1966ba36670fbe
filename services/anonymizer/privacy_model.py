"""The privacy model a dataset version must satisfy: k-anonymity, l-diversity, optional t-closeness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LDiversityKind = Literal["distinct", "entropy"]


class PrivacyModelError(ValueError):
    """Parameters that no output can satisfy or that make no sense; the message says which."""


@dataclass(frozen=True)
class PrivacyModel:
    """What every published equivalence class (rows equal on all quasi-identifiers) must satisfy.

    - ``k``: at least k rows per class (k >= 2).
    - ``l`` (with ``l_kind``): for every sensitive attribute, at least l distinct values per class
      (``distinct``), or entropy of its values >= ln(l) (``entropy``). ``l = 1`` means no l-diversity.
    - ``t``: if set, for every sensitive attribute the class's value distribution is within t of the
      whole table's, in equal-ground-distance EMD (= total variation distance), 0 < t <= 1.
    - ``suppression_limit``: fraction of input rows (0..1) that may be removed to reach the above.
    - ``max_rows_per_member``: the most rows one member (one pseudonym) may have in the input; k counts
      *members*, so the searches ask for classes of ``k * max_rows_per_member`` rows (``row_k``), which
      then hold at least k distinct members. The caller keeps each member to the bound.
    """

    k: int
    l: int = 1  # noqa: E741 - the literature's name
    l_kind: LDiversityKind = "distinct"
    t: float | None = None
    suppression_limit: float = 0.0
    max_rows_per_member: int = 1

    def __post_init__(self) -> None:
        if self.k < 2:
            raise PrivacyModelError(f"k={self.k} gives no anonymity; use k >= 2")
        if self.l < 1:
            raise PrivacyModelError(f"l={self.l} is impossible; use l >= 1 (1 = no l-diversity)")
        if self.l_kind not in ("distinct", "entropy"):
            raise PrivacyModelError(f"l-diversity kind {self.l_kind!r} is unknown; use 'distinct' or 'entropy'")
        if self.t is not None and not 0.0 < self.t <= 1.0:
            raise PrivacyModelError(f"t={self.t} is out of range; t-closeness needs 0 < t <= 1")
        if not 0.0 <= self.suppression_limit <= 1.0:
            raise PrivacyModelError(f"suppression limit {self.suppression_limit} is not a fraction; use 0..1")
        if isinstance(self.max_rows_per_member, bool) or not isinstance(self.max_rows_per_member, int) \
                or self.max_rows_per_member < 1:
            raise PrivacyModelError(f"max_rows_per_member={self.max_rows_per_member!r} is not a whole number >= 1; "
                                    "use the most rows one member may have in a version (1 = one row each)")

    @property
    def row_k(self) -> int:
        """Rows a class needs so that it surely holds k members: ``k * max_rows_per_member``."""
        return self.k * self.max_rows_per_member

    @property
    def k_text(self) -> str:
        """``k=5``, or with more than one row per member ``k=5 members (classes of >= 15 rows)``."""
        if self.max_rows_per_member == 1:
            return f"k={self.k}"
        return f"k={self.k} members (classes of >= {self.row_k} rows at <= {self.max_rows_per_member} per member)"

    def max_suppressed_rows(self, n_rows: int) -> int:
        """Largest number of rows that may be suppressed out of ``n_rows``."""
        return int(self.suppression_limit * n_rows + 1e-9)
