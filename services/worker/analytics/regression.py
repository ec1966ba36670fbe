"""Ordinary least squares and (unpenalized) logistic regression, with standard errors.

Both solve in float64 (normal equations / Newton-Raphson on X'WX accumulated over row chunks), so the
NumPy and CuPy paths agree to about 1e-9 relative and match statsmodels OLS/Logit to about 1e-6.
p-values: Student t (OLS, df = n - p) and normal (logistic), as statsmodels reports them.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, StrictBool, StrictInt

from services.worker.analytics.backend import backend_name, jsonable, to_numpy
from services.worker.analytics.data import MAX_SQUARABLE, numeric_block
from services.worker.analytics.outcome import AnalysisOutcome, Progress
from services.worker.analytics.validation import (
    AnalysisFailed,
    AnalysisParams,
    JobRefused,
    Schema,
    require_distinct,
    require_numeric,
    require_rows,
)

CHUNK_BYTES = 1 << 25  # ~32 MiB of float64 per row chunk on CPU: bounds the X * w temporary
CHUNK_BYTES_GPU = 1 << 30  # on GPU, few large chunks: kernel launches amortize


class RegressionParams(AnalysisParams):
    y: str
    x: list[str] = Field(min_length=1, max_length=512)
    intercept: StrictBool = True

    @property
    def names(self) -> list[str]:
        return (["const"] if self.intercept else []) + list(self.x)

    def check(self, schema: Schema, n_rows: int, min_group_size: int) -> None:
        require_numeric(schema, [self.y], "outcome (y)")
        require_distinct(self.x, "predictor (x)")
        require_numeric(schema, self.x, "predictor (x)")
        if self.y in self.x:
            raise JobRefused(f"column {self.y!r} is both the outcome and a predictor; remove it from x")
        require_rows(n_rows, max(len(self.names) + 1, min_group_size),
                     f"a regression on {len(self.names)} coefficients")


class OlsParams(RegressionParams):
    pass


class LogisticParams(RegressionParams):
    max_iter: StrictInt = Field(default=50, ge=1, le=1000)
    tol: float = Field(default=1e-8, gt=0, le=1e-2, allow_inf_nan=False)


def _design(params: RegressionParams, table: pa.Table, xp: ModuleType,
            min_group_size: int) -> tuple[Any, Any, int]:
    """Design matrix (column-major, intercept first when asked), outcome, rows dropped; values beyond
    MAX_SQUARABLE are refused (X'X would overflow and read as collinear)."""
    block = numeric_block(table, [*params.x, params.y], xp, min_rows=max(len(params.names) + 1, min_group_size),
                          order="F", constant_first=params.intercept, max_abs=MAX_SQUARABLE)
    return block.values[:, :-1], block.values[:, -1], block.rows_dropped


def _require_full_rank(xp: ModuleType, gram: Any, names: list[str]) -> None:
    """Refuse a singular (or numerically singular) X'X, naming columns that are all zero."""
    diag = to_numpy(xp.diag(gram))
    zero = [names[i] for i in np.flatnonzero(diag <= 0)]
    if zero:
        raise AnalysisFailed(f"predictor(s) {', '.join(zero)} are all zero; remove them")
    scale = 1.0 / xp.sqrt(xp.diag(gram))
    eig = to_numpy(xp.linalg.eigvalsh(gram * xp.outer(scale, scale)))
    if eig[0] <= eig[-1] * 1e-12:
        raise AnalysisFailed("the predictors are collinear (one is a combination of the others, or constant "
                             "alongside the intercept); remove the redundant column(s)")


def _t_sf(t: float, df: float) -> float:
    """Two-sided p-value of Student's t: I_{df/(df+t^2)}(df/2, 1/2)."""
    if not math.isfinite(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by Lentz's continued fraction (1e-15 relative)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f / a


def _normal_sf2(z: float) -> float:
    """Two-sided normal p-value."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def _table(names: list[str], coef: np.ndarray, se: np.ndarray, stat: np.ndarray, p: list[float],
           crit: float) -> dict[str, Any]:
    return {"names": names, "params": coef, "bse": se, "statistic": stat, "p_values": p,
            "conf_int_95": np.stack([coef - crit * se, coef + crit * se], axis=1)}


def ols(params: OlsParams, table: pa.Table, xp: ModuleType, progress: Progress,
        min_group_size: int) -> AnalysisOutcome:
    """OLS by normal equations in float64; bse = sqrt(diag(s^2 (X'X)^-1)), s^2 = SSR / (n - p).

    R^2 is centered with an intercept and uncentered without one (as statsmodels does).
    Raises AnalysisFailed for collinear predictors.
    """
    x, y, dropped = _design(params, table, xp, min_group_size)
    n, p = x.shape
    gram = x.T @ x
    _require_full_rank(xp, gram, params.names)
    gram_inv = xp.linalg.inv(gram)
    coef = gram_inv @ (x.T @ y)
    resid = y - x @ coef
    ssr = float(resid @ resid)
    df_resid = n - p
    sigma2 = ssr / df_resid
    se = xp.sqrt(sigma2 * xp.diag(gram_inv))
    tss = float(((y - y.mean()) ** 2).sum()) if params.intercept else float(y @ y)
    coef_h, se_h = to_numpy(coef), to_numpy(se)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = coef_h / se_h
    r2 = 1.0 - ssr / tss if tss > 0 else None
    crit = _t_quantile_975(df_resid)
    progress(1.0)
    result = {"backend": backend_name(xp), "model": "ols", "y": params.y, "n": n, "rows_dropped": dropped,
              "df_resid": df_resid,
              **_table(params.names, coef_h, se_h, t, [_t_sf(v, df_resid) for v in t], crit),
              "rsquared": r2,
              "rsquared_adj": None if r2 is None else 1.0 - (1.0 - r2) * (n - params.intercept) / df_resid,
              "sigma": math.sqrt(sigma2)}
    return AnalysisOutcome(jsonable(result))


def _t_quantile_975(df: float) -> float:
    """The 0.975 quantile of Student's t by bisection on _t_sf (for 95% intervals)."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if _t_sf(mid, df) > 0.05 else (lo, mid)
    return (lo + hi) / 2.0


def _logit_pieces(xp: ModuleType, x: Any, y: Any, beta: Any) -> tuple[float, Any, Any]:
    """Log-likelihood, gradient and Fisher information X'WX at beta, accumulated over row chunks."""
    n, p = x.shape
    budget = CHUNK_BYTES if backend_name(xp) == "numpy" else CHUNK_BYTES_GPU
    rows = max(1024, budget // (8 * p))  # x is column-major: a row chunk is p strided columns
    grad = xp.zeros(p)
    info = xp.zeros((p, p))
    weighted = xp.empty((min(rows, n), p), order="F")  # reused: fresh large buffers cost page faults
    loglik = 0.0
    for start in range(0, n, rows):
        xc, yc = x[start:start + rows], y[start:start + rows]
        eta = xc @ beta
        mu = 1.0 / (1.0 + xp.exp(-xp.clip(eta, -700.0, 700.0)))
        grad += xc.T @ (yc - mu)
        wc = weighted[: xc.shape[0]]
        xp.multiply(xc, xp.sqrt(mu * (1.0 - mu))[:, None], out=wc)
        info += wc.T @ wc  # A'A of one buffer: BLAS syrk, half the flops of a general product
        loglik += float((yc * eta - xp.logaddexp(0.0, eta)).sum())
    return loglik, grad, info


def _separation(params: LogisticParams, what: str) -> str:
    return (f"logistic regression of {params.y!r} {what}; the outcome is probably perfectly separated "
            "by a predictor (or a combination): drop or coarsen it, or raise max_iter")


def _newton_step(xp: ModuleType, info: Any, grad: Any, params: LogisticParams) -> Any:
    """Solve info @ step = grad; a singular information matrix means the fit ran off to infinity."""
    try:
        step = xp.linalg.solve(info, grad)
    except np.linalg.LinAlgError:
        raise AnalysisFailed(_separation(params, "hit a singular information matrix")) from None
    if not bool(xp.isfinite(step).all()):
        raise AnalysisFailed(_separation(params, "diverged"))
    return step


def logistic(params: LogisticParams, table: pa.Table, xp: ModuleType, progress: Progress,
             min_group_size: int) -> AnalysisOutcome:
    """Unpenalized logistic regression by Newton-Raphson with step halving; y must be 0/1.

    Converged when the largest coefficient change is below `tol`. bse = sqrt(diag((X'WX)^-1)) at the
    estimate. Raises AnalysisFailed when y is not binary, the predictors are collinear, or the fit
    does not converge within max_iter (typically perfect separation).
    """
    x, y, dropped = _design(params, table, xp, min_group_size)
    n, p = x.shape
    if bool(((y != 0) & (y != 1)).any()):
        raise AnalysisFailed(f"outcome {params.y!r} must be 0/1 for logistic regression; recode it")
    ybar = float(y.mean())
    if ybar in (0.0, 1.0):
        raise AnalysisFailed(f"outcome {params.y!r} is always {int(ybar)} in the rows used; logistic "
                             "regression needs both 0s and 1s")
    beta = xp.zeros(p)
    loglik, grad, info = _logit_pieces(xp, x, y, beta)
    _require_full_rank(xp, info, params.names)  # at beta = 0, info = X'X / 4
    converged, iterations = False, 0
    for iterations in range(1, params.max_iter + 1):
        step = _newton_step(xp, info, grad, params)
        for _ in range(30):
            candidate = beta + step
            new_loglik, new_grad, new_info = _logit_pieces(xp, x, y, candidate)
            if new_loglik >= loglik - 1e-12 * abs(loglik):
                break
            step = step / 2.0
        beta, loglik, grad, info = candidate, new_loglik, new_grad, new_info
        progress(min(0.99, iterations / params.max_iter))
        if float(xp.abs(step).max()) < params.tol:
            converged = True
            break
    if not converged:
        raise AnalysisFailed(_separation(params, f"did not converge in {params.max_iter} iterations"))
    se = to_numpy(xp.sqrt(xp.diag(xp.linalg.inv(info))))
    coef = to_numpy(beta)
    z = coef / se
    llnull = n * (ybar * math.log(ybar) + (1 - ybar) * math.log1p(-ybar)) if 0 < ybar < 1 else 0.0
    progress(1.0)
    result = {"backend": backend_name(xp), "model": "logit", "y": params.y, "n": n, "rows_dropped": dropped,
              "df_resid": n - p,
              **_table(params.names, coef, se, z, [_normal_sf2(v) for v in z], 1.959963984540054),
              "llf": loglik, "llnull": llnull if params.intercept else None,
              "pseudo_rsquared": 1.0 - loglik / llnull if params.intercept and llnull else None,
              "iterations": iterations, "converged": converged}
    return AnalysisOutcome(jsonable(result))
