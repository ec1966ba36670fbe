from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import yaml

from services.anonymizer.definition import (
    DATASETS_DIR,
    DefinitionError,
    load_resolved,
    parse_definition,
    resolve,
    shared_dir,
)

ADULT = DATASETS_DIR / "adult-census.yaml"


def adult_raw() -> dict:
    return yaml.safe_load(Path(ADULT).read_text())


def refused(raw: dict) -> list[str]:
    with pytest.raises(DefinitionError) as e:
        resolve(parse_definition(raw))
    return e.value.problems


def test_every_versioned_definition_loads() -> None:
    for path in sorted(DATASETS_DIR.glob("*.yaml")):
        resolved = load_resolved(path)
        assert resolved.model.k >= 2
        assert set(resolved.hierarchies) == set(resolved.definition.quasi_identifiers)


def test_an_unknown_column_is_refused_by_name() -> None:
    raw = adult_raw()
    raw["sensitive"] = ["income"]
    raw["quasi_identifiers"]["zipcode"] = {"numeric_bands": {"min": 0, "max": 9, "widths": [5]}}
    problems = refused(raw)
    assert any("'income' is not a column" in p for p in problems)
    assert any("'zipcode' is not a column" in p for p in problems)


def test_a_hierarchy_lacking_a_value_the_column_can_take_is_refused() -> None:
    raw = adult_raw()
    raw["columns"]["age"] = {"type": "integer", "min": 0, "max": 120}
    raw["columns"]["race"]["values"].append("Martian")
    problems = refused(raw)
    assert any("'age' lacks 21 value(s)" in p and "'0'" in p for p in problems)
    assert any("'race' lacks 1 value(s)" in p and "'Martian'" in p for p in problems)


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("privacy", "k"), 1, "use k >= 2"),
    (("privacy", "suppression_limit"), 1.5, "not a fraction"),
    (("privacy", "t"), 0.0, "t-closeness needs 0 < t <= 1"),
    (("privacy", "l"), 3, "needs sensitive attributes"),
    (("aggregates", "epsilon"), 0.0, "epsilon > 0"),
    (("aggregates", "mechanism"), "gaussian", "needs aggregates.delta"),
])
def test_impossible_parameters_are_refused_with_the_fix(path, value, expected) -> None:
    raw = copy.deepcopy(adult_raw())
    raw[path[0]][path[1]] = value
    assert any(expected in p for p in refused(raw))


def test_l_above_the_sensitive_domain_is_refused() -> None:
    raw = yaml.safe_load((DATASETS_DIR / "adult-census-salary.yaml").read_text())
    raw["privacy"]["l"] = 3
    assert any("exceeds the 2 values" in p for p in refused(raw))


def test_unknown_keys_are_refused_at_parse_time() -> None:
    raw = adult_raw()
    raw["privacy"]["kk"] = 5
    with pytest.raises(DefinitionError, match="privacy.kk"):
        parse_definition(raw)


def test_shared_dir_comes_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DATACOOP_SHARED_DIR", str(tmp_path))
    with pytest.raises(DefinitionError, match="not found at " + str(tmp_path)):
        load_resolved(ADULT)


def test_generated_hierarchies_anonymize_a_table_end_to_end() -> None:
    from datetime import date, timedelta

    import numpy as np

    from services.anonymizer import anonymize

    raw = {
        "name": "visits", "version": 2, "purpose": "research.health", "data_categories": ["health"],
        "columns": {"age": {"type": "integer", "min": 0, "max": 99}, "zip": {"type": "categorical"},
                    "visit": {"type": "date", "first": "2024-01-01", "last": "2024-12-31"},
                    "diagnosis": {"type": "categorical", "values": ["a", "b", "c"]}, "note": {"type": "text"}},
        "quasi_identifiers": {
            "age": {"numeric_bands": {"min": 0, "max": 99, "widths": [5, 10, 50]}},
            "zip": {"postcode_prefix": {"length": 4, "keep": [3, 2, 1]}},
            "visit": {"dates": {"first": "2024-01-01", "last": "2024-12-31"}}},
        "sensitive": ["diagnosis"], "published_as_is": ["note"],
        "privacy": {"k": 3, "l": 2, "suppression_limit": 0.1},
        "aggregates": {"epsilon": 1.0},
    }
    definition = resolve(parse_definition(raw))
    rng = np.random.default_rng(5)
    n = 300
    columns = {"age": [int(a) for a in rng.integers(0, 100, n)],
               "zip": [f"{z:04d}" for z in rng.integers(0, 10_000, n)],
               "visit": [date(2024, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 366, n)],
               "diagnosis": [str(x) for x in rng.choice(["a", "b", "c"], n)], "note": ["free text"] * n}
    for mode in ("global", "multidimensional"):
        version = anonymize(columns, definition, mode=mode)
        assert version.report.rows_suppressed <= 30
        assert version.columns["note"] == ["free text"] * version.report.rows_published


