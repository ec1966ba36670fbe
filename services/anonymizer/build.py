"""Building a dataset version, pure but for the files it writes: decrypted rows in -> keyed pseudonyms
-> the engine -> Parquet bytes, DP aggregates and a report. No Kafka, no HTTP, no projection.

    table = rows_to_table(records, definition)            # records as the vault's decrypt API gives them
    built = build_version(table, definition, pseudonym_key, rng)
    built.parquet, built.sha256, built.report, built.contributor_weights, built.aggregates

Pseudonyms are HMAC-SHA256(dataset key, member address), the dataset key itself an HMAC of the
service's master secret and the dataset id: the same member has the same pseudonym in every version
of one dataset and unlinkable ones across datasets. Keys never leave the service (never on Kafka).

k counts members, not rows: a version keeps at most the definition's ``privacy.max_rows_per_member``
rows of each member (their newest records, by record id), the engine asks for classes of
``k * max_rows_per_member`` rows, and before anything is written the classes of the table to publish
are counted in distinct pseudonyms; fewer than k in one raises PrivacyViolation. Errors count the
values they are about and never quote one: they reach logs, the datasets topic and the public API.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from datacoop import objectstore
from services.anonymizer.anonymize import AnonymizationReport, Mode, anonymize, cell_aggregates_of
from services.anonymizer.definition import ResolvedDefinition
from services.anonymizer.dp import CellAggregate
from services.anonymizer.privacy_checks import PrivacyViolation

PSEUDONYM_COLUMN = "pseudonym"


class BuildError(ValueError):
    """A build's problem with the records, in words that count values and never quote one."""
Progress = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


def dataset_key(master_secret: bytes, dataset_id: str) -> bytes:
    """The per-dataset pseudonym key: pseudonyms of two datasets cannot be joined."""
    return hmac.digest(master_secret, b"datacoop-pseudonym|" + dataset_id.encode(), "sha256")


def version_key(master_secret: bytes, dataset_id: str, version: int) -> bytes:
    """The pseudonym key of one version: a member's pseudonym differs from version to version, so two versions
    (or datasets) cannot be joined row to row on it (which would intersect their generalizations, and name the
    pseudonym that appears or vanishes when one member joins or leaves)."""
    return hmac.digest(dataset_key(master_secret, dataset_id), b"version|" + str(version).encode(), "sha256")


def pseudonyms(key: bytes, members: Iterable[str]) -> dict[str, str]:
    """member address -> 32 hex digits of HMAC-SHA256(key, lower-case address)."""
    return {m: hmac.digest(key, m.lower().encode(), "sha256")[:16].hex() for m in set(members)}


@dataclass(frozen=True)
class InputTable:
    """Rows for the engine: one per record that has every column of the definition."""

    columns: dict[str, list[Any]]
    members: list[str]
    record_ids: list[str]
    incomplete: int  # records lacking a column of the definition: left out


def rows_to_table(records: Iterable[Mapping[str, Any]], definition: ResolvedDefinition) -> InputTable:
    """`records`: {"record_id", "member", "fields": {...}} as POST /internal/decrypt returns them."""
    names = list(definition.definition.columns)
    columns: dict[str, list[Any]] = {n: [] for n in names}
    appenders = [columns[n].append for n in names]
    members: list[str] = []
    record_ids: list[str] = []
    incomplete = 0
    for rec in records:
        fields = rec["fields"]
        try:
            values = [fields[n] for n in names]
        except KeyError:
            incomplete += 1
            continue
        if any(v is None for v in values):
            incomplete += 1
            continue
        for append, v in zip(appenders, values, strict=True):
            append(v)
        members.append(rec["member"])
        record_ids.append(rec["record_id"])
    return InputTable(columns, members, record_ids, incomplete)


