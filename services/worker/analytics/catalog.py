"""The catalog of vetted analyses, and the one entry point the worker calls.

`validate_job` can run at submission (jobs service) and again on the worker; `run_analysis`
validates, then computes on the selected array module. Both raise JobRefused before any compute
when the job doesn't fit the dataset; `run_analysis` raises AnalysisFailed when the data can't
support the analysis (collinear predictors, non-binary outcome, no convergence, every group
smaller than the minimum). Both take `min_group_size`, the fewest rows a reported number may rest
on (disclosure.py); analyses suppress smaller groups and say how many they left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.types as pat
from pydantic import ValidationError

from services.worker.analytics import descriptive, kmeans, pca, regression
from services.worker.analytics.backend import select_xp
from services.worker.analytics.disclosure import DEFAULT_MIN_GROUP_SIZE
from services.worker.analytics.outcome import AnalysisOutcome, Progress, no_progress
from services.worker.analytics.validation import AnalysisParams, JobRefused, Schema, require_version_rows


@dataclass(frozen=True)
class Analysis:
    params: type[AnalysisParams]
    run: Callable[[Any, pa.Table, ModuleType, Progress, int], AnalysisOutcome]
    """(params, table, xp, progress, min_group_size) -> outcome"""
    summary: str


CATALOG: dict[str, Analysis] = {
    "describe": Analysis(descriptive.DescribeParams, descriptive.describe, "per-column summary statistics"),
    "aggregate": Analysis(descriptive.AggregateParams, descriptive.aggregate,
                          "grouped count/sum/mean/min/max/std"),
    "histogram": Analysis(descriptive.HistogramParams, descriptive.histogram, "binned counts, PNG"),
    "correlation": Analysis(descriptive.CorrelationParams, descriptive.correlation,
                            "Pearson/Spearman matrix"),
    "ols": Analysis(regression.OlsParams, regression.ols, "linear regression with standard errors"),
    "logistic": Analysis(regression.LogisticParams, regression.logistic, "logistic regression (unpenalized)"),
    "kmeans": Analysis(kmeans.KMeansParams, kmeans.kmeans, "k-means++ / Lloyd clustering, PNG"),
    "pca": Analysis(pca.PcaParams, pca.pca, "principal components, PNG"),
}


def schema_of(table: pa.Table) -> dict[str, str]:
    """The simple {column: type} schema of an Arrow table ("int", "float", "bool", "str", or other)."""
    def kind(t: pa.DataType) -> str:
        if pat.is_boolean(t):
            return "bool"
        if pat.is_integer(t):
            return "int"
        if pat.is_floating(t) or pat.is_decimal(t):
            return "float"
        if pat.is_string(t) or pat.is_large_string(t) or pat.is_dictionary(t):
            return "str"
        return str(t)
    return {field.name: kind(field.type) for field in table.schema}


def validate_job(name: str, params: Mapping[str, Any], schema: Schema, n_rows: int, *,
                 min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> AnalysisParams:
    """The parsed parameters of a valid job; JobRefused naming the problem otherwise."""
    analysis = CATALOG.get(name)
    if analysis is None:
        raise JobRefused(f"unknown analysis {name!r}; choose one of: {', '.join(sorted(CATALOG))}")
    try:
        parsed = analysis.params.model_validate(dict(params))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors())
        raise JobRefused(f"invalid parameters for {name}: {problems}") from None
    require_version_rows(n_rows, min_group_size)
    parsed.check(schema, n_rows, min_group_size)
    return parsed


def run_analysis(name: str, params: Mapping[str, Any], table: pa.Table, progress: Progress | None = None,
                 *, schema: Schema | None = None, xp: ModuleType | None = None,
                 min_group_size: int = DEFAULT_MIN_GROUP_SIZE) -> AnalysisOutcome:
    """Validate the job against `schema` (default: the table's own) and run it.

    `xp` defaults to select_xp() (CuPy on a CUDA device, else NumPy). `progress` receives fractions
    0..1, ending with 1.0. The outcome's `result` is JSON-serializable; `plot_png` is PNG bytes or None.
    """
    parsed = validate_job(name, params, schema if schema is not None else schema_of(table), table.num_rows,
                          min_group_size=min_group_size)
    missing = [c for c in (schema or {}) if c not in table.column_names]
    if missing:
        raise JobRefused(f"the data lacks column(s) {', '.join(missing)} that its schema lists; "
                         "re-read the dataset version")
    return CATALOG[name].run(parsed, table, xp if xp is not None else select_xp(), progress or no_progress,
                             min_group_size)
