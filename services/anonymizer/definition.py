"""Dataset definitions: what a dataset is for, which columns it has, and how it is anonymized.

Definitions are versioned YAML files under ``datasets/`` at the repo root. ``load_definition`` parses
one, ``resolve`` checks it against its hierarchies and returns everything the engine needs. Both
refuse a bad definition with ``DefinitionError`` listing *every* problem found (unknown columns,
a column in no role or in two, hierarchy values missing for a column's domain, impossible parameters),
each with its fix.

Every column has exactly one role: a quasi-identifier (generalized), sensitive, or ``published_as_is``
(published unchanged). A column left out of all three would be published raw although nobody chose to,
so a definition being accepted is refused for it; one replayed from the log is not (``resolve``).

Hierarchy CSV paths are relative to the shared data directory: ``$DATACOOP_SHARED_DIR`` if set, else
``<repo>/../shared`` (a clone with shared/ beside it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.anonymizer import hierarchy as hier
from services.anonymizer.dp import Mechanism
from services.anonymizer.hierarchy import Hierarchy, HierarchyError
from services.anonymizer.privacy_model import LDiversityKind, PrivacyModel, PrivacyModelError

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS_DIR = REPO_ROOT / "datasets"


def shared_dir() -> Path:
    """The shared data directory: ``$DATACOOP_SHARED_DIR`` or ``<repo>/../shared``."""
    return Path(os.environ.get("DATACOOP_SHARED_DIR") or REPO_ROOT.parent / "shared")


# Every integer of a definition is bounded to what the projections store (INTEGER: 32 bits) and to sensible
# limits, so a definition out of range is refused (422 naming the field) before anything is written to the log.
INT32_MAX = 2**31 - 1
MAX_K = 1_000_000  # members per class: more than any cooperative has
MAX_L = 10_000
MAX_ROWS_PER_MEMBER = 1_000_000
MAX_DOMAIN = 2_000_000  # values a quasi-identifier's domain may have: each is checked against its hierarchy
RESERVED_COLUMNS = frozenset({"pseudonym"})  # build.PSEUDONYM_COLUMN: no declared column may take its name
Int32 = Annotated[int, Field(ge=-INT32_MAX, le=INT32_MAX)]
Width = Annotated[int, Field(ge=1, le=INT32_MAX)]
Prefix = Annotated[int, Field(ge=0, le=64)]


class DefinitionError(ValueError):
    """A dataset definition is refused; ``problems`` lists what is wrong, one fix each."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"dataset definition {name!r} is refused: " + "; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # YAML has .inf and .nan


class ColumnSpec(_Strict):
    """A column's domain: ``categorical`` (optionally its ``values``), ``integer`` (min..max), ``date``
    (first..last), or ``text`` (free; cannot be a quasi-identifier without a hierarchy covering it)."""

    type: Literal["categorical", "integer", "date", "text"] = "categorical"
    values: list[str] | None = None
    min: Int32 | None = None
    max: Int32 | None = None
    first: date | None = None
    last: date | None = None


class NumericBands(_Strict):
    min: Int32
    max: Int32
    widths: list[Width] = Field(max_length=64)


class PostcodePrefix(_Strict):
    length: int = Field(ge=1, le=64)
    keep: list[Prefix] = Field(max_length=64)
    alphabet: str = "0123456789"


class DateLevels(_Strict):
    first: date
    last: date


class HierarchySpec(_Strict):
    """Exactly one of: an ARX-style ``csv`` (path relative to the shared dir), ``numeric_bands``,
    ``postcode_prefix`` or ``dates`` (day -> month -> year -> *)."""

    csv: str | None = None
    numeric_bands: NumericBands | None = None
    postcode_prefix: PostcodePrefix | None = None
    dates: DateLevels | None = None


