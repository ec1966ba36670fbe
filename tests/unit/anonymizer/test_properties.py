"""Property tests: for random tables and hierarchies, every output meets its model and limit."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.anonymizer.anonymize import anonymize_table
from services.anonymizer.encoding import encode
from services.anonymizer.hierarchy import Hierarchy, from_rows
from services.anonymizer.lattice import GlobalRecoding, NoAnonymousNode, exhaustive_search, optimal_search
from services.anonymizer.mondrian import MondrianError
from services.anonymizer.privacy_checks import verify_published
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
