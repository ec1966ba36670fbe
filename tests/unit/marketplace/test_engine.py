"""The DP answers: the noise has the stated scale, clamping bounds one member's influence, and the
released cells do not depend on the filter."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from services.marketplace.engine import QueryEngine
from services.marketplace.query import Query

BANDS = ["20-29", "30-39", "40-49", "50-59"]


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
    return eng, eng.load("adult", 1, path, max_rows_per_member=1)


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
    (q(aggregate="sum", column="income", bounds=[0, 100_000], group_by=["age_band"], epsilon=1.0), "sum", 100_000),
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
    base = eng.load("d", 1, write_version(tmp_path / "a.parquet"), 1)
    plus_outlier = eng.load("d", 2, write_version(tmp_path / "b.parquet", [("20-29", "F", 1e12)]), 1)
    query = q(aggregate="sum", column="income", bounds=[0, 100_000], group_by=["age_band"], epsilon=1.0)
    _, _, sums_a = eng.true_cells(base, query)
    _, _, sums_b = eng.true_cells(plus_outlier, query)
    assert np.max(np.abs(sums_b - sums_a)) <= 100_000  # type: ignore[operator]
    answer = eng.answer(plus_outlier, query, np.random.default_rng(0))
    assert answer.sensitivity["sum"] == 100_000


def test_a_member_with_several_rows_scales_the_noise(tmp_path: Path) -> None:
    eng = QueryEngine("256MB")
    version = eng.load("d", 1, write_version(tmp_path / "a.parquet"), max_rows_per_member=3)
    answer = eng.answer(version, q(aggregate="count", epsilon=1.0), np.random.default_rng(0))
    assert answer.count_scale == 3.0 and answer.sensitivity["count"] == 3.0


def test_every_cell_is_released_whatever_the_filter(engine: Any) -> None:
    eng, version = engine
    answer = eng.answer(version, q(aggregate="count", group_by=["age_band", "sex"], epsilon=1.0,
                                   filters=[{"column": "age_band", "op": "=", "value": "20-29"}]),
                        np.random.default_rng(0))
    assert [(c["group"]["age_band"], c["group"]["sex"]) for c in answer.cells] == \
        [(b, s) for b in BANDS for s in ("F", "M")]


def test_a_histogram_has_every_bin_and_clamps_into_the_edge_bins(engine: Any) -> None:
    eng, version = engine
    query = q(aggregate="histogram", column="income", bounds=[0, 100_000], bins=4, epsilon=1.0)
    cells, counts, _ = eng.true_cells(version, query)
    assert len(cells) == 4 and counts.sum() == 400
    answer = eng.answer(version, query, np.random.default_rng(0))
    assert [c["bin"] for c in answer.cells][-1] == [75_000, 100_000]
