"""Category schemas and upload checking: all rows or none, every bad (row, field) named."""

from __future__ import annotations

import csv
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.anonymizer.definition import shared_dir
from services.consent.catalog import load_catalog
from services.vault.categories import MALFORMED, UploadRefused, check_rows, load_schemas, parse_upload
from services.vault.client import sample_rows

ADULT = shared_dir() / "data" / "adult" / "adult.csv"
SCHEMAS = load_schemas()


def test_every_consent_category_has_a_schema_and_no_schema_lacks_one() -> None:
    assert set(SCHEMAS) == set(load_catalog().categories)
    assert all(s.version >= 1 for s in SCHEMAS.values())


@pytest.mark.parametrize("category", sorted(SCHEMAS))
def test_sample_rows_of_every_category_are_valid(category: str) -> None:
    rows = sample_rows(category, 20, seed=3)
    assert len(check_rows(SCHEMAS[category], rows)) == 20


def test_finance_takes_income_as_a_band_and_refuses_an_amount_or_a_bad_month() -> None:
    good = {"month": "2026-03", "income_band": "50k-100k", "monthly_spend_eur": 1830.5}
    assert check_rows(SCHEMAS["finance"], [good])[0]["monthly_spend_eur"] == 1830.5
    with pytest.raises(UploadRefused) as refused:
        check_rows(SCHEMAS["finance"], [{**good, "income_band": "62000"}, {**good, "month": "2026-13"}])
    assert [(e.row, e.field) for e in refused.value.errors] == [(1, "income_band"), (2, "month")]


def _adult_text() -> str:
    assert ADULT.exists(), f"{ADULT} is missing: check out ../shared beside the repository (the benchmark data)"
    return ADULT.read_text()


def test_demographics_fields_are_the_adult_columns() -> None:
    header = _adult_text().splitlines()[0].split(";")
    assert {f.name for f in SCHEMAS["demographics"].fields} == set(header)


def test_every_adult_row_is_valid_demographics() -> None:
    text = _adult_text()
    rows = check_rows(SCHEMAS["demographics"], parse_upload(text, "csv"))
    assert len(rows) == 30162
    first = next(csv.DictReader(text.splitlines(), delimiter=";"))
    assert rows[0] == {**first, "age": int(first["age"])}


def test_csv_and_jsonl_give_the_same_typed_rows() -> None:
    csv_text = "day,steps,active_minutes,workout\n2026-01-02,1234,30,run\n2026-01-03,99,,\n"
    rows = [{"day": "2026-01-02", "steps": 1234, "active_minutes": 30, "workout": "run"},
            {"day": "2026-01-03", "steps": 99}]
    jsonl = "\n".join(json.dumps(r) for r in rows)
    fitness = SCHEMAS["fitness"]
    assert check_rows(fitness, parse_upload(csv_text, "csv")) == check_rows(fitness, parse_upload(jsonl, "jsonl"))


def test_a_bad_upload_is_refused_whole_naming_each_row_and_field() -> None:
    rows = [{"day": "2026-01-02", "steps": 10},
            {"day": "yesterday", "steps": -1},
            {"day": "2026-01-04", "steps": "many", "mood": "great"},
            {"steps": 5, "workout": "ballet"}]
    with pytest.raises(UploadRefused) as refused:
        check_rows(SCHEMAS["fitness"], rows)
    found = {(e.row, e.field) for e in refused.value.errors}
    assert found == {(2, "day"), (2, "steps"), (3, "steps"), (3, "mood"), (4, "day"), (4, "workout")}
    messages = {(e.row, e.field): e.message for e in refused.value.errors}
    assert "0..200000" in messages[(2, "steps")] and "required" in messages[(4, "day")]
    assert "nothing was stored" in refused.value.message


def test_a_file_of_other_columns_is_refused_once_for_the_whole_upload() -> None:
    """500 rows of x, y, z: one message naming the columns and the category's fields, the exact count of bad
    rows never capped by the reported errors."""
    rows = [{"x": str(i), "y": "a", "z": "b"} for i in range(500)]
    with pytest.raises(UploadRefused) as refused:
        check_rows(SCHEMAS["demographics"], rows)
    message = refused.value.message
    assert "x, y, z are not fields of demographics" in message and "no row holds the required" in message
    assert "age" in message and "nothing was stored" in message
    assert {(e.row, e.field) for e in refused.value.errors if e.field in "xyz"} == {(0, "x"), (0, "y"), (0, "z")}
    bad = [{"day": "2026-01-02", "steps": -1}] * 300  # more bad rows than errors are reported
    with pytest.raises(UploadRefused) as counted:
        check_rows(SCHEMAS["fitness"], bad)
    assert counted.value.message.startswith("300 problem(s) in 300 row(s)")