class PrivacySpec(_Strict):
    """``k`` counts members: a version keeps at most ``max_rows_per_member`` rows of each member (their
    newest records by record id) and its classes hold k distinct members."""

    k: int = Field(le=MAX_K)
    l: int = Field(1, le=MAX_L)  # noqa: E741
    l_kind: LDiversityKind = "distinct"
    t: float | None = None
    suppression_limit: float = 0.0
    max_rows_per_member: int = 1

    @field_validator("max_rows_per_member", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROWS_PER_MEMBER:
            raise ValueError(f"{value!r} is not a whole number >= 1 and <= {MAX_ROWS_PER_MEMBER}; give the most "
                             "rows one member may have in a version (default 1: one row per member)")
        return value


class AggregatesSpec(_Strict):
    """DP aggregates per generalized cell; ``value_column`` (with ``value_bounds``) adds sums and means."""

    epsilon: float
    mechanism: Mechanism = "laplace"
    delta: float | None = None
    value_column: str | None = None
    value_bounds: tuple[float, float] | None = None


class DatasetDefinition(_Strict):
    name: str
    version: int = Field(ge=1, le=INT32_MAX)
    purpose: str
    data_categories: list[str]
    columns: dict[str, ColumnSpec]
    quasi_identifiers: dict[str, HierarchySpec]
    sensitive: list[str] = []
    published_as_is: list[str] = []  # columns published unchanged: named, so none is published raw by omission
    privacy: PrivacySpec
    aggregates: AggregatesSpec


@dataclass(frozen=True)
class ResolvedDefinition:
    """A checked definition with its hierarchies built; what ``anonymize_table`` needs."""

    definition: DatasetDefinition
    hierarchies: dict[str, Hierarchy]
    model: PrivacyModel

    @property
    def sensitive(self) -> list[str]:
        return list(self.definition.sensitive)

    @property
    def passthrough(self) -> list[str]:
        """Columns published unchanged, in column order: neither quasi-identifier nor sensitive. For a definition
        accepted with every column in a role these are its ``published_as_is``; for one replayed from the log
        that predates the rule, also the columns it left in no role, as they were published then."""
        d = self.definition
        return [c for c in d.columns if c not in d.quasi_identifiers and c not in d.sensitive]


def load_definition(path: Path | str) -> DatasetDefinition:
    """Parse a YAML definition; structural problems (unknown keys, wrong types) become DefinitionError."""
    path = Path(path)
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DefinitionError(str(path), [f"cannot read it: {e}"]) from e
    return parse_definition(raw, str(path))


def parse_definition(raw: Any, source: str = "<memory>") -> DatasetDefinition:
    """Validate a definition given as plain data (the YAML's content)."""
    try:
        return DatasetDefinition.model_validate(raw)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
                    for err in e.errors()]
        raise DefinitionError(source, problems) from e


def resolve(definition: DatasetDefinition, shared: Path | None = None, *,
            replayed: bool = False) -> ResolvedDefinition:
    """Check ``definition`` for consistency and build its hierarchies; DefinitionError lists all problems.

    ``replayed``: the definition comes from the log, where it was accepted before every column needed a role.
    Its columns in no role are then not refused but published unchanged, as they were when it was accepted,
    so its versions build as before. Every definition being accepted (API, ``datasets/`` files) is checked
    without it."""
    d = definition
    base = shared or shared_dir()
    problems: list[str] = []
    known = set(d.columns)
    for name in sorted({*d.columns, *d.quasi_identifiers, *d.sensitive, *d.published_as_is} & RESERVED_COLUMNS):
        problems.append(f"column {name!r} is reserved: the build writes each member's keyed pseudonym under that "
                        "name and counts k in it; rename the column")
    for q in d.quasi_identifiers:
        if q not in known:
            problems.append(f"quasi-identifier {q!r} is not a column; add it to columns or remove it")
    for s in d.sensitive:
        if s not in known:
            problems.append(f"sensitive attribute {s!r} is not a column; add it to columns or remove it")
        if s in d.quasi_identifiers:
            problems.append(f"{s!r} is both a quasi-identifier and sensitive; pick one")
    problems += _role_problems(d, replayed)
    agg = d.aggregates
    if agg.value_column is not None and agg.value_column not in known:
        problems.append(f"aggregates.value_column {agg.value_column!r} is not a column; name one of {sorted(known)}")
    if agg.value_column is not None and (agg.value_bounds is None or agg.value_bounds[0] > agg.value_bounds[1]):
        problems.append("aggregates.value_bounds must be [lower, upper] with lower <= upper to clamp sums")
    if not agg.epsilon > 0:
        problems.append(f"aggregates.epsilon={agg.epsilon} gives no privacy guarantee; use epsilon > 0")
    if agg.mechanism == "gaussian" and (agg.delta is None or not 0 < agg.delta < 1):
        problems.append("the gaussian mechanism needs aggregates.delta in (0, 1), e.g. 1e-6")
    if not d.quasi_identifiers:
        problems.append("no quasi-identifiers; name at least one with its hierarchy")
    model: PrivacyModel | None = None
    try:
        model = PrivacyModel(k=d.privacy.k, l=d.privacy.l, l_kind=d.privacy.l_kind, t=d.privacy.t,
                             suppression_limit=d.privacy.suppression_limit,
                             max_rows_per_member=d.privacy.max_rows_per_member)
    except PrivacyModelError as e:
        problems.append(f"privacy: {e}")
    if d.privacy.l > 1 and not d.sensitive:
        problems.append(f"privacy.l={d.privacy.l} needs sensitive attributes; list them or set l: 1")
    for s in d.sensitive:
        column = d.columns.get(s)
        if column is not None and column.values is not None and d.privacy.l > len(set(column.values)):
            problems.append(f"privacy.l={d.privacy.l} exceeds the {len(set(column.values))} values sensitive "
                            f"column {s!r} can take; lower l")
    hierarchies: dict[str, Hierarchy] = {}
    for q, spec in d.quasi_identifiers.items():
        try:
            h = _build_hierarchy(q, spec, base)
        except HierarchyError as e:
            problems.append(str(e))
            continue
        hierarchies[q] = h
        if q in d.columns:
            problems += _coverage_problems(q, d.columns[q], h)
    if problems or model is None:
        raise DefinitionError(d.name, problems)
    return ResolvedDefinition(d, hierarchies, model)