def table_from_plaintexts(plaintexts: list[bytes], members: list[str], record_ids: list[str],
                          definition: ResolvedDefinition) -> InputTable:
    """`rows_to_table` for decrypted plaintexts (one JSON object each), parsed by Arrow in one pass:
    the in-process path (no HTTP) for large builds and the benchmark."""
    names = list(definition.definition.columns)
    if not plaintexts:
        return InputTable({n: [] for n in names}, [], [], 0)
    parsed = pa_json.read_json(io.BytesIO(b"\n".join(plaintexts)))
    missing = [n for n in names if n not in parsed.column_names]
    if missing:
        return InputTable({n: [] for n in names}, [], [], len(plaintexts))
    complete = functools.reduce(pc.and_, [pc.is_valid(parsed[n]) for n in names])
    if pc.all(complete).as_py():
        return InputTable({n: parsed[n].to_pylist() for n in names}, members, record_ids, 0)
    keep = parsed.select(names).filter(complete)
    kept = np.flatnonzero(complete.to_numpy(zero_copy_only=False)).tolist()
    return InputTable({n: keep[n].to_pylist() for n in names}, [members[i] for i in kept],
                      [record_ids[i] for i in kept], len(plaintexts) - len(kept))


def bound_rows_per_member(table: InputTable, max_rows: int) -> tuple[InputTable, int]:
    """At most ``max_rows`` rows of each member: their newest records, by record id (the vault's ids begin
    with the upload's UUIDv7, so they sort by upload time, then by row within the upload). Members are
    compared as the pseudonyms see them (lower-case addresses). Returns the table and how many rows it
    left out; the same records always give the same rows (deterministic, whatever their order)."""
    owners = [m.lower() for m in table.members]
    counts = Counter(owners)
    if not counts or max(counts.values()) <= max_rows:
        return table, 0
    over: dict[str, list[int]] = {m: [] for m, c in counts.items() if c > max_rows}
    for i, m in enumerate(owners):
        if m in over:
            over[m].append(i)
    keep = np.ones(len(owners), dtype=np.bool_)
    for rows in over.values():
        rows.sort(key=lambda i: table.record_ids[i], reverse=True)
        keep[rows[max_rows:]] = False
    kept = np.flatnonzero(keep).tolist()
    bounded = InputTable({n: [v[i] for i in kept] for n, v in table.columns.items()},
                         [table.members[i] for i in kept], [table.record_ids[i] for i in kept], table.incomplete)
    return bounded, len(owners) - len(kept)


def member_codes(members: Sequence[str]) -> npt.NDArray[np.int64]:
    """One integer per row, equal for rows of one member (as the pseudonyms see them: lower-case)."""
    if not members:
        return np.zeros(0, dtype=np.int64)
    encoded = pc.dictionary_encode(pc.utf8_lower(pa.array(members, pa.string())))
    return np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)


@dataclass(frozen=True)
class BuiltVersion:
    parquet: bytes
    sha256: str
    report: AnonymizationReport
    columns: dict[str, str]  # column -> type of the published table
    contributor_weights: dict[str, int]  # member -> published rows from their records (<= max_rows_per_member)
    aggregates: list[CellAggregate]
    quasi_identifiers: list[str]
    achieved_k: int  # fewest distinct members (pseudonyms) in an equivalence class (>= the model's k)
    achieved_l: int  # fewest distinct values of a sensitive attribute in a class (1 without any)
    rows_over_member_bound: int = 0  # records left out: beyond their member's max_rows_per_member
    table: pa.Table | None = None  # the rows written, and whose each row is: to write them under another key
    row_members: tuple[str, ...] = ()


def parquet_under(built: BuiltVersion, pseudonym_key: bytes) -> tuple[bytes, str]:
    """The version's Parquet and its sha256 with the pseudonyms under `pseudonym_key` (another version's key):
    what that version would hold if these rows were it, to tell whether a build gives a version on offer again."""
    assert built.table is not None
    by_member = pseudonyms(pseudonym_key, built.row_members)
    column = pa.array([by_member[m] for m in built.row_members], pa.string())
    table = built.table.set_column(built.table.schema.get_field_index(PSEUDONYM_COLUMN), PSEUDONYM_COLUMN, column)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    parquet = sink.getvalue()
    return parquet, hashlib.sha256(parquet).hexdigest()


def achieved_guarantees(table: pa.Table, quasi_identifiers: list[str], sensitive: list[str],
                        owner_column: str = PSEUDONYM_COLUMN) -> tuple[int, int]:
    """(fewest distinct members in a class, fewest distinct sensitive values in a class) measured on the
    published rows: k counts distinct ``owner_column`` values (pseudonyms), people and not rows."""
    if table.num_rows == 0:
        return 0, 0
    grouped = table.group_by(quasi_identifiers).aggregate(
        [(owner_column, "count_distinct")] + [(s, "count_distinct") for s in sensitive])
    k = int(pc.min(grouped[f"{owner_column}_count_distinct"]).as_py())
    l_values = [int(pc.min(grouped[f"{s}_count_distinct"]).as_py()) for s in sensitive]
    return k, min(l_values) if l_values else 1


