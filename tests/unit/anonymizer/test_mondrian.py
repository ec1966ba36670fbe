from __future__ import annotations

import pytest

from services.anonymizer.anonymize import anonymize_table
from services.anonymizer.privacy_checks import verify_published
from services.anonymizer.privacy_model import PrivacyModel


@pytest.mark.parametrize("limit", [0.0, 0.01, 0.05, 1.0])
def test_multidimensional_loses_less_than_the_global_optimum(adult_subset, adult_hierarchies, limit) -> None:
    model = PrivacyModel(k=5, suppression_limit=limit)
    best_global = anonymize_table(adult_subset, adult_hierarchies, model, mode="global").report
    multi = anonymize_table(adult_subset, adult_hierarchies, model, mode="multidimensional").report
    assert multi.loss < best_global.loss
    assert multi.rows_suppressed == 0


def test_multidimensional_output_is_k_anonymous_and_l_diverse(adult_subset, adult_hierarchies) -> None:
    qis = {c: h for c, h in adult_hierarchies.items() if c != "salary-class"}
    model = PrivacyModel(k=4, l=2)
    out = anonymize_table(adult_subset, qis, model, sensitive=["salary-class"], mode="multidimensional")
    verify_published({q: out.columns[q] for q in qis}, {"salary-class": out.columns["salary-class"]}, model)
    assert out.report.rows_published == len(adult_subset["sex"])
    assert sorted(out.source_rows) == list(range(len(adult_subset["sex"])))


def test_interval_labels_use_hierarchy_labels_when_they_fit(adult_subset, adult_hierarchies) -> None:
    out = anonymize_table(adult_subset, adult_hierarchies, PrivacyModel(k=50), mode="multidimensional")
    labels = set(out.columns["workclass"])
    known = {label for level in adult_hierarchies["workclass"].labels for label in level}
    assert all(label in known or label.startswith("[") for label in labels)
