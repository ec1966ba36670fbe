"""The build pipeline without Kafka: records in -> keyed pseudonyms -> engine -> Parquet + DP aggregates;
the guarantees are re-checked on the Parquet bytes themselves."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from services.anonymizer import build
from services.anonymizer.definition import parse_definition, resolve
from tests.e2e.anonymizer_fixtures import census_definition, check_guarantees

KEY = b"k" * 32
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]


@pytest.fixture(scope="module")
def definition():
    return resolve(parse_definition(census_definition(k=5, l=2)))


@pytest.fixture(scope="module")
def records(adult_subset):
    n = len(adult_subset["age"])
    return [{"record_id": f"u-{i:06d}", "member": f"0x{i % 300:040x}",
             "fields": {c: (int(v[i]) if c == "age" else v[i]) for c, v in adult_subset.items()}} for i in range(n)]


@pytest.mark.parametrize("max_rows", [None, 4])
def test_a_built_version_meets_its_guarantees_on_the_parquet_itself(records, max_rows) -> None:
    """Each member has ~10 records: a version keeps `max_rows_per_member` of them (default 1), and k is
    met in distinct members (pseudonyms) per class on the Parquet itself."""
    definition = resolve(parse_definition(census_definition(k=5, l=2, max_rows_per_member=max_rows)))
    table = build.rows_to_table(records, definition)
    built = build.build_version(table, definition, build.dataset_key(KEY, "census-stats"), np.random.default_rng(7))
    assert built.sha256 == hashlib.sha256(built.parquet).hexdigest()
    published = pq.read_table(io.BytesIO(built.parquet))
    assert published.num_rows == built.report.rows_published == sum(built.contributor_weights.values())
    members = len({r["member"] for r in records})
    assert built.report.rows_in == members * (max_rows or 1)
    assert built.report.rows_published + built.report.rows_suppressed + built.rows_over_member_bound == len(records)
    assert max(built.contributor_weights.values()) <= (max_rows or 1)
    check_guarantees(published, QIS, ["salary-class"], 5, 2)
    people = published.group_by(QIS).aggregate([("pseudonym", "count_distinct")])["pseudonym_count_distinct"]
    assert built.achieved_k == min(people.to_pylist()) >= 5 and built.achieved_l >= 2
    assert built.columns["pseudonym"] == "string" and set(built.columns) == {"pseudonym", *QIS, "salary-class"}
    assert set(built.contributor_weights) <= {r["member"] for r in records}


def test_pseudonyms_are_keyed_per_dataset_and_never_the_address(definition, records) -> None:
    members = [r["member"] for r in records[:50]]
    one = build.pseudonyms(build.dataset_key(KEY, "census-stats"), members)
    again = build.pseudonyms(build.dataset_key(KEY, "census-stats"), members)
    other = build.pseudonyms(build.dataset_key(KEY, "other-dataset"), members)
    assert one == again
    assert not set(one.values()) & set(other.values())
    assert all(len(p) == 32 and p not in m.lower() for m, p in one.items())


def test_records_lacking_a_column_are_left_out(definition, records) -> None:
    partial = [{**records[0], "fields": {k: v for k, v in records[0]["fields"].items() if k != "age"}},
               {**records[1], "fields": {**records[1]["fields"], "occupation": None}}, *records[2:10]]
    table = build.rows_to_table(partial, definition)
    assert table.incomplete == 2 and len(table.members) == 8


def test_aggregates_land_in_duckdb_once_per_version(definition, records, tmp_path: Path) -> None:
    table = build.rows_to_table(records, definition)
    built = build.build_version(table, definition, KEY, np.random.default_rng(1))
    db = tmp_path / "aggregates.duckdb"
    build.write_aggregates(db, "census-stats", 1, built, definition)
    build.write_aggregates(db, "census-stats", 1, built, definition)  # a re-run replaces, never adds
    found = build.read_aggregates(db, "census-stats", 1)
    assert found is not None and found["epsilon"] == 1.0 and found["quasi_identifiers"] == QIS
    assert len(found["cells"]) == len(built.aggregates)
    assert abs(sum(c["count"] for c in found["cells"]) - built.report.rows_published) < 50 * len(found["cells"])
    assert build.read_aggregates(db, "census-stats", 2) is None
    url = build.write_parquet(tmp_path / "objects", "census-stats", 1, built.parquet)
    assert url.startswith("file://") and Path(url.removeprefix("file://")).read_bytes() == built.parquet
    with duckdb.connect(str(db)) as writing:  # the builder writing the next version while the API reads
        writing.execute("BEGIN TRANSACTION")
        writing.execute("DELETE FROM cell_aggregates WHERE version = 1")  # not committed: readers still see it
        during = build.read_aggregates(db, "census-stats", 1)
        assert during is not None and len(during["cells"]) == len(found["cells"])
        writing.execute("ROLLBACK")


@pytest.mark.parametrize("values", [
    ["b", "a", "b", "c"] * 2000,
    [*range(5000, 0, -1), 3, 3],
    [1.5, 2.0, float("nan")] * 3000,
    ["x", 1, None] * 2000,  # mixed types and None: the slow path, same answer
    [True, False] * 3000,
    ["b", "a"],
])
def test_distinct_strings_equals_numpy_unique_of_str(values) -> None:
    from services.anonymizer.hierarchy import distinct_strings

    expected, inverse = np.unique(np.asarray([str(v) for v in values], dtype=str), return_inverse=True)
    got, got_inverse = distinct_strings(values)
    assert got == [str(u) for u in expected]
    assert np.array_equal(got_inverse, inverse.reshape(-1))


def test_plaintexts_parse_to_the_same_table_as_decrypted_rows(definition, records) -> None:
    import json

    sample = records[:20]
    plaintexts = [json.dumps(r["fields"]).encode() for r in sample]
    plaintexts[3] = json.dumps({**sample[3]["fields"], "age": None}).encode()
    table = build.table_from_plaintexts(plaintexts, [r["member"] for r in sample], [r["record_id"] for r in sample],
                                        definition)
    expected = build.rows_to_table([r if i != 3 else {**r, "fields": {**r["fields"], "age": None}}
                                    for i, r in enumerate(sample)], definition)
    assert table == expected and table.incomplete == 1


def test_the_bound_keeps_each_members_newest_records_by_record_id_whatever_their_order(definition, records) -> None:
    sample = records[:40]  # members 0..39, one record each: give member 0 nine more
    extra = [{**records[i], "member": records[0]["member"], "record_id": f"u-9{i:05d}"} for i in range(100, 109)]
    bounded, left_out = build.bound_rows_per_member(build.rows_to_table([*extra[::-1], *sample], definition), 3)
    theirs = sorted(r for m, r in zip(bounded.members, bounded.record_ids, strict=True) if m == records[0]["member"])
    assert theirs == ["u-900106", "u-900107", "u-900108"] and left_out == 7
    again, _ = build.bound_rows_per_member(build.rows_to_table([*sample[::-1], *extra], definition), 3)
    assert sorted(again.record_ids) == sorted(bounded.record_ids)
    unchanged, none_out = build.bound_rows_per_member(build.rows_to_table(sample, definition), 1)
    assert none_out == 0 and unchanged.record_ids == [r["record_id"] for r in sample]


MARKER = "Zz-marker-7f3a"


@pytest.mark.parametrize("poison", ["hierarchy", "integer", "value"])
def test_a_failed_build_never_quotes_a_records_value(definition, records, poison) -> None:
    """The message of a build's failure reaches logs, the datasets topic and the public build API."""
    raw = census_definition(k=5, l=2)
    fields = dict(records[0]["fields"])
    if poison == "hierarchy":
        fields["occupation"] = MARKER
    else:  # a published integer column, or the aggregates' value column, holding text
        raw["columns"]["hours"] = {"type": "integer", "min": 0, "max": 99}
        raw["published_as_is"] = ["hours"]
        if poison == "value":
            raw["aggregates"]["value_column"] = "hours"
            raw["aggregates"]["value_bounds"] = [0, 99]
        fields["hours"] = MARKER
    resolved = resolve(parse_definition(raw))
    rows = [{**r, "fields": {**r["fields"], "hours": 40}} for r in records[1:]]
    rows.append({**records[0], "member": "0x" + "ab" * 20, "fields": fields})
    with pytest.raises(Exception) as failed:
        build.build_version(build.rows_to_table(rows, resolved), resolved, KEY, np.random.default_rng(0))
    assert MARKER not in str(failed.value) and MARKER.lower() not in str(failed.value).lower()
    assert "1" in str(failed.value)  # counted instead


def test_the_last_check_on_the_written_rows_refuses_a_class_short_of_l(records, monkeypatch) -> None:
    """The build re-measures k and l on the table it writes; l short of the definition's must refuse too,
    whatever the engine returned (here an engine whose output lost every class's diversity)."""
    from dataclasses import replace

    definition = resolve(parse_definition(census_definition(k=5, l=2)))
    real = build.anonymize

    def undiverse(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        columns = dict(out.columns)
        columns["salary-class"] = ["<=50K"] * len(columns["salary-class"])
        return replace(out, columns=columns)

    monkeypatch.setattr(build, "anonymize", undiverse)
    table = build.rows_to_table(records, definition)
    with pytest.raises(build.PrivacyViolation, match="l=2"):
        build.build_version(table, definition, build.dataset_key(KEY, "census-stats"), np.random.default_rng(7))
