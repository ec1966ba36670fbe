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


def test_the_public_version_view_counts_contributors_and_names_none() -> None:
    """Rows per member would link the pseudonyms of the Parquet to wallet addresses (a reviewer matched 38
    of 40 that way): anyone sees how many contributed and the rows, the weights stay on the datasets topic."""
    from services.anonymizer.api import version_view

    weights = {f"0x{i:040x}": i + 1 for i in range(5)}
    stored = {"version": 1, "k": 3, "l_diversity": 2.0, "privacy_model": "k-anonymity k=3", "epsilon": 1.0,
              "rows": 15, "suppressed_rows": 0, "information_loss": 0.2, "contributor_weights": weights,
              "location": "file:///v1.parquet", "superseded": False}
    view = version_view(stored)
    assert view["contributors"] == 5 and view["rows"] == 15 and view["guarantees"]["rows"] == 15
    assert "contributor_weights" not in view
    assert not any(address in str(view) for address in weights)


def test_aggregates_of_a_version_not_yet_published_are_not_served(tmp_path) -> None:
    """A build writes its DP draw before the version is appended (and draws again if a member left)."""
    from types import SimpleNamespace

    import duckdb
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from datacoop.kit import problems
    from services.anonymizer.api import build_router
    from services.anonymizer.build import AGGREGATES_DDL

    db = tmp_path / "aggregates.duckdb"
    with duckdb.connect(str(db)) as conn:  # version 1's draw is written, its event not yet appended
        conn.execute(AGGREGATES_DDL)
        conn.execute("INSERT INTO aggregate_releases VALUES ('census-stats', 1, ['age'], 1.0, 'laplace', NULL, NULL)")
        conn.execute("INSERT INTO cell_aggregates VALUES ('census-stats', 1, ['20-29'], 12.3, NULL, NULL)")
    published: dict[int, dict[str, object]] = {}
    svc = SimpleNamespace(projection=SimpleNamespace(version=lambda dataset_id, version: published.get(version)),
                          aggregates_db=db)
    app = FastAPI()
    app.add_exception_handler(problems.DomainError, problems.domain_error_handler)  # type: ignore[arg-type]
    app.include_router(build_router(svc))
    assert TestClient(app).get("/datasets/census-stats/versions/1/aggregates").status_code == 404
    published[1] = {"version": 1}
    assert TestClient(app).get("/datasets/census-stats/versions/1/aggregates").json()["cells"][0]["count"] == 12.3


def test_who_is_in_a_version_is_told_to_the_operator_alone() -> None:
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from datacoop.kit import problems
    from services.anonymizer.api import build_router

    weights = {f"0x{i:040x}": 1 for i in range(4)}
    versions = {1: {"version": 1, "contributor_weights": weights}}
    svc = SimpleNamespace(projection=SimpleNamespace(version=lambda dataset_id, version: versions.get(version)),
                          operator_token="op-token-0123456789")
    app = FastAPI()
    app.add_exception_handler(problems.DomainError, problems.domain_error_handler)  # type: ignore[arg-type]
    app.include_router(build_router(svc))
    http = TestClient(app)
    assert http.get("/datasets/census-stats/versions/1/contributors").status_code == 401
    wrong = http.get("/datasets/census-stats/versions/1/contributors", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = http.get("/datasets/census-stats/versions/1/contributors",
                  headers={"Authorization": "Bearer op-token-0123456789"})
    assert ok.status_code == 200 and ok.json()["contributor_weights"] == weights
    missing = http.get("/datasets/census-stats/versions/2/contributors",
                       headers={"Authorization": "Bearer op-token-0123456789"})
    assert missing.status_code == 404
