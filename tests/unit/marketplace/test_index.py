"""The per-version index gives the same true figures as DuckDB's plain aggregate (before noise)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.marketplace.engine import LoadedVersion, QueryEngine
from services.marketplace.query import Query


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> tuple[QueryEngine, LoadedVersion]:
    rng = np.random.default_rng(3)
    n = 5_000
    income = rng.gamma(2.0, 20_000, n)
    income[rng.integers(0, n, 50)] = np.nan
    path = tmp_path_factory.mktemp("idx") / "v.parquet"
    pq.write_table(pa.table({
        "pseudonym": [f"p{i:05d}" for i in range(n)],
        "age_band": np.array(["18-24", "25-34", "35-44", "65+"])[rng.integers(0, 4, n)],
        "sex": np.array(["F", "M"])[rng.integers(0, 2, n)],
        "region": np.array(["north", "south", "east"])[rng.integers(0, 3, n)],
        "income": pa.array(income, from_pandas=True),
        "hours": rng.integers(0, 80, n),
    }), path)
    eng = QueryEngine("256MB")
    return eng, eng.load("d", 1, path, 1, groupable=("age_band", "sex", "region"))


def test_the_index_takes_the_few_valued_text_columns_as_dimensions(version: Any) -> None:
    _, v = version
    assert sorted(v.index.dims) == ["age_band", "region", "sex"]
    assert set(v.index.numeric) == {"income", "hours"}


@pytest.mark.parametrize("fields", [
    {"aggregate": "count"},
    {"aggregate": "count", "group_by": ["region", "age_band"]},
    {"aggregate": "sum", "column": "income", "bounds": [1_000, 60_000], "group_by": ["sex"]},
    {"aggregate": "mean", "column": "income", "bounds": [0, 1e9], "group_by": ["age_band", "sex", "region"],
     "filters": [{"column": "region", "op": "!=", "value": "east"}]},
    {"aggregate": "sum", "column": "hours", "bounds": [-10, 40],
     "filters": [{"column": "age_band", "op": "in", "value": ["18-24", "65+"]},
                 {"column": "sex", "op": ">=", "value": "M"}]},
    {"aggregate": "count", "group_by": ["sex"], "filters": [{"column": "region", "op": "not in",
                                                            "value": ["north", "nowhere"]}]},
])
def test_index_and_duckdb_agree(version: Any, fields: dict[str, Any]) -> None:
    eng, v = version
    query = Query.model_validate({**fields, "epsilon": 1.0})
    assert v.index.can_answer(query)
    cells_i, counts_i, sums_i = eng.true_cells(v, query)
    cells_s, counts_s, sums_s = eng.true_cells(v, query, use_index=False)
    assert cells_i == cells_s
    assert counts_i.tolist() == counts_s.tolist()
    if sums_s is not None:
        assert sums_i == pytest.approx(sums_s, rel=1e-9, abs=1e-6)


@pytest.mark.parametrize("fields", [
    {"aggregate": "histogram", "column": "income", "bounds": [0, 100_000]},
    {"aggregate": "count", "filters": [{"column": "hours", "op": ">", "value": 40}]},
    {"aggregate": "count", "filters": [{"column": "pseudonym", "op": "=", "value": "p00001"}]},
])
def test_what_the_index_cannot_answer_goes_to_duckdb(version: Any, fields: dict[str, Any]) -> None:
    _, v = version
    assert not v.index.can_answer(Query.model_validate({**fields, "epsilon": 1.0}))