def _role_problems(d: DatasetDefinition, replayed: bool) -> list[str]:
    """``published_as_is`` names columns, each once and in no other role; unless ``replayed``, every column
    has a role."""
    problems: list[str] = []
    listed: set[str] = set()
    for c in d.published_as_is:
        if c in listed:
            problems.append(f"{c!r} is listed twice in published_as_is; list it once")
        listed.add(c)
        if c not in d.columns:
            problems.append(f"published_as_is names {c!r}, which is not a column; add it to columns or remove it")
        if c in d.quasi_identifiers:
            problems.append(f"{c!r} is both a quasi-identifier and published as is; pick one")
        if c in d.sensitive:
            problems.append(f"{c!r} is both sensitive and published as is; pick one")
    if not replayed:
        for c in d.columns:
            if c not in d.quasi_identifiers and c not in d.sensitive and c not in listed:
                problems.append(f"column {c!r} is in no role: list it under quasi_identifiers (generalized), "
                                "sensitive, or published_as_is (published unchanged)")
    return problems


def _build_hierarchy(name: str, spec: HierarchySpec, base: Path) -> Hierarchy:
    given = [k for k in ("csv", "numeric_bands", "postcode_prefix", "dates") if getattr(spec, k) is not None]
    if len(given) != 1:
        raise HierarchyError(f"hierarchy of {name!r} must give exactly one of csv, numeric_bands, "
                             f"postcode_prefix, dates; it gives {given or 'none'}")
    if spec.csv is not None:
        path = Path(spec.csv)
        return hier.from_csv(name, path if path.is_absolute() else base / path)
    if spec.numeric_bands is not None:
        b = spec.numeric_bands
        if b.max - b.min >= MAX_DOMAIN:
            raise HierarchyError(f"numeric hierarchy of {name!r} spans {b.max - b.min + 1} values, more than "
                                 f"{MAX_DOMAIN}; narrow min..max")
        return hier.numeric_bands(name, b.min, b.max, b.widths)
    if spec.postcode_prefix is not None:
        p = spec.postcode_prefix
        return hier.postcode_prefixes(name, p.length, p.keep, p.alphabet)
    assert spec.dates is not None
    return hier.dates(name, spec.dates.first, spec.dates.last)


def _coverage_problems(name: str, column: ColumnSpec, h: Hierarchy) -> list[str]:
    if column.type == "categorical":
        domain: list[object] = list(column.values or [])
    elif column.type == "integer":
        if column.min is None or column.max is None or column.min > column.max:
            return [f"integer column {name!r} needs min <= max to be checked against its hierarchy"]
        if column.max - column.min >= MAX_DOMAIN:
            return [f"integer column {name!r} spans {column.max - column.min + 1} values, more than the {MAX_DOMAIN} a "
                    "quasi-identifier's domain may have; narrow min..max"]
        domain = list(range(column.min, column.max + 1))
    elif column.type == "date":
        if column.first is None or column.last is None or column.first > column.last:
            return [f"date column {name!r} needs first <= last to be checked against its hierarchy"]
        if (column.last - column.first).days >= MAX_DOMAIN:
            return [f"date column {name!r} spans more than {MAX_DOMAIN} days; narrow first..last"]
        domain = [date.fromordinal(o).isoformat()
                  for o in range(column.first.toordinal(), column.last.toordinal() + 1)]
    else:
        return [f"text column {name!r} cannot be a quasi-identifier; declare it categorical with its values"]
    missing = h.missing(domain)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5])
        return [f"hierarchy of {name!r} lacks {len(missing)} value(s) the column can take: {shown}; "
                "add them to the hierarchy or narrow the column's domain"]
    return []


def load_resolved(path: Path | str, shared: Path | None = None) -> ResolvedDefinition:
    """``resolve(load_definition(path))``: the one call a service needs."""
    return resolve(load_definition(path), shared)
