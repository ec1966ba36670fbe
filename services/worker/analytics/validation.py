"""Job parameters checked against the dataset version's schema, before any compute runs.

A schema is the simple dict the catalog publishes: {column: "int" | "float" | "bool" | "str" | ...}.
Every refusal is a `JobRefused` whose message says what is wrong and what to do instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict

from services.worker.column_types import NUMERIC_TYPES, is_numeric, numeric_columns

__all__ = ["NUMERIC_TYPES", "AnalysisFailed", "AnalysisParams", "JobRefused", "Schema", "require_columns",
           "require_distinct", "require_numeric", "require_rows", "require_version_rows"]

Schema = Mapping[str, str]


class JobRefused(ValueError):
    """The job's parameters do not fit the analysis or the dataset; nothing was computed."""


class AnalysisFailed(RuntimeError):
    """The parameters were valid but the data cannot support the analysis (e.g. collinear columns)."""


class AnalysisParams(BaseModel):
    """Base of every analysis' parameters: unknown fields are refused, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def check(self, schema: Schema, n_rows: int, min_group_size: int) -> None:
        """Raise JobRefused when the parameters don't fit this dataset (columns, sizes), or could only
        give groups of fewer than `min_group_size` rows (see disclosure.py)."""


def _known(schema: Schema) -> str:
    names = sorted(schema)
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return shown or "(none)"


def require_columns(schema: Schema, columns: Iterable[str], role: str) -> None:
    """Every column exists in the schema."""
    for column in columns:
        if column not in schema:
            raise JobRefused(f"{role} column {column!r} is not in this dataset; "
                             f"choose one of: {_known(schema)}")


def require_numeric(schema: Schema, columns: Iterable[str], role: str) -> None:
    """Every column exists and has a numeric type."""
    columns = list(columns)
    require_columns(schema, columns, role)
    for column in columns:
        kind = schema[column].lower()
        if not is_numeric(kind):
            numeric = numeric_columns(schema)
            raise JobRefused(
                f"{role} column {column!r} has type {kind!r}, but this analysis needs a numeric column "
                f"(int, float or bool); numeric columns here: {', '.join(numeric) or '(none)'}")


def require_distinct(columns: Iterable[str], role: str) -> None:
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise JobRefused(f"{role} column {column!r} is listed twice; list each column once")
        seen.add(column)


def require_rows(n_rows: int, needed: int, why: str) -> None:
    if n_rows < needed:
        raise JobRefused(f"{why} needs at least {needed} rows but the dataset has {n_rows}; "
                         "use a larger dataset version or fewer parameters")


def require_version_rows(n_rows: int, min_group_size: int) -> None:
    """A version with no rows, or fewer than any result may rest on, supports no analysis at all."""
    if n_rows == 0:
        raise JobRefused("the dataset version has no rows; choose a version with data")
    if n_rows < min_group_size:
        raise JobRefused(f"the dataset version has {n_rows} rows, fewer than the {min_group_size} any result "
                         "must rest on (no individual rows are disclosed); choose a larger version")