@pytest.mark.parametrize(("category", "row", "field"), [
    ("health", {"measured_on": "2026-01-01", "systolic_mmhg": 400}, "systolic_mmhg"),
    ("health", {"measured_on": "2026-01-01", "icd10": "diabetes"}, "icd10"),
    ("health", {"measured_on": "2026-01-01", "smoker": "sometimes"}, "smoker"),
    ("location", {"recorded_on": "2026-01-01", "postcode": "8001", "country": "CH", "latitude": 91}, "latitude"),
    ("location", {"recorded_on": "2026-01-01", "postcode": "8001", "country": "Switzerland"}, "country"),
    ("demographics", {"age": 16}, "age"),
])
def test_ranges_patterns_and_types_are_enforced(category: str, row: dict[str, object], field: str) -> None:
    with pytest.raises(UploadRefused) as refused:
        check_rows(SCHEMAS[category], [row])
    assert field in {e.field for e in refused.value.errors}


def test_unparseable_uploads_name_the_row() -> None:
    good = '{"day": "2026-03-01", "steps": 5}'
    with pytest.raises(UploadRefused) as bad_json:
        check_rows(SCHEMAS["fitness"], parse_upload(f'{good}\n{{oops\n[1, 2]\n', "jsonl"))
    assert [(e.row, e.field) for e in bad_json.value.errors] == [(2, "(whole row)"), (3, "(whole row)")]
    assert "not JSON" in bad_json.value.errors[0].message and "JSON object" in bad_json.value.errors[1].message
    with pytest.raises(UploadRefused):
        check_rows(SCHEMAS["fitness"], [])


def test_every_bad_csv_row_is_reported_at_once_structural_and_field_alike() -> None:
    header = "day,steps,active_minutes,resting_heart_rate_bpm,distance_m,workout"
    text = (f"{header}\n2026-03-01,-5,20,,,walk\n2026-03-02,1,2\n2026-03-03,100,20,,,walk\n"
            '2026-03-04,"100,20,,,walk\n2026-03-05,7,20,,,walk\n')
    with pytest.raises(UploadRefused) as refused:
        check_rows(SCHEMAS["fitness"], parse_upload(text, "csv"))
    found = [(e.row, e.field) for e in refused.value.errors]
    assert found == [(1, "steps"), (2, "(whole row)"), (4, "(whole row)")], found
    assert "3 values, the header has 6 columns" in refused.value.errors[1].message
    assert "never closed" in refused.value.errors[2].message
    assert "3 problem(s) in 3 row(s)" in refused.value.message
    with pytest.raises(UploadRefused) as at_the_end:  # the last line's quote left open: not a good row
        check_rows(SCHEMAS["fitness"], parse_upload(f'{header}\n2026-03-01,5,20,,,"walk\n', "csv"))
    assert [(e.row, e.field) for e in at_the_end.value.errors] == [(1, "(whole row)")]
    with pytest.raises(UploadRefused) as huge:  # a value past the reader's limit: reported, not a crash
        check_rows(SCHEMAS["fitness"], parse_upload(f'{header}\n2026-03-01,"{"x" * 200_000}\n', "csv"))
    assert huge.value.errors[0].field == "(whole row)"


def test_a_quoted_value_may_hold_a_line_break() -> None:
    rows = parse_upload('day,steps,workout\n2026-03-01,5,"walk\nthen run"\n', "csv")
    assert rows == [{"day": "2026-03-01", "steps": "5", "workout": "walk\nthen run"}]


@pytest.mark.parametrize(("header", "said"), [("day,steps,steps", "'steps' appears twice"),
                                              ("day,,steps", "column 2 of the CSV header has no name")])
def test_a_header_that_cannot_name_the_fields_refuses_the_upload(header: str, said: str) -> None:
    with pytest.raises(UploadRefused, match=said):
        parse_upload(f"{header}\n2026-01-08,100,200\n", "csv")


@pytest.mark.parametrize("category", ["demographics", "health", "fitness", "location"])
def test_sample_rows_for_demos_are_valid(category: str) -> None:
    from services.vault.client import sample_rows

    rows = sample_rows(category, 200, seed=3)
    assert len(check_rows(SCHEMAS[category], rows)) == 200
    assert rows == sample_rows(category, 200, seed=3)


