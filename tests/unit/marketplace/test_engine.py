"""The DP answers: the noise has the stated scale, clamping bounds one member's influence, group-by
is refused on the pseudonym and undeclared columns, and which grouped cells show does not depend on
one member's rows (partition selection)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from services.marketplace.engine import QueryEngine, selection_threshold
from services.marketplace.query import Query, QueryInvalid

BANDS = ["20-29", "30-39", "40-49", "50-59"]
GROUPABLE = ("age_band", "sex")


def write_version(path: Path, extra: list[tuple[str, str, float]] = ()) -> Path:  # type: ignore[assignment]
    rng = np.random.default_rng(7)
    n = 400
    rows = [(BANDS[i % 4], "F" if i % 3 else "M", float(rng.integers(0, 150_000))) for i in range(n)]
    rows += list(extra)
    pq.write_table(pa.table({"age_band": [r[0] for r in rows], "sex": [r[1] for r in rows],
                             "income": [r[2] for r in rows]}), path)
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[QueryEngine, Any]:
    eng = QueryEngine("256MB")
    path = write_version(tmp_path_factory.mktemp("v") / "v1.parquet")
    return eng, eng.load("adult", 1, path, max_rows_per_member=1, groupable=GROUPABLE)


def q(**fields: Any) -> Query:
    return Query.model_validate(fields)


def errors(eng: QueryEngine, version: Any, query: Query, key: str, runs: int = 2000) -> tuple[np.ndarray, float]:
    """Noisy minus true value of the first cell over `runs` answers (fixed seed), and the stated scale."""
    _, counts, sums = eng.true_cells(version, query)
    truth = counts[0] if key == "count" else sums[0]  # type: ignore[index]
    rng = np.random.default_rng(20260101)
    out, scale = [], 0.0
    for _ in range(runs):
        answer = eng.answer(version, query, rng)
        out.append(answer.cells[0][key] - truth)
        scale = answer.count_scale if key == "count" else answer.sum_scale  # type: ignore[assignment]
    return np.array(out), scale


@pytest.mark.parametrize(("query", "key", "scale"), [
    (q(aggregate="count", epsilon=0.5), "count", 1 / 0.5),
    # grouped: half the epsilon goes to the counts that select the cells shown
    (q(aggregate="sum", column="income", bounds=[0, 100_000], group_by=["age_band"], epsilon=1.0), "sum", 200_000),
])
def test_the_empirical_spread_matches_the_stated_laplace_scale(engine: Any, query: Query, key: str,
                                                               scale: float) -> None:
    eng, version = engine
    errs, stated = errors(eng, version, query, key)
    assert stated == pytest.approx(scale)
    assert np.std(errs) == pytest.approx(stated * math.sqrt(2), rel=0.06)
    assert abs(np.mean(errs)) < 4 * stated * math.sqrt(2) / math.sqrt(len(errs))
    assert stats.kstest(errs, "laplace", args=(0, stated)).pvalue > 0.01


def test_a_mean_splits_epsilon_between_count_and_sum(engine: Any) -> None:
    eng, version = engine
    answer = eng.answer(version, q(aggregate="mean", column="income", bounds=[0, 50_000], epsilon=1.0),
                        np.random.default_rng(1))
    assert answer.count_scale == pytest.approx(2.0) and answer.sum_scale == pytest.approx(100_000)
    assert 0 <= answer.cells[0]["mean"] <= 50_000


def test_clamping_bounds_what_one_member_can_change(tmp_path: Path) -> None:
    eng = QueryEngine("256MB")
    base = eng.load("d", 1, write_version(tmp_path / "a.parquet"), 1, groupable=GROUPABLE)
    plus_outlier = eng.load("d", 2, write_version(tmp_path / "b.parquet", [("20-29", "F", 1e12)]), 1,
                            groupable=GROUPABLE)
    query = q(aggregate="sum", column="income", bounds=[0, 100_000], group_by=["age_band"], epsilon=1.0)
    _, _, sums_a = eng.true_cells(base, query)
    _, _, sums_b = eng.true_cells(plus_outlier, query)
    assert np.max(np.abs(sums_b - sums_a)) <= 100_000  # type: ignore[operator]
    answer = eng.answer(plus_outlier, query, np.random.default_rng(0))
    assert answer.sensitivity["sum"] == 100_000


def test_a_member_with_several_rows_scales_the_noise(tmp_path: Path) -> None:
    eng = QueryEngine("256MB")
    version = eng.load("d", 1, write_version(tmp_path / "a.parquet"), max_rows_per_member=3, groupable=GROUPABLE)
    answer = eng.answer(version, q(aggregate="count", epsilon=1.0), np.random.default_rng(0))
    assert answer.count_scale == 3.0 and answer.sensitivity["count"] == 3.0


def test_grouped_cells_come_from_the_whole_version_and_show_above_the_threshold(engine: Any) -> None:
    eng, version = engine
    answer = eng.answer(version, q(aggregate="count", group_by=["age_band", "sex"], epsilon=1.0,
                                   filters=[{"column": "age_band", "op": "=", "value": "20-29"}]),
                        np.random.default_rng(0))
    assert [(c["group"]["age_band"], c["group"]["sex"]) for c in answer.cells] == [("20-29", "F"), ("20-29", "M")]
    assert all(c["count"] > answer.threshold for c in answer.cells)
    assert answer.noise_view()["partition_selection"]["delta"] == 1e-6


def test_a_histogram_has_every_bin_and_clamps_into_the_edge_bins(engine: Any) -> None:
    eng, version = engine
    query = q(aggregate="histogram", column="income", bounds=[0, 100_000], bins=4, epsilon=1.0)
    cells, counts, _ = eng.true_cells(version, query)
    assert len(cells) == 4 and counts.sum() == 400
    answer = eng.answer(version, query, np.random.default_rng(0))
    assert [c["bin"] for c in answer.cells][-1] == [75_000, 100_000]


def one_rare_row(tmp_path: Path, with_victim: bool, name: str) -> Path:
    """1,000 members with one row each (flu), and maybe one more member, the only one with HIV."""
    n = 1_000
    rows = {"pseudonym": [f"p{i:04d}" for i in range(n)], "age": ["20-29"] * n, "diagnosis": ["flu"] * n,
            "income": [float(i) for i in range(n)]}
    if with_victim:
        for column, value in (("pseudonym", "victim"), ("age", "20-29"), ("diagnosis", "HIV"), ("income", 1.0)):
            rows[column].append(value)  # type: ignore[attr-defined]
    path = tmp_path / name
    pq.write_table(pa.table(rows), path)
    return path


def test_group_by_the_pseudonym_or_an_undeclared_column_is_refused_naming_the_allowed(tmp_path: Path) -> None:
    eng = QueryEngine("256MB")
    version = eng.load("d", 1, one_rare_row(tmp_path, True, "v.parquet"), 1, groupable=("age", "diagnosis"))
    for column in ("pseudonym", "income"):
        with pytest.raises(QueryInvalid, match="allowed: age, diagnosis"):
            eng.answer(version, q(aggregate="count", group_by=[column], epsilon=1.0), np.random.default_rng(0))
    unknown = eng.load("d", 2, one_rare_row(tmp_path, True, "w.parquet"), 1, groupable=())
    with pytest.raises(QueryInvalid, match="allowed: none"):
        eng.answer(unknown, q(aggregate="count", group_by=["diagnosis"], epsilon=1.0), np.random.default_rng(0))


@pytest.mark.parametrize("query", [
    q(aggregate="count", group_by=["diagnosis"], epsilon=0.01),
    q(aggregate="count", group_by=["diagnosis"], epsilon=1.0),
    q(aggregate="count", group_by=["age", "diagnosis"], epsilon=5.0),
    q(aggregate="sum", column="income", bounds=[0, 10], group_by=["diagnosis"], epsilon=2.0),
    q(aggregate="mean", column="income", bounds=[0, 10], group_by=["diagnosis"], epsilon=2.0),
    q(aggregate="histogram", column="income", bounds=[0, 1_000], bins=4, group_by=["diagnosis"], epsilon=2.0),
])
def test_a_value_only_one_member_has_never_shows_and_the_cells_shown_do_not_tell_it(tmp_path: Path,
                                                                                   query: Query) -> None:
    eng = QueryEngine("256MB")
    with_victim = eng.load("d", 1, one_rare_row(tmp_path, True, "a.parquet"), 1, groupable=("age", "diagnosis"))
    without = eng.load("d", 2, one_rare_row(tmp_path, False, "b.parquet"), 1, groupable=("age", "diagnosis"))
    rng = np.random.default_rng(20260101)
    shown: dict[str, dict[tuple[Any, ...], int]] = {"with": {}, "without": {}}
    runs = 300
    for _ in range(runs):
        for key, version in (("with", with_victim), ("without", without)):
            for cell in eng.answer(version, query, rng).cells:
                group = (*cell["group"].values(), *cell.get("bin", []))
                shown[key][group] = shown[key].get(group, 0) + 1
    assert not any("HIV" in group for group in shown["with"]), shown["with"]
    assert shown["with"].keys() == shown["without"].keys()
    for group, times in shown["with"].items():  # each cell shows about as often with or without the member
        assert abs(times - shown["without"][group]) <= max(0.2 * runs, 5 * math.sqrt(runs)), (group, shown)


def test_a_cell_at_the_threshold_shows_about_half_the_time(tmp_path: Path) -> None:
    """The threshold is applied to the noisy count: a cell whose true count equals it shows with
    probability 1/2, one 3 scales below almost never, one 3 scales above almost always."""
    eng = QueryEngine("256MB")
    epsilon, delta = 1.0, 1e-6
    tau = selection_threshold(1, 1 / epsilon, epsilon, delta)
    assert tau == pytest.approx(1 + (epsilon + math.log(1 / (2 * delta))) / epsilon)
    sizes = {"at": round(tau), "below": round(tau) - 3, "above": round(tau) + 3}
    n = sum(sizes.values())
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"group": [g for g, size in sizes.items() for _ in range(size)],
                             "x": [1.0] * n}), path)
    version = eng.load("t", 1, path, 1, groupable=("group",))
    rng = np.random.default_rng(7)
    runs = 2_000
    shown = dict.fromkeys(sizes, 0)
    for _ in range(runs):
        answer = eng.answer(version, q(aggregate="count", group_by=["group"], epsilon=epsilon), rng, delta)
        assert answer.threshold == pytest.approx(tau)
        for cell in answer.cells:
            shown[cell["group"]["group"]] += 1
    offset = round(tau) - tau  # the "at" cell's true count is within 0.5 of tau
    expected_at = 1 - 0.5 * math.exp(-offset) if offset >= 0 else 0.5 * math.exp(offset)
    assert abs(shown["at"] / runs - expected_at) < 0.06
    assert shown["below"] / runs < 0.06 and shown["above"] / runs > 0.94


def test_the_noise_is_drawn_at_the_epsilon_charged_not_the_raw_float(engine: Any) -> None:
    """1.49e-06 is charged 2 micro-epsilon: the noise must be drawn at 2e-06 too, never at 1.49e-06 (which
    would spend more privacy than the budget records)."""
    eng, loaded = engine
    query = Query.model_validate({"aggregate": "count", "epsilon": 1.49e-6})
    answer = eng.answer(loaded, query, np.random.default_rng(1))
    assert query.epsilon_micro == 2
    assert answer.count_scale == pytest.approx(1 / 2e-6)


@pytest.mark.parametrize("body", [
    {"aggregate": "sum", "column": "income", "bounds": [0, 1e308], "epsilon": 0.1},
    {"aggregate": "mean", "column": "income", "bounds": [-1e300, 0], "epsilon": 1e-6},
])
def test_bounds_that_make_the_noise_scale_useless_are_refused_before_the_data_is_read(engine: Any,
                                                                                      body: dict[str, Any]) -> None:
    eng, loaded = engine
    with pytest.raises(QueryInvalid, match="noise scale"):
        eng.answer(loaded, Query.model_validate(body), np.random.default_rng(1))
