"""The query language researchers use, and how a query becomes parameterized SQL.

Only this JSON model is accepted: an aggregate (count, sum, mean, histogram), a column, group-by
columns, filters (column, whitelisted operator, value) and clamping bounds. Every column is checked
against the version's published schema; identifiers reach SQL only after that check (and quoted),
values only as bound parameters. No text from a researcher is ever pasted into SQL.

Group-by is allowed only on the version's generalized quasi-identifiers and declared categorical or
sensitive attributes (from the dataset definition it was built with), never on the pseudonym column:
grouping by an identifier or free text would make one person's row a cell of its own.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from datacoop.events.orders import MICRO_EPSILON

# A column name as datasets publish them ("salary-class", "marital-status"): letters, digits, _ and -. No
# quote, space or semicolon can pass, and the name reaches SQL only double-quoted, after the schema check.
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")]
Scalar = StrictStr | StrictInt | StrictFloat | StrictBool
Aggregate = Literal["count", "sum", "mean", "histogram"]
FilterOp = Literal["=", "!=", "<", "<=", ">", ">=", "in", "not in"]
MAX_CELLS = 10_000
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
            "UBIGINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL", "NUMERIC", "INT")
_GROUPABLE = ("VARCHAR", "STRING", "TEXT", "BOOLEAN", "BOOL")
_TEXT = ("VARCHAR", "STRING", "TEXT")
_BOOLEAN = ("BOOLEAN", "BOOL")
_INT64 = 2**63 - 1  # the widest integer a filter value may be (DuckDB binds larger ones as HUGEINT or fails)
PSEUDONYM_COLUMN = "pseudonym"  # the anonymizer's keyed member pseudonym (services/anonymizer/build.py)


class QueryInvalid(ValueError):
    """The query does not fit the version's schema or the language; the message says what to change."""


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: Identifier
    op: FilterOp
    value: Scalar | list[Scalar] = Field(description="a list for 'in' / 'not in' (at most 100 values)")

    @model_validator(mode="after")
    def _value_fits_op(self) -> Filter:
        is_list = isinstance(self.value, list)
        if self.op in ("in", "not in"):
            if not is_list or not 1 <= len(self.value) <= 100:  # type: ignore[arg-type]
                raise ValueError(f"'{self.op}' takes a list of 1 to 100 values")
        elif is_list:
            raise ValueError(f"'{self.op}' takes one value, not a list")
        return self