def build_version(table: InputTable, definition: ResolvedDefinition, pseudonym_key: bytes,
                  rng: np.random.Generator, mode: Mode = "global",
                  progress: Progress = _no_progress) -> BuiltVersion:
    """Anonymize `table` as `definition` says; raises the engine's errors (NoAnonymousNode, ...) and
    PrivacyViolation when a class of the table to publish holds fewer than k members."""
    table, over_bound = bound_rows_per_member(table, definition.model.max_rows_per_member)
    n = len(table.members)
    progress("anonymizing", 0, n)
    published = anonymize(table.columns, definition, mode, owners=member_codes(table.members))
    progress("anonymizing", n, n)
    rows = published.source_rows
    progress("writing", 0, len(rows))
    by_member = pseudonyms(pseudonym_key, table.members)
    members_of_rows = [table.members[r] for r in rows]
    arrays = {PSEUDONYM_COLUMN: pa.array([by_member[m] for m in members_of_rows], pa.string())}
    passthrough = set(definition.passthrough)
    for name, values in published.columns.items():
        spec = definition.definition.columns.get(name)
        if name in passthrough and spec is not None and spec.type == "integer":
            arrays[name] = _integers(name, values)  # published unchanged: keep them numbers for analytics
        else:
            arrays[name] = pa.array(values, pa.string())
    arrow = pa.table(arrays)
    if PSEUDONYM_COLUMN in published.columns:  # the definition refuses such a column; never overwrite pseudonyms
        raise BuildError(f"column {PSEUDONYM_COLUMN!r} is reserved for the members' pseudonyms; rename it")
    achieved_k, achieved_l = achieved_guarantees(arrow, list(definition.hierarchies), definition.sensitive)
    if arrow.num_rows and achieved_k < definition.model.k:  # the last check, on what would be written
        raise PrivacyViolation(f"a class of the version holds {achieved_k} distinct member(s), fewer than "
                               f"k={definition.model.k}; nothing is published")
    if arrow.num_rows and definition.sensitive and achieved_l < definition.model.l:  # entropy-l needs >= l values too
        raise PrivacyViolation(f"a class of the version holds {achieved_l} distinct value(s) of a sensitive "
                               f"attribute, fewer than l={definition.model.l}; nothing is published")
    sink = io.BytesIO()
    pq.write_table(arrow, sink, compression="zstd")
    parquet = sink.getvalue()
    aggregates = cell_aggregates_of(table.columns, published, definition, rng)
    progress("writing", len(rows), len(rows))
    return BuiltVersion(
        parquet=parquet, sha256=hashlib.sha256(parquet).hexdigest(), report=published.report,
        columns={f.name: str(f.type) for f in arrow.schema},
        contributor_weights=dict(Counter(members_of_rows)), aggregates=aggregates,
        quasi_identifiers=list(definition.hierarchies), achieved_k=achieved_k, achieved_l=achieved_l,
        rows_over_member_bound=over_bound, table=arrow, row_members=tuple(members_of_rows))


# -- where a version lands -----------------------------------------------------------------------

AGGREGATES_DDL = """
CREATE TABLE IF NOT EXISTS cell_aggregates (
    dataset_id VARCHAR NOT NULL, version INTEGER NOT NULL, cell VARCHAR[] NOT NULL,
    count DOUBLE NOT NULL, total DOUBLE, mean DOUBLE);
CREATE TABLE IF NOT EXISTS aggregate_releases (
    dataset_id VARCHAR NOT NULL, version INTEGER NOT NULL, quasi_identifiers VARCHAR[] NOT NULL,
    epsilon DOUBLE NOT NULL, mechanism VARCHAR NOT NULL, delta DOUBLE, value_column VARCHAR,
    PRIMARY KEY (dataset_id, version));
"""


def _integers(name: str, values: Sequence[object]) -> pa.Array:
    """An integer passthrough column as int64 (missing values null). A value that is not an integer is
    counted, never quoted (the message reaches logs and the public build API)."""
    out: list[int | None] = []
    bad = 0
    for v in values:
        try:
            out.append(None if v is None or v == "" else int(str(v)))
        except ValueError:
            bad += 1
    if bad:
        raise BuildError(f"column {name!r} is declared integer but {bad} of its published value(s) are not "
                         "integers; declare it categorical or text, or fix those records")
    return pa.array(out, pa.int64())


