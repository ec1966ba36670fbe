"""A bad job is refused before running, with a message naming the problem and the way out."""

import pyarrow as pa
import pytest

from services.worker.analytics import JobRefused, run_analysis, schema_of, validate_job

SCHEMA = {"age": "int", "income": "float", "region": "str", "smoker": "bool"}


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("regress", {}, "unknown analysis 'regress'"),
    ("ols", {"y": "income", "x": ["weight"]}, "'weight' is not in this dataset"),
    ("ols", {"y": "income", "x": ["region"]}, "'region' has type 'str'"),
    ("logistic", {"y": "region", "x": ["age"]}, "outcome (y) column 'region'"),
    ("ols", {"y": "income", "x": ["income"]}, "both the outcome and a predictor"),
    ("ols", {"y": "income", "x": ["age", "age"]}, "listed twice"),
    ("ols", {"y": "income", "x": ["age"], "robust": True}, "robust: Extra inputs are not permitted"),
    ("kmeans", {"columns": ["age"], "k": 0}, "k=0 is out of range"),
    ("kmeans", {"columns": ["age"], "k": 11}, "k=11 is out of range"),
    ("kmeans", {"columns": ["age", "income"], "k": 2, "init": [[1.0, 2.0]]}, "init must be 2 centers"),
    ("kmeans", {"columns": ["age"], "k": 1, "init": [["nan"]]}, "finite numbers"),
    ("histogram", {"column": "age", "bins": 0}, "bins=0 is out of range"),
    ("histogram", {"column": "age", "bins": [3, 2, 1]}, "strictly increasing"),
    ("histogram", {"column": "age", "range": [5, 1]}, "low < high"),
    ("histogram", {"column": "region"}, "needs a numeric column"),
    ("pca", {"columns": ["age", "income"], "n_components": 3}, "exceeds the 2 columns"),
    ("correlation", {"columns": ["age"]}, "columns: List should have at least 2 items"),
    ("aggregate", {"group_by": ["nowhere"], "aggregates": {"income": ["mean"]}}, "'nowhere' is not in"),
    ("aggregate", {"group_by": ["region"], "aggregates": {"income": ["median"]}}, "aggregates.income.0"),
])
def test_bad_jobs_are_refused_with_a_clear_reason(name: str, params: dict, expected: str) -> None:
    with pytest.raises(JobRefused, match=None) as refused:
        validate_job(name, params, SCHEMA, n_rows=100)
    assert expected in str(refused.value)


def test_refusal_lists_the_numeric_columns_to_choose_from() -> None:
    with pytest.raises(JobRefused) as refused:
        validate_job("ols", {"y": "income", "x": ["region"]}, SCHEMA, n_rows=10)
    assert "numeric columns here: age, income, smoker" in str(refused.value)


def test_a_regression_needs_more_rows_than_coefficients() -> None:
    with pytest.raises(JobRefused, match="needs at least 4 rows"):
        validate_job("ols", {"y": "income", "x": ["age", "smoker"]}, SCHEMA, n_rows=3, min_group_size=1)


def test_run_refuses_before_computing_anything() -> None:
    calls: list[float] = []
    table = pa.table({"age": [1, 2, 3], "region": ["a", "b", "c"]})
    with pytest.raises(JobRefused):
        run_analysis("kmeans", {"columns": ["region"], "k": 2}, table, calls.append)
    assert calls == []


def test_schema_is_derived_from_the_arrow_table(mixed_table: pa.Table) -> None:
    assert schema_of(mixed_table) == {"a": "float", "b": "float", "c": "int", "region": "str",
                                      "flag": "bool", "outcome": "int"}


def test_valid_job_parses_into_typed_params() -> None:
    parsed = validate_job("kmeans", {"columns": ["age", "income"], "k": 3}, SCHEMA, n_rows=30)
    assert parsed.k == 3 and parsed.init == "k-means++"  # type: ignore[attr-defined]
