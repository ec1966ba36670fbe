from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from services.anonymizer.hierarchy import HierarchyError, dates, from_rows, numeric_bands, postcode_prefixes


def test_adult_hierarchies_have_the_arx_lattice_heights(adult_hierarchies) -> None:
    heights = [h.height for h in adult_hierarchies.values()]
    assert heights == [2, 5, 2, 3, 4, 3, 3, 3, 2]
    assert int(np.prod(heights)) == 12_960


def test_shares_are_fractions_of_the_domain(adult_hierarchies) -> None:
    age = adult_hierarchies["age"]
    assert len(age.leaves) == 100
    assert age.shares[0][0] == pytest.approx(0.01)
    assert age.shares[age.height - 1].tolist() == [1.0]


def test_a_label_with_two_parents_is_refused() -> None:
    with pytest.raises(HierarchyError, match="not a tree.*'x'"):
        from_rows("c", [["a", "x", "*"], ["b", "x", "**"]])


def test_values_missing_from_the_hierarchy_are_counted_never_quoted() -> None:
    """The values are members' data; the message reaches logs, the datasets topic and the public API."""
    h = from_rows("c", [["a", "*"], ["b", "*"]])
    with pytest.raises(HierarchyError) as refused:
        h.encode(["a", "secret-z", "secret-z", "secret-y"], column="postcode")
    message = str(refused.value)
    assert "column 'postcode'" in message and "hierarchy 'c'" in message
    assert "2 distinct value(s), in 3 row(s)" in message
    assert "secret" not in message


def test_numeric_bands_nest_and_cover_the_range() -> None:
    h = numeric_bands("age", 0, 99, [5, 10, 50])
    assert h.height == 5
    assert h.labels[1][h.index["37"]] == "35-39"
    assert h.labels[3][h.index["37"]] == "0-49"
    with pytest.raises(HierarchyError, match="multiple"):
        numeric_bands("age", 0, 99, [5, 7])


def test_postcode_prefixes_mask_trailing_characters() -> None:
    h = postcode_prefixes("zip", 3, [2, 1], alphabet="0123")
    assert len(h.leaves) == 64
    assert [h.labels[lvl][h.index["123"]] for lvl in range(4)] == ["123", "12*", "1**", "*"]


def test_dates_generalize_to_month_then_year() -> None:
    h = dates("visit", date(2023, 12, 30), date(2024, 1, 2))
    assert [h.labels[lvl][h.index["2024-01-01"]] for lvl in range(4)] == ["2024-01-01", "2024-01", "2024", "*"]