def parquet_path(store_dir: Path, dataset_id: str, version: int) -> Path:
    return store_dir / dataset_id / f"v{version}.parquet"


def write_parquet(store_dir: Path | str, dataset_id: str, version: int, parquet: bytes) -> str:
    """Write atomically (temp file, rename); returns the file:// URL. An s3://bucket/prefix store gets
    s3://bucket/prefix/<dataset>/v<n>.parquet (one PUT, whole or not at all) and that URL back."""
    if objectstore.is_s3(store_dir):
        return objectstore.write_bytes(objectstore.join(store_dir, dataset_id, f"v{version}.parquet"), parquet)
    path = parquet_path(Path(store_dir), dataset_id, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    tmp.write_bytes(parquet)
    tmp.replace(path)
    return path.resolve().as_uri()


def write_aggregates(db_path: Path, dataset_id: str, version: int, built: BuiltVersion,
                     definition: ResolvedDefinition) -> None:
    """The version's DP aggregates into the object store's DuckDB file; a re-run replaces them (the noise
    is drawn once per build: the released numbers are the ones stored, never re-drawn on a rebuild)."""
    spec = definition.definition.aggregates
    cells = built.aggregates
    arrow = pa.table({
        "cell": pa.array([[str(v) for v in cast(tuple[object, ...], c.cell)] for c in cells], pa.list_(pa.string())),
        "count": pa.array([c.count for c in cells], pa.float64()),
        "total": pa.array([c.total for c in cells], pa.float64()),
        "mean": pa.array([c.mean for c in cells], pa.float64()),
    })
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(db_path)) as conn:
        conn.execute(AGGREGATES_DDL)
        conn.execute("BEGIN TRANSACTION")
        conn.execute("DELETE FROM cell_aggregates WHERE dataset_id = ? AND version = ?", [dataset_id, version])
        conn.execute("DELETE FROM aggregate_releases WHERE dataset_id = ? AND version = ?", [dataset_id, version])
        conn.register("_cells", arrow)
        conn.execute("INSERT INTO cell_aggregates SELECT ?, ?, cell, count, total, mean FROM _cells",
                     [dataset_id, version])
        conn.execute("INSERT INTO aggregate_releases VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [dataset_id, version, built.quasi_identifiers, spec.epsilon, spec.mechanism, spec.delta,
                      spec.value_column])
        conn.execute("COMMIT")


def discard_aggregates(db_path: Path, dataset_id: str, version: int) -> None:
    """Remove a version's aggregates (a build that wrote them and did not publish the version)."""
    if not db_path.exists():
        return
    with duckdb.connect(str(db_path)) as conn:
        conn.execute(AGGREGATES_DDL)
        conn.execute("DELETE FROM cell_aggregates WHERE dataset_id = ? AND version = ?", [dataset_id, version])
        conn.execute("DELETE FROM aggregate_releases WHERE dataset_id = ? AND version = ?", [dataset_id, version])


def read_aggregates(db_path: Path, dataset_id: str, version: int) -> dict[str, Any] | None:
    if not db_path.exists():
        return None
    # Not read_only: the builder may hold a read-write connection to this file in this process right now,
    # and DuckDB refuses a second connection to one file with another configuration (a 500 under load).
    with duckdb.connect(str(db_path)) as conn:
        release = conn.execute("""SELECT quasi_identifiers, epsilon, mechanism, delta, value_column
                                  FROM aggregate_releases WHERE dataset_id = ? AND version = ?""",
                               [dataset_id, version]).fetchone()
        if release is None:
            return None
        rows = conn.execute("""SELECT cell, count, total, mean FROM cell_aggregates
                               WHERE dataset_id = ? AND version = ? ORDER BY cell""",
                            [dataset_id, version]).fetchall()
    qis = list(release[0])
    return {"dataset_id": dataset_id, "version": version, "quasi_identifiers": qis, "epsilon": release[1],
            "mechanism": release[2], "delta": release[3], "value_column": release[4],
            "cells": [{"cell": dict(zip(qis, cell, strict=True)), "count": count, "total": total, "mean": mean}
                      for cell, count, total, mean in rows]}
