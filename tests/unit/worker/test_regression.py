"""OLS and logistic regression match statsmodels OLS / Logit (unpenalized) on the same data."""

import numpy as np
import pyarrow as pa
import pytest
import statsmodels.api as sm
from scipy import stats

from services.worker.analytics import AnalysisFailed, run_analysis
from services.worker.analytics.regression import _t_quantile_975, _t_sf

PARAM_RTOL = 1e-6
SE_RTOL = 1e-5


def _frame(table: pa.Table, y: str, x: list[str]) -> tuple[np.ndarray, np.ndarray]:
    frame = table.select([y, *x]).to_pandas().dropna()
    return frame[y].to_numpy(float), sm.add_constant(frame[x].to_numpy(float))


def test_ols_matches_statsmodels(mixed_table: pa.Table) -> None:
    result = run_analysis("ols", {"y": "b", "x": ["a", "c", "flag"]}, mixed_table).result
    y, x = _frame(mixed_table, "b", ["a", "c", "flag"])
    fit = sm.OLS(y, x).fit()
    assert result["names"] == ["const", "a", "c", "flag"]
    assert result["n"] == 397 and result["rows_dropped"] == 3
    assert result["params"] == pytest.approx(fit.params, rel=PARAM_RTOL)
    assert result["bse"] == pytest.approx(fit.bse, rel=SE_RTOL)
    assert result["statistic"] == pytest.approx(fit.tvalues, rel=SE_RTOL)
    assert result["p_values"] == pytest.approx(fit.pvalues, rel=1e-6, abs=1e-14)
    assert np.array(result["conf_int_95"]) == pytest.approx(fit.conf_int(0.05), rel=1e-6)
    assert result["rsquared"] == pytest.approx(fit.rsquared, rel=1e-10)
    assert result["rsquared_adj"] == pytest.approx(fit.rsquared_adj, rel=1e-10)


def test_ols_without_intercept_matches_statsmodels(mixed_table: pa.Table) -> None:
    result = run_analysis("ols", {"y": "b", "x": ["a", "c"], "intercept": False}, mixed_table).result
    y, x = _frame(mixed_table, "b", ["a", "c"])
    fit = sm.OLS(y, x[:, 1:]).fit()
    assert result["params"] == pytest.approx(fit.params, rel=PARAM_RTOL)
    assert result["bse"] == pytest.approx(fit.bse, rel=SE_RTOL)
    assert result["rsquared"] == pytest.approx(fit.rsquared, rel=1e-10)


def test_logistic_matches_statsmodels_logit(mixed_table: pa.Table) -> None:
    progress: list[float] = []
    result = run_analysis("logistic", {"y": "outcome", "x": ["a", "b", "flag"]}, mixed_table,
                          progress.append).result
    y, x = _frame(mixed_table, "outcome", ["a", "b", "flag"])
    fit = sm.Logit(y, x).fit(disp=0, method="newton", tol=1e-12)
    assert result["converged"]
    assert result["params"] == pytest.approx(fit.params, rel=PARAM_RTOL)
    assert result["bse"] == pytest.approx(fit.bse, rel=SE_RTOL)
    assert result["p_values"] == pytest.approx(fit.pvalues, rel=1e-5)
    assert result["llf"] == pytest.approx(fit.llf, rel=1e-10)
    assert result["llnull"] == pytest.approx(fit.llnull, rel=1e-10)
    assert result["pseudo_rsquared"] == pytest.approx(fit.prsquared, rel=1e-8)
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_logistic_on_a_larger_sample_matches_statsmodels() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20_000, 5))
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(x @ [0.5, -1.0, 0.0, 2.0, 0.1] + 0.3)))).astype(float)
    table = pa.table({f"x{i}": x[:, i] for i in range(5)} | {"y": y})
    result = run_analysis("logistic", {"y": "y", "x": [f"x{i}" for i in range(5)]}, table).result
    fit = sm.Logit(y, sm.add_constant(x)).fit(disp=0)
    assert result["params"] == pytest.approx(fit.params, rel=PARAM_RTOL)
    assert result["bse"] == pytest.approx(fit.bse, rel=SE_RTOL)


def test_collinear_predictors_are_refused_by_name_of_the_problem() -> None:
    table = pa.table({"y": [1.0, 2.0, 3.0, 5.0, 4.0], "u": [1.0, 2.0, 3.0, 4.0, 5.0],
                      "v": [2.0, 4.0, 6.0, 8.0, 10.0]})
    with pytest.raises(AnalysisFailed, match="collinear"):
        run_analysis("ols", {"y": "y", "x": ["u", "v"]}, table, min_group_size=1)


def test_logistic_needs_a_binary_outcome(mixed_table: pa.Table) -> None:
    with pytest.raises(AnalysisFailed, match="must be 0/1"):
        run_analysis("logistic", {"y": "c", "x": ["a"]}, mixed_table)


def test_a_constant_outcome_is_reported() -> None:
    table = pa.table({"y": [1, 1, 1, 1], "u": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(AnalysisFailed, match="always 1"):
        run_analysis("logistic", {"y": "y", "x": ["u"]}, table, min_group_size=1)


def test_perfect_separation_is_reported_not_returned() -> None:
    table = pa.table({"y": [0, 0, 0, 1, 1, 1], "u": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    with pytest.raises(AnalysisFailed, match="perfectly separated"):
        run_analysis("logistic", {"y": "y", "x": ["u"], "max_iter": 60}, table, min_group_size=1)


@pytest.mark.parametrize(("t", "df"), [(0.0, 3), (0.5, 1), (2.1, 7), (-3.3, 30), (12.0, 5), (1.96, 10_000)])
def test_t_p_values_match_scipy(t: float, df: int) -> None:
    assert _t_sf(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-10, abs=1e-300)


@pytest.mark.parametrize("df", [1, 4, 30, 1000])
def test_t_quantile_matches_scipy(df: int) -> None:
    assert _t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