def test_rows_per_member_default_to_one() -> None:
    resolved = load_resolved(ADULT)
    assert resolved.model.max_rows_per_member == 1 and resolved.model.row_k == resolved.model.k


@pytest.mark.parametrize("bad", [0, -2, 2.5, "3", True, None])
def test_a_bad_max_rows_per_member_is_refused_in_words(bad) -> None:
    raw = adult_raw()
    raw["privacy"]["max_rows_per_member"] = bad
    (problem,) = refused(raw)
    assert problem.startswith("privacy.max_rows_per_member: ") and "whole number >= 1" in problem
    assert "Value error" not in problem


def test_k_counts_members_and_the_search_asks_for_k_times_the_bound_in_rows() -> None:
    raw = adult_raw()
    raw["privacy"]["max_rows_per_member"] = 3
    model = resolve(parse_definition(raw)).model
    assert (model.k, model.max_rows_per_member, model.row_k) == (5, 3, 15)


@pytest.mark.parametrize(("path", "value", "field"), [
    ((), 100000000000000000000, "version"),
    ((), 2**31, "version"),
    (("privacy",), 10**30, "privacy.k"),
    (("privacy",), 10**20, "privacy.max_rows_per_member"),
    (("privacy",), 2**31, "privacy.l"),
])
def test_integers_beyond_what_the_projections_store_are_refused_naming_the_field(path, value, field) -> None:
    """An INTEGER column holds 32 bits: a definition past it would be written to the log and then fail every
    projection reading it (a poison event), so it is refused before anything is written."""
    raw = adult_raw()
    target = raw
    for key in path:
        target = target[key]
    target[field.rsplit(".", 1)[-1]] = value
    with pytest.raises(DefinitionError) as e:
        parse_definition(raw)
    assert any(p.startswith(f"{field}: ") for p in e.value.problems), e.value.problems


def test_hierarchy_and_column_integers_are_bounded_too() -> None:
    raw = adult_raw()
    raw["columns"]["age"] = {"type": "integer", "min": 0, "max": 10**12}
    raw["quasi_identifiers"]["age"] = {"numeric_bands": {"min": 0, "max": 99, "widths": [10**12]}}
    with pytest.raises(DefinitionError) as e:
        parse_definition(raw)
    assert any(p.startswith("columns.age.max: ") for p in e.value.problems), e.value.problems
    assert any(p.startswith("quasi_identifiers.age.numeric_bands.widths.0: ") for p in e.value.problems)


def test_a_quasi_identifier_domain_too_large_to_check_is_refused() -> None:
    raw = adult_raw()
    raw["columns"]["age"] = {"type": "integer", "min": 0, "max": 2_000_000_000}
    raw["quasi_identifiers"]["age"] = {"numeric_bands": {"min": 0, "max": 2_000_000_000, "widths": [10]}}
    problems = refused(raw)
    assert any("spans 2000000001 values" in p for p in problems), problems


@pytest.mark.parametrize("role", ["column", "quasi_identifier", "sensitive"])
def test_a_column_named_like_the_pseudonym_column_is_refused(role) -> None:
    """The build writes each member's keyed pseudonym in a column named `pseudonym` and counts k in its
    distinct values. A declared column of that name would overwrite it in the written table: the records'
    own `pseudonym` field published raw in place of the keyed one, and the last k check counting that
    field's values (which members write) instead of members."""
    raw = adult_raw()
    raw["columns"]["pseudonym"] = {"type": "categorical"}
    if role == "quasi_identifier":
        raw["quasi_identifiers"]["pseudonym"] = {"csv": "data/adult/adult_hierarchy_sex.csv"}
    elif role == "sensitive":
        raw["sensitive"] = ["pseudonym"]
    problems = refused(raw)
    assert any("'pseudonym'" in p and "reserved" in p for p in problems)


