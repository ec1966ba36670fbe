"""The query language: only the JSON model, columns checked against the schema, values as parameters."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.marketplace.query import Query, QueryInvalid, groupable_columns, plan, validate

COLUMNS = {"age_band": "VARCHAR", "sex": "VARCHAR", "income": "DOUBLE", "hours": "BIGINT", "salary-class": "VARCHAR"}


def q(**fields: Any) -> Query:
    return Query.model_validate({"epsilon": 0.1, **fields})


@pytest.mark.parametrize("body", [
    {"aggregate": "median", "epsilon": 0.1},
    {"aggregate": "count", "epsilon": -1},
    {"aggregate": "count", "epsilon": 0},
    {"aggregate": "count"},
    {"aggregate": "count", "epsilon": 0.1, "sql": "SELECT 1"},
    {"aggregate": "sum", "column": "income", "epsilon": 0.1},
    {"aggregate": "sum", "column": "income", "bounds": [10, 0], "epsilon": 0.1},
    {"aggregate": "count", "column": "income", "epsilon": 0.1},
    {"aggregate": "count", "group_by": ["x; DROP TABLE orders"], "epsilon": 0.1},
    {"aggregate": "count", "group_by": ['sex" OR 1=1 --'], "epsilon": 0.1},
    {"aggregate": "count", "group_by": ["-salary"], "epsilon": 0.1},
    {"aggregate": "count", "group_by": ["salary class"], "epsilon": 0.1},
    {"aggregate": "count", "filters": [{"column": "sex", "op": "LIKE", "value": "%"}], "epsilon": 0.1},
    {"aggregate": "count", "filters": [{"column": "sex", "op": "in", "value": "F"}], "epsilon": 0.1},
    {"aggregate": "count", "filters": [{"column": "sex", "op": "=", "value": ["F"]}], "epsilon": 0.1},
    {"aggregate": "count", "epsilon": 0.0000001},
])
def test_malformed_queries_are_refused_by_the_model(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Query.model_validate(body)


@pytest.mark.parametrize(("query", "message"), [
    (q(aggregate="count", group_by=["postcode"]), "unknown column 'postcode'"),
    (q(aggregate="sum", column="sex", bounds=(0, 1)), "not numeric"),
    (q(aggregate="count", group_by=["income"]), "cannot group by 'income'"),
    (q(aggregate="count", filters=[{"column": "income", "op": ">", "value": "10"}]), "wrong type"),
    (q(aggregate="count", filters=[{"column": "nope", "op": "=", "value": 1}]), "unknown column 'nope'"),
])
def test_queries_that_do_not_fit_the_schema_are_refused(query: Query, message: str) -> None:
    with pytest.raises(QueryInvalid, match=message):
        validate(query, COLUMNS)


def test_values_reach_sql_only_as_parameters() -> None:
    evil = "F' OR '1'='1"
    p = plan(q(aggregate="mean", column="income", bounds=(0, 100_000), group_by=["age_band"],
               filters=[{"column": "sex", "op": "=", "value": evil},
                        {"column": "hours", "op": "in", "value": [10, 20]}]), COLUMNS, "v_table")
    assert evil not in p.sql
    assert p.params == [0.0, 100_000.0, evil, 10, 20]
    assert p.sql == ('SELECT "age_band", sum(least(greatest(CAST("income" AS DOUBLE), ?), ?)) AS _sum, '
                     'count(*) AS _count FROM v_table WHERE "sex" = ? AND "hours" IN (?, ?) AND "income" IS NOT NULL '
                     'GROUP BY "age_band"')


def test_epsilon_is_counted_in_micro_units() -> None:
    assert q(aggregate="count", epsilon=0.1).epsilon_micro == 100_000


def test_a_hyphenated_column_as_datasets_publish_it_is_grouped_and_filtered_quoted() -> None:
    query = q(aggregate="count", group_by=["salary-class"], filters=[{"column": "salary-class", "op": "!=",
                                                                       "value": ">50K"}])
    validate(query, COLUMNS, ["salary-class"])
    p = plan(query, COLUMNS, "v_table")
    assert 'SELECT "salary-class"' in p.sql and 'WHERE "salary-class" != ?' in p.sql and p.params == [">50K"]


def test_group_by_is_allowed_on_generalized_declared_categorical_and_sensitive_columns_only() -> None:
    definition = {"columns": {"age_band": {"type": "integer"}, "sex": {"type": "categorical"}, "salary-class": {},
                              "notes": {"type": "text"}, "hours": {"type": "integer"}},
                  "quasi_identifiers": {"age_band": {"csv": "age.csv"}}, "sensitive": ["salary-class"]}
    columns = {**COLUMNS, "pseudonym": "VARCHAR", "notes": "VARCHAR"}
    allowed = groupable_columns(definition, columns)
    assert allowed == ["age_band", "salary-class", "sex"]
    assert groupable_columns({**definition, "sensitive": ["pseudonym"]}, columns) == allowed, "never the pseudonym"
    for column in ("pseudonym", "notes"):
        with pytest.raises(QueryInvalid, match=f"cannot group by '{column}'.*allowed: age_band, salary-class, sex"):
            validate(q(aggregate="count", group_by=[column]), columns, allowed)
    with pytest.raises(QueryInvalid, match="cannot group by 'pseudonym'"):
        validate(q(aggregate="count", group_by=["pseudonym"]), columns, ["pseudonym"])


@pytest.mark.parametrize(("epsilon", "micro"), [(1.49e-6, 2), (2.5e-6, 3), (1e-6, 1), (0.29, 290_000), (0.1, 100_000),
                                                (1, 1_000_000), (10, 10_000_000), (0.3333333, 333_334)])
def test_epsilon_is_charged_rounded_up_to_a_whole_micro_epsilon_never_less(epsilon: float, micro: int) -> None:
    query = q(aggregate="count", epsilon=epsilon)
    assert query.epsilon_micro == micro and query.epsilon_micro >= epsilon * 1e6 - 1e-9
    assert query.epsilon_charged == micro / 1e6  # what the engine draws its noise at


@pytest.mark.parametrize(("field", "value"), [("epsilon", True), ("epsilon", "0.1"), ("epsilon", "NaN"),
                                              ("bins", True), ("bins", "5"), ("bounds", [0, "5"]),
                                              ("bounds", [False, 5])])
def test_numbers_are_strict_so_true_or_a_string_is_no_number(field: str, value: Any) -> None:
    body = {"aggregate": "histogram", "column": "income", "bounds": [0, 10], "epsilon": 0.1, field: value}
    with pytest.raises(ValidationError) as info:
        Query.model_validate(body)
    assert info.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("body", [
    {"aggregate": "histogram", "column": "income", "bounds": [-1.7e308, 1.7e308], "epsilon": 0.1},
    {"aggregate": "sum", "column": "income", "bounds": [-1e308, 1e308], "epsilon": 0.1},
])
def test_bounds_whose_width_overflows_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="too far apart"):
        Query.model_validate(body)


TYPED = {"day": "VARCHAR", "active": "BOOLEAN", "steps": "BIGINT", "on": "DATE", "at": "TIMESTAMP WITH TIME ZONE"}


@pytest.mark.parametrize(("flt", "takes"), [
    ({"column": "day", "op": "=", "value": True}, "takes text"),
    ({"column": "day", "op": "in", "value": ["2026-01", False]}, "takes text"),
    ({"column": "day", "op": "<", "value": True}, "takes text"),
    ({"column": "day", "op": "=", "value": 3}, "takes text"),
    ({"column": "active", "op": "=", "value": "yes"}, "takes true or false"),
    ({"column": "steps", "op": ">", "value": True}, "takes a number"),
    ({"column": "steps", "op": ">", "value": 10**40}, "takes a number between"),
    ({"column": "on", "op": "=", "value": "zzz"}, "takes a date"),
    ({"column": "at", "op": ">", "value": "yesterday"}, "takes a timestamp"),
])
def test_a_filter_value_must_fit_its_columns_sql_type(flt: dict[str, Any], takes: str) -> None:
    with pytest.raises(QueryInvalid, match=f"column '{flt['column']}' {takes}"):
        validate(q(aggregate="count", filters=[flt]), TYPED)


def test_filter_values_of_the_right_type_pass() -> None:
    validate(q(aggregate="count", filters=[{"column": "day", "op": "in", "value": ["2026-01"]},
                                           {"column": "active", "op": "=", "value": True},
                                           {"column": "steps", "op": ">", "value": 2.5},
                                           {"column": "on", "op": ">=", "value": "2026-01-01"},
                                           {"column": "at", "op": "<", "value": "2026-01-01T10:00:00+00:00"}]), TYPED)