class Query(BaseModel):
    """A differentially private aggregate query. `epsilon` is what it spends from the order's budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregate: Aggregate
    column: Identifier | None = Field(None, description="the numeric column (sum, mean, histogram)")
    group_by: list[Identifier] = Field(default_factory=list, max_length=3)
    filters: list[Filter] = Field(default_factory=list, max_length=10)
    bounds: tuple[StrictFloat | StrictInt, StrictFloat | StrictInt] | None = Field(
        None, description="clamp values to [lower, upper] (sum, mean, histogram); bounds one member's influence")
    bins: int = Field(10, strict=True, ge=1, le=100, description="histogram: equal-width bins over the bounds")
    epsilon: float = Field(strict=True, gt=0, le=10, allow_inf_nan=False,
                           description="privacy cost of this answer, a number in (0, 10]; charged and used for the "
                                       "noise in whole micro-epsilon (1e-06), rounded up")

    @model_validator(mode="after")
    def _shape(self) -> Query:
        if self.aggregate == "count":
            if self.column is not None:
                raise ValueError("count takes no column (it counts rows); drop 'column' or use sum/mean")
        else:
            if self.column is None:
                raise ValueError(f"{self.aggregate} needs a numeric 'column'")
            if self.bounds is None:
                raise ValueError(f"{self.aggregate} needs clamping 'bounds' [lower, upper]: they bound what one "
                                 "member can change")
        if self.bounds is not None:
            lower, upper = self.bounds
            if not (math.isfinite(lower) and math.isfinite(upper)) or lower > upper:
                raise ValueError("bounds must be finite with lower <= upper")
            if not math.isfinite(float(upper) - float(lower)):
                raise ValueError(f"bounds [{lower}, {upper}] are too far apart (upper - lower overflows); "
                                 "clamp to the range the column's values can take")
            if self.aggregate == "histogram" and lower == upper:
                raise ValueError("histogram bounds must have lower < upper")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by lists a column twice")
        if self.epsilon < 1 / MICRO_EPSILON:
            raise ValueError(f"epsilon must be at least {1 / MICRO_EPSILON} (one micro-epsilon)")
        return self

    @property
    def epsilon_micro(self) -> int:
        """What the query is charged, in micro-epsilon: `epsilon` as written (its shortest decimal form, so 0.29
        is 290000) rounded UP to a whole micro-epsilon. Never less than asked: 1.49e-06 is charged 2."""
        micro = Decimal(repr(float(self.epsilon))) * MICRO_EPSILON
        return int(micro.to_integral_value(rounding=ROUND_CEILING))

    @property
    def epsilon_charged(self) -> float:
        """The epsilon the noise is drawn at: exactly what is charged (epsilon_micro), never the raw `epsilon`."""
        return self.epsilon_micro / MICRO_EPSILON


def is_numeric(sql_type: str) -> bool:
    upper = sql_type.upper()
    return upper.startswith(_NUMERIC) and not upper.startswith("INTERVAL")


def is_groupable(sql_type: str) -> bool:
    return sql_type.upper().startswith(_GROUPABLE)


def groupable_columns(definition: Mapping[str, Any], published: Mapping[str, str]) -> list[str]:
    """The columns of a published version a query may group by, from the definition it was built with:
    its quasi-identifiers (published generalized), its sensitive attributes and the columns it declares
    categorical; never the pseudonym, and only columns the version has with a text/boolean type."""
    columns = definition.get("columns") or {}
    declared = {name for name, spec in columns.items()
                if (spec or {}).get("type", "categorical") == "categorical"}
    roles = set(definition.get("quasi_identifiers") or {}) | set(definition.get("sensitive") or []) | declared
    return sorted(c for c in roles - {PSEUDONYM_COLUMN} if c in published and is_groupable(published[c]))


@dataclass(frozen=True)
class Plan:
    """The SQL of one query: per cell, the row count and (sum/mean) the clamped sum."""

    sql: str
    params: list[Any]
    group_by: tuple[str, ...]
    with_bin: bool


def _quote(identifier: str) -> str:
    """A SQL identifier in double quotes, a quote inside doubled (the pattern admits none: belt and braces)."""
    return '"' + identifier.replace('"', '""') + '"'


def validate(query: Query, columns: dict[str, str], groupable: Collection[str] = ()) -> None:
    """Raise QueryInvalid unless every column exists with a type that fits its use, and every group-by
    column is one of `groupable` (see groupable_columns)."""
    known = ", ".join(sorted(columns))

    def need(col: str) -> str:
        if col not in columns:
            raise QueryInvalid(f"unknown column {col!r}; this version has: {known}")
        return columns[col]

    if query.column is not None and not is_numeric(need(query.column)):
        raise QueryInvalid(f"column {query.column!r} is {columns[query.column]}, not numeric; "
                           f"{query.aggregate} needs a numeric column")
    for col in query.group_by:
        if not is_groupable(need(col)) or col not in groupable or col == PSEUDONYM_COLUMN:
            allowed = ", ".join(sorted(set(groupable) - {PSEUDONYM_COLUMN})) or "none (its dataset definition is " \
                "unknown to this marketplace; ask the operator)"
            raise QueryInvalid(f"cannot group by {col!r}: group by a generalized quasi-identifier or a declared "
                               f"categorical or sensitive attribute of this version; allowed: {allowed}")
    for f in query.filters:
        sql_type = need(f.column)
        for v in f.value if isinstance(f.value, list) else [f.value]:
            takes = _value_problem(sql_type, v)
            if takes is not None:
                raise QueryInvalid(f"filter on {f.column!r} ({sql_type}) has value {v!r} of the wrong type; "
                                   f"column {f.column!r} takes {takes}")


def _value_problem(sql_type: str, value: Any) -> str | None:
    """None when `value` fits a column of `sql_type`; else what such a column takes (for the refusal)."""
    upper = sql_type.upper()
    if is_numeric(sql_type):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "a number"
        if isinstance(value, int) and abs(value) > _INT64:
            return f"a number between -{_INT64} and {_INT64}"
        return None
    if upper.startswith(_BOOLEAN):
        return None if isinstance(value, bool) else "true or false"
    if upper.startswith(_TEXT):
        return None if isinstance(value, str) else "text (a string in quotes)"
    if upper == "DATE":
        return None if isinstance(value, str) and _parses(date.fromisoformat, value) else "a date 'YYYY-MM-DD'"
    if upper.startswith("TIMESTAMP"):
        return None if isinstance(value, str) and _parses(datetime.fromisoformat, value) else \
            "a timestamp 'YYYY-MM-DDTHH:MM:SS'"
    return "no filter (its type cannot be filtered on; filter on another column)"


def _parses(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


def plan(query: Query, columns: dict[str, str], table: str) -> Plan:
    """Parameterized SQL for `query` over `table` (an engine-internal name, never the researcher's).
    Checks the columns' types only: the engine checks which columns may be grouped by."""
    validate(query, columns, query.group_by)
    params: list[Any] = []
    where: list[str] = []
    for f in query.filters:
        if isinstance(f.value, list):
            marks = ", ".join("?" for _ in f.value)
            where.append(f"{_quote(f.column)} {f.op.upper()} ({marks})")
            params.extend(f.value)
        else:
            where.append(f"{_quote(f.column)} {f.op} ?")
            params.append(f.value)
    keys = [_quote(c) for c in query.group_by]
    select = list(keys)
    with_bin = query.aggregate == "histogram"
    if query.column is not None:
        assert query.bounds is not None
        lower, upper = query.bounds
        value = f"least(greatest(CAST({_quote(query.column)} AS DOUBLE), ?), ?)"
        where.append(f"{_quote(query.column)} IS NOT NULL")
        if with_bin:
            width = (upper - lower) / query.bins
            select.append(f"least(CAST(floor(({value} - ?) / ?) AS INTEGER), ?) AS _bin")
            params = [lower, upper, lower, width, query.bins - 1, *params]
            keys.append("_bin")
        else:
            select.append(f"sum({value}) AS _sum")
            params = [lower, upper, *params]
    select.append("count(*) AS _count")
    sql = f"SELECT {', '.join(select)} FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if keys:
        sql += " GROUP BY " + ", ".join(keys)
    return Plan(sql, params, tuple(query.group_by), with_bin)