# -- every column in exactly one role ---------------------------------------------------------------

def _with_steps_and_postcode(**roles: list[str]) -> dict:
    """Adult plus two columns that identify in combination, placed in no role unless ``roles`` says."""
    raw = adult_raw()
    raw["columns"] |= {"steps": {"type": "integer", "min": 0, "max": 100_000}, "postcode": {"type": "categorical"}}
    raw.update(roles)
    return raw


def test_a_column_in_no_role_is_refused_naming_each_and_the_fix() -> None:
    """A column the author forgot to list would otherwise be published raw, silently."""
    problems = refused(_with_steps_and_postcode())
    for column in ("steps", "postcode"):
        assert (f"column {column!r} is in no role: list it under quasi_identifiers (generalized), sensitive, "
                "or published_as_is (published unchanged)") in problems, problems
    assert len(problems) == 2, "every other Adult column is a quasi-identifier"


def test_a_name_in_published_as_is_that_is_not_a_column_is_refused() -> None:
    problems = refused(_with_steps_and_postcode(published_as_is=["steps", "postcode", "shoe-size"]))
    assert problems == ["published_as_is names 'shoe-size', which is not a column; add it to columns or remove it"]


@pytest.mark.parametrize(("other_role", "expected"), [
    ("quasi_identifiers", "'age' is both a quasi-identifier and published as is; pick one"),
    ("sensitive", "'salary-class' is both sensitive and published as is; pick one"),
])
def test_a_column_in_two_roles_is_refused(other_role, expected) -> None:
    raw = _with_steps_and_postcode(published_as_is=["steps", "postcode"])
    if other_role == "quasi_identifiers":
        raw["published_as_is"].append("age")
    else:
        del raw["quasi_identifiers"]["salary-class"]
        raw["sensitive"] = ["salary-class"]
        raw["published_as_is"].append("salary-class")
    assert expected in refused(raw)


def test_columns_published_as_is_are_published_unchanged() -> None:
    from services.anonymizer import anonymize

    definition = resolve(parse_definition(_with_steps_and_postcode(published_as_is=["steps", "postcode"])))
    assert definition.passthrough == ["steps", "postcode"]
    with (shared_dir() / "data" / "adult" / "adult.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=";"))[:2001]
    columns: dict[str, list[object]] = {name: [r[i] for r in rows[1:]] for i, name in enumerate(rows[0])}
    columns["steps"] = [(7919 * i) % 100_000 for i in range(2000)]
    columns["postcode"] = [f"{(31 * i) % 97_000:05d}" for i in range(2000)]
    version = anonymize(columns, definition)
    kept = version.source_rows
    assert version.report.rows_published > 0
    assert version.columns["steps"] == [str(columns["steps"][r]) for r in kept]  # published as strings
    assert version.columns["postcode"] == [columns["postcode"][r] for r in kept]


def test_a_definition_replayed_from_the_log_with_a_column_in_no_role_still_builds_as_before() -> None:
    """Definitions accepted before the rule are in the log: replayed, their columns in no role are published
    unchanged, as they were then; the rule applies only to definitions being accepted."""
    raw = _with_steps_and_postcode()
    definition = resolve(parse_definition(raw), replayed=True)
    assert definition.passthrough == ["steps", "postcode"]
    assert refused(raw), "the same definition offered for acceptance is refused"


@pytest.mark.parametrize("text", [".inf", ".nan", "1e999"])
def test_a_non_finite_number_is_refused_at_parse_time(text: str) -> None:
    """YAML writes Infinity as .inf and NaN as .nan (and 1e999 overflows to inf): `epsilon > 0` alone let
    an infinite epsilon through, a budget with no privacy, and no event can carry one."""
    raw = adult_raw()
    raw["aggregates"]["epsilon"] = yaml.safe_load(text)
    with pytest.raises(DefinitionError, match=r"aggregates.epsilon.*finite number"):
        parse_definition(raw)
