"""The calls the service makes: definition file -> anonymized version -> DP aggregates."""

from __future__ import annotations

import numpy as np
import pytest

from services.anonymizer import (
    PrivacyViolation,
    anonymize,
    cell_aggregates_of,
    load_resolved,
    verify_published,
)
from services.anonymizer.definition import DATASETS_DIR


@pytest.fixture(scope="module")
def salary_definition():
    return load_resolved(DATASETS_DIR / "adult-census-salary.yaml")


@pytest.mark.parametrize("mode", ["global", "multidimensional"])
def test_a_version_states_and_meets_its_guarantees(adult_subset, salary_definition, mode) -> None:
    version = anonymize(adult_subset, salary_definition, mode=mode)
    report = version.report
    assert (report.k, report.l, report.suppression_limit) == (5, 2, 0.01)
    assert report.rows_suppressed <= 0.01 * report.rows_in
    assert report.rows_published == len(version.source_rows) == len(version.columns["age"])
    assert 0 <= report.loss <= 1 and report.utility == pytest.approx(1 - report.loss)
    qis = list(salary_definition.hierarchies)
    verify_published({q: version.columns[q] for q in qis}, {"salary-class": version.columns["salary-class"]},
                     salary_definition.model)


def test_published_rows_keep_their_sensitive_values(adult_subset, salary_definition) -> None:
    version = anonymize(adult_subset, salary_definition)
    salaries = adult_subset["salary-class"]
    assert version.columns["salary-class"] == [salaries[r] for r in version.source_rows]


def test_aggregates_are_reproducible_with_a_seed_and_cover_every_cell(adult_subset, salary_definition) -> None:
    version = anonymize(adult_subset, salary_definition)
    first = cell_aggregates_of(adult_subset, version, salary_definition, np.random.default_rng(11))
    again = cell_aggregates_of(adult_subset, version, salary_definition, np.random.default_rng(11))
    assert first == again
    assert len(first) == version.report.equivalence_classes
    assert all(c.mean is None or 17 <= c.mean <= 90 for c in first)


def test_tampered_output_fails_the_last_check(adult_subset, salary_definition) -> None:
    version = anonymize(adult_subset, salary_definition)
    qis = {q: list(version.columns[q]) for q in salary_definition.hierarchies}
    qis["age"][0] = "unique-age"
    with pytest.raises(PrivacyViolation):
        verify_published(qis, {"salary-class": version.columns["salary-class"]}, salary_definition.model)
