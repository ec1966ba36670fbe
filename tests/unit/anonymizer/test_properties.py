"""Property tests: for random tables and hierarchies, every output meets its model and limit; with members
of several rows each, every published class holds k members (people, not rows)."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.anonymizer.anonymize import anonymize_table
from services.anonymizer.build import PSEUDONYM_COLUMN, build_version, dataset_key, pseudonyms, rows_to_table
from services.anonymizer.definition import ResolvedDefinition, parse_definition, resolve
from services.anonymizer.domain import published_event
from services.anonymizer.encoding import encode
from services.anonymizer.hierarchy import Hierarchy, from_rows
from services.anonymizer.lattice import GlobalRecoding, NoAnonymousNode, exhaustive_search, optimal_search
from services.anonymizer.mondrian import MondrianError
from services.anonymizer.privacy_checks import PrivacyViolation, verify_published
from services.anonymizer.privacy_model import PrivacyModel


def _hierarchy(name: str, n_leaves: int, fanouts: list[int]) -> Hierarchy:
    rows = []
    for j in range(n_leaves):
        row, group = [f"{name}{j}"], j
        for f in fanouts:
            group //= f
            row.append(f"{name}g{len(row)}_{group}")
        rows.append([*row, "*"])
    return from_rows(name, rows)


@st.composite
def problems(draw: st.DrawFn) -> tuple[dict[str, list[str]], dict[str, Hierarchy], PrivacyModel]:
    n_qis = draw(st.integers(1, 3))
    n_rows = draw(st.integers(0, 60))
    hierarchies: dict[str, Hierarchy] = {}
    columns: dict[str, list[str]] = {}
    for i in range(n_qis):
        name = f"q{i}"
        n_leaves = draw(st.integers(1, 8))
        fanouts = draw(st.lists(st.integers(2, 3), max_size=2))
        hierarchies[name] = _hierarchy(name, n_leaves, fanouts)
        columns[name] = [f"{name}{draw(st.integers(0, n_leaves - 1))}" for _ in range(n_rows)]
    columns["s"] = [f"s{draw(st.integers(0, 3))}" for _ in range(n_rows)]
    model = PrivacyModel(k=draw(st.integers(2, 5)), l=draw(st.integers(1, 3)),
                         l_kind=draw(st.sampled_from(["distinct", "entropy"])),
                         t=draw(st.sampled_from([None, 0.6])),
                         suppression_limit=draw(st.sampled_from([0.0, 0.1, 0.3, 1.0])))
    return columns, hierarchies, model


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(columns, hierarchies, model, mode) -> None:
    try:
        out = anonymize_table(columns, hierarchies, model, sensitive=["s"], mode=mode)
    except (NoAnonymousNode, MondrianError):
        return
    n = len(columns["s"])
    verify_published({q: out.columns[q] for q in hierarchies}, {"s": out.columns["s"]}, model,
                     {"s": {v: columns["s"].count(v) / n for v in set(columns["s"])}})
    assert out.report.rows_suppressed <= model.max_suppressed_rows(n)
    assert out.report.rows_published + out.report.rows_suppressed == n
    assert 0.0 <= out.report.loss <= 1.0


@SETTINGS
@given(problems())
def test_global_outputs_meet_the_model_within_the_limit(problem) -> None:
    _check(*problem, mode="global")


@SETTINGS
@given(problems())
def test_multidimensional_outputs_meet_the_model_within_the_limit(problem) -> None:
    _check(*problem, mode="multidimensional")


@SETTINGS
@given(problems())
def test_optimal_search_agrees_with_exhaustive_search(problem) -> None:
    columns, hierarchies, model = problem
    engine = GlobalRecoding(encode(columns, hierarchies, ["s"]), model)
    try:
        expected = exhaustive_search(engine).best
    except NoAnonymousNode:
        try:
            optimal_search(engine)
        except NoAnonymousNode:
            return
        raise AssertionError("optimal search found a node the exhaustive search did not") from None
    found = optimal_search(engine).best
    assert np.isclose(found.loss, expected.loss, atol=1e-12)
    assert found.node == expected.node


# -- k counts people: members with several rows ------------------------------------------------------

def _member_definition(k: int, max_rows: int, limit: float, l: int) -> ResolvedDefinition:  # noqa: E741
    return resolve(parse_definition({
        "name": "people", "version": 1, "purpose": "public-statistics", "data_categories": ["demographics"],
        "columns": {"age": {"type": "integer", "min": 0, "max": 99}, "disease": {"type": "categorical"}},
        "quasi_identifiers": {"age": {"numeric_bands": {"min": 0, "max": 99, "widths": [10, 50]}}},
        "sensitive": ["disease"],
        "privacy": {"k": k, "l": l, "suppression_limit": limit, "max_rows_per_member": max_rows},
        "aggregates": {"epsilon": 1.0, "value_column": "age", "value_bounds": [0, 99]}}))


@st.composite
def member_tables(draw: st.DrawFn) -> tuple[list[dict[str, object]], str, ResolvedDefinition]:
    """Members with 1-6 records each, and one target with many identical records (the only one of her age,
    as far as the draw goes): she alone has as many rows as a class needs under a row count."""
    records: list[dict[str, object]] = []
    target = "0x" + "aa" * 20
    for i in range(draw(st.integers(2, 6))):
        records.append({"record_id": f"t-{i:03d}", "member": target, "fields": {"age": 85, "disease": "hiv"}})
    for m in range(draw(st.integers(0, 14))):
        for j in range(draw(st.integers(1, 6))):
            records.append({"record_id": f"r-{m:03d}-{j:03d}", "member": f"0x{m:040x}",
                            "fields": {"age": draw(st.integers(0, 99)), "disease": f"d{draw(st.integers(0, 2))}"}})
    definition = _member_definition(k=draw(st.integers(2, 4)), max_rows=draw(st.integers(1, 3)),
                                    limit=draw(st.sampled_from([0.0, 0.2, 1.0])), l=draw(st.integers(1, 2)))
    return draw(st.permutations(records)), target, definition


def _classes(parquet: bytes) -> dict[str, set[str]]:
    """Published class (its generalized age) -> the distinct pseudonyms in it."""
    table = pq.read_table(io.BytesIO(parquet)).to_pylist()
    classes: dict[str, set[str]] = {}
    for row in table:
        classes.setdefault(row["age"], set()).add(row[PSEUDONYM_COLUMN])
    return classes


@SETTINGS
@given(member_tables(), st.sampled_from(["global", "multidimensional"]))
def test_a_member_with_many_identical_rows_never_forms_a_class_alone(problem, mode) -> None:
    records, target, definition = problem
    key = dataset_key(b"s" * 32, "people")
    try:
        built = build_version(rows_to_table(records, definition), definition, key, np.random.default_rng(0), mode)
    except (NoAnonymousNode, MondrianError):
        return
    k = definition.model.k
    theirs = pseudonyms(key, [target])[target]
    for label, people in _classes(built.parquet).items():
        assert len(people) >= k, f"class {label} holds {len(people)} member(s) < k={k}"
        if theirs in people:
            assert people - {theirs}, "the target forms a class alone"
    assert all(w <= definition.model.max_rows_per_member for w in built.contributor_weights.values())


@SETTINGS
@given(member_tables(), st.sampled_from(["global", "multidimensional"]))
def test_published_k_counts_people(problem, mode) -> None:
    records, _, definition = problem
    try:
        built = build_version(rows_to_table(records, definition), definition, b"k" * 32, np.random.default_rng(0),
                              mode)
    except (NoAnonymousNode, MondrianError):
        return
    classes = _classes(built.parquet)
    if not classes:
        assert built.achieved_k == 0
        return
    assert built.achieved_k == min(len(people) for people in classes.values()) >= definition.model.k
    event = published_event("people", 1, definition, "file:///v1.parquet", built.sha256, built.report,
                            built.columns, built.contributor_weights, built.achieved_k, built.achieved_l,
                            datetime.now(UTC))
    assert event.k == built.achieved_k


@SETTINGS
@given(problems(), st.integers(1, 3), st.data())
def test_engine_classes_hold_k_owners_when_owners_bound_their_rows(problem, max_rows, data) -> None:
    """The engine alone: each owner has at most `max_rows` rows; every class has k distinct owners."""
    columns, hierarchies, model = problem
    n = len(columns["s"])
    model = replace(model, max_rows_per_member=max_rows)
    owners = [f"m{i // max_rows}" for i in range(n)]
    owners = data.draw(st.permutations(owners))
    mode = data.draw(st.sampled_from(["global", "multidimensional"]))
    try:
        out = anonymize_table(columns, hierarchies, model, sensitive=["s"], mode=mode, owners=owners)
    except (NoAnonymousNode, MondrianError):
        return
    people: dict[tuple[str, ...], set[str]] = {}
    for r, row in enumerate(out.source_rows):
        people.setdefault(tuple(out.columns[q][r] for q in hierarchies), set()).add(owners[row])
    assert all(len(p) >= model.k for p in people.values())


def test_rows_alone_are_not_people() -> None:
    """The last check refuses a class of k rows that are one member's."""
    with pytest.raises(PrivacyViolation, match="1 member"):
        verify_published({"age": ["80-89"] * 3 + ["20-29"] * 3}, {}, PrivacyModel(k=3),
                         owners=["target"] * 3 + ["a", "b", "c"])
    verify_published({"age": ["80-89"] * 3}, {}, PrivacyModel(k=3), owners=["a", "b", "c"])