@pytest.mark.parametrize(("category", "line", "field", "said"), [
    ("demographics", '{"age": 30, "sex": {"a": 1}}', "sex", "expected text, got a JSON object"),
    ("fitness", '{"day": "2026-01-01", "steps": 5, "workout": ["run"]}', "workout", "expected text, got a JSON list"),
    ("health", '{"measured_on": "2026-01-01", "icd10": {"code": "E11"}}', "icd10", "expected text"),
    ("health", '{"measured_on": "2026-01-01", "weight_kg": ' + "9" * 400 + "}", "weight_kg",
     "expected a number of at most 40 characters"),
    ("health", '{"measured_on": "2026-01-01", "weight_kg": 1e400}', "weight_kg", "expected a finite number"),
    ("health", '{"measured_on": "2026-01-01", "weight_kg": NaN}', "weight_kg", "expected a finite number"),
    ("health", '{"measured_on": "2026-01-01", "heart_rate_bpm": Infinity}', "heart_rate_bpm",
     "expected an integer"),
    ("health", '{"measured_on": "2026-01-01", "heart_rate_bpm": 1e300}', "heart_rate_bpm", "is outside 20..250"),
    ("health", '{"measured_on": ["2026-01-01"]}', "measured_on", "expected a date YYYY-MM-DD, got a JSON list"),
    ("health", '{"measured_on": "2026-01-01", "smoker": {}}', "smoker", "expected true or false"),
    ("fitness", '{"day": "2026-01-01", "steps": true}', "steps", "expected an integer, got 'true'"),
])
def test_a_json_value_of_the_wrong_kind_is_a_row_error(category: str, line: str, field: str, said: str) -> None:
    """An object where text belongs (unhashable, so `in` an enum raised TypeError), a number literal of hundreds
    of digits or past a float's range: each a row of the 422 report, never an error of the server."""
    with pytest.raises(UploadRefused) as refused:
        check_rows(SCHEMAS[category], parse_upload(line, "jsonl"))
    messages = {e.field: e.message for e in refused.value.errors}
    assert said in messages[field], messages
    assert all(len(m) < 200 for m in messages.values()), messages  # a huge value is not echoed whole


def test_a_json_line_that_python_cannot_read_is_reported_with_the_others() -> None:
    """json.loads overflows the C stack on deep nesting (eth_account lifts the recursion limit; this test module
    imports it through sample_rows): such a line is a malformed row. An integer literal over 4,300 digits (which
    int() refuses) is read as its text and refused by its field as too long. Each is reported with the others,
    the upload refused whole."""
    good = '{"day": "2026-03-01", "steps": 5}'
    lines = [good, '{"day": "2026-03-01", "steps": ' + "1" * 5000 + "}", good, "[" * 100_000 + "]" * 100_000,
             '{"day": "2026-03-01", "steps": -1}']
    with pytest.raises(UploadRefused) as refused:
        check_rows(SCHEMAS["fitness"], parse_upload("\n".join(lines), "jsonl"))
    found = [(e.row, e.field) for e in refused.value.errors]
    assert found == [(2, "steps"), (4, "(whole row)"), (5, "steps")], found
    assert "at most 40 characters" in refused.value.errors[0].message
    assert "5,000 characters" in refused.value.errors[0].message
    assert "nested more than 64 deep" in refused.value.errors[1].message


def test_brackets_in_text_are_not_nesting() -> None:
    condition = '[{"\\' * 20  # brackets, quotes and backslashes inside one string value
    line = json.dumps({"measured_on": "2026-01-01", "condition": condition})
    assert check_rows(SCHEMAS["health"], parse_upload(line, "jsonl"))[0]["condition"] == condition
    for depth, deep in ((63, False), (64, True)):  # inside the row's object: 64 levels, then 65
        nested: object = "x"
        for level in range(depth):
            nested = [nested, '"[{\\'] if level % 2 else {"k]": nested, "v": "}{"}
        rows = parse_upload(json.dumps({"day": "2026-01-01", "steps": 1, "workout": nested}), "jsonl")
        assert (MALFORMED in rows[0]) is deep, rows[0]


def test_a_csv_cell_of_digits_other_than_ascii_is_a_row_error() -> None:
    with pytest.raises(UploadRefused) as refused:
        check_rows(SCHEMAS["fitness"], parse_upload(f"day,steps\n2026-01-01,\u00b2\n2026-01-02,{'1' * 5000}\n", "csv"))
    messages = [(e.row, e.field, e.message) for e in refused.value.errors]
    assert messages[0] == (1, "steps", "expected an integer, got '\u00b2'"), messages
    assert messages[1][:2] == (2, "steps") and messages[1][2].startswith("expected an integer"), messages


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**4299, 10**4299) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(category=st.sampled_from(sorted(SCHEMAS)), data=st.data())
def test_any_json_value_in_any_field_is_typed_or_a_row_error(category: str, data: st.DataObject) -> None:
    schema = SCHEMAS[category]
    row = dict(sample_rows(category, 1, seed=5)[0])
    row[data.draw(st.sampled_from([f.name for f in schema.fields]))] = data.draw(JSON_VALUES)
    for rows in ([row], parse_upload(json.dumps(row), "jsonl")):
        try:
            check_rows(schema, rows)
        except UploadRefused as refused:
            assert refused.errors
