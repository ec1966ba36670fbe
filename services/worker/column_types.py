"""What a version needs for any analysis to run on it: a column type the analytics can compute on,
and at least DEFAULT_MIN_GROUP_SIZE rows. The rules the worker's checks and the marketplace's compute
offer share (a compute offer on a version no analysis can run on is not sold).

Light on purpose (no NumPy, no pyarrow): the marketplace imports it.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_MIN_GROUP_SIZE = 10
"""The fewest rows any reported number may rest on, unless the operator sets another
(DATACOOP_WORKER_MIN_GROUP_SIZE for the workers; DATACOOP_COMPUTE_MIN_ROWS for the marketplace's
compute offer): a version with fewer rows supports no analysis at all."""

NUMERIC_TYPES = frozenset({
    "int", "integer", "float", "double", "number", "bool", "boolean",
    # Arrow type names (a version event's `columns`) and DuckDB's
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "halffloat", "float16", "float32",
    "float64", "tinyint", "smallint", "bigint", "hugeint", "real"})


def is_numeric(column_type: str) -> bool:
    """A column of this type (the simple schema's, Arrow's or DuckDB's name) can go into an analysis."""
    return column_type.lower() in NUMERIC_TYPES


def numeric_columns(columns: Mapping[str, str]) -> list[str]:
    """The columns of a version's `{column: type}` an analysis can compute on, sorted."""
    return sorted(c for c, t in columns.items() if is_numeric(t))
