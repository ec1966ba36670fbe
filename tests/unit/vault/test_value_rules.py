"""One rule set for a value, whatever the upload's format: a CSV cell, a JSON string and a JSON number or
literal (`1e3`, `true`, `NaN`) are read as the same text, so each row of the table below must give the same
typed value, or the same row error, through CSV and JSON lines alike (docs/vault.md, "Values")."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from typing import Any

import pytest

from services.vault.categories import UploadRefused, check_rows, load_schemas, parse_upload

SCHEMAS = load_schemas()

# Each kind of field, and a row around it with the category's other required fields.
FIELDS = {"integer": ("fitness", "steps"),        # 0..200000, required
          "number": ("location", "latitude"),     # -90..90
          "date": ("fitness", "day"),             # 1900-01-01..2100-12-31, required
          "enum": ("fitness", "workout"),         # none, walk, run, cycle, swim, strength, yoga, other
          "string": ("health", "condition"),      # at most 120 characters
          "boolean": ("health", "smoker")}
ROWS = {"fitness": {"day": "2026-03-01", "steps": "5"}, "health": {"measured_on": "2026-03-01"},
        "location": {"recorded_on": "2026-03-01", "postcode": "8001", "country": "CH"}}

# What JSON may write bare (unquoted): a number, and the literals Python's json also reads.
JSON_LITERAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|NaN|-?Infinity|true|false")


class Refused:
    def __init__(self, words: str) -> None:
        self.words = words

    def __repr__(self) -> str:
        return f"Refused({self.words!r})"


LONG_DIGITS = "1" * 50
TABLE: list[tuple[str, str, Any]] = [
    # integer: an optional sign and digits, or any plain decimal that is exactly whole
    ("integer", "8000", 8000),
    ("integer", " 8000 ", 8000),
    ("integer", "+8000", 8000),
    ("integer", "007", 7),
    ("integer", "1e3", 1000),
    ("integer", "1E2", 100),
    ("integer", "1000.0", 1000),
    ("integer", "1000.", 1000),
    ("integer", "1.5e3", 1500),
    ("integer", "-0", 0),
    ("integer", "-0.0", 0),
    ("integer", "0e999999", 0),
    ("integer", "1000.5", Refused("not a whole number")),
    ("integer", "1e-1", Refused("not a whole number")),
    ("integer", "1.0000000000000000001", Refused("not a whole number")),  # a float would make it 1
    ("integer", "250000", Refused("outside 0..200000")),
    ("integer", "2.5e5", Refused("outside 0..200000")),
    ("integer", "1e999999", Refused("outside 0..200000")),
    ("integer", "-1", Refused("outside 0..200000")),
    ("integer", "1_000", Refused("without _ grouping")),
    ("integer", "\u0663", Refused("expected an integer")),
    ("integer", "0x10", Refused("expected an integer")),
    ("integer", "12 000", Refused("expected an integer")),
    ("integer", "1,000", Refused("expected an integer")),
    ("integer", "NaN", Refused("expected an integer")),
    ("integer", "Infinity", Refused("expected an integer")),
    ("integer", "true", Refused("expected an integer")),
    ("integer", LONG_DIGITS, Refused("at most 40 characters")),
    ("integer", "   ", Refused("is required and missing")),
    # number: a plain decimal, with an optional sign, point and exponent; finite; -0 is 0
    ("number", "47.5", 47.5),
    ("number", " 47.5 ", 47.5),
    ("number", "+47.5", 47.5),
    ("number", "47", 47.0),
    ("number", ".5", 0.5),
    ("number", "5.", 5.0),
    ("number", "4.75e1", 47.5),
    ("number", "1E1", 10.0),
    ("number", "-0", 0.0),
    ("number", "-0.0", 0.0),
    ("number", "NaN", Refused("expected a finite number")),
    ("number", "nan", Refused("expected a finite number")),
    ("number", "Infinity", Refused("expected a finite number")),
    ("number", "-Infinity", Refused("expected a finite number")),
    ("number", "inf", Refused("expected a finite number")),
    ("number", "1e400", Refused("expected a finite number")),
    ("number", "1e-400", Refused("too close to 0")),
    ("number", "91", Refused("outside -90..90")),
    ("number", "47,5", Refused("expected a number")),
    ("number", "4_7", Refused("without _ grouping")),
    ("number", "0x1p6", Refused("expected a number")),
    ("number", "\u0664\u0667", Refused("expected a number")),
    ("number", "9" * 50, Refused("at most 40 characters")),
    ("number", "false", Refused("expected a number")),
    # date: YYYY-MM-DD alone
    ("date", "2026-03-08", "2026-03-08"),
    ("date", " 2026-03-08 ", "2026-03-08"),
    ("date", "2026-3-8", Refused("expected a date YYYY-MM-DD")),
    ("date", "20260308", Refused("expected a date YYYY-MM-DD")),
    ("date", "2026-02-30", Refused("expected a date YYYY-MM-DD")),
    ("date", "2026-03-08T10:00", Refused("expected a date YYYY-MM-DD")),
    ("date", "1899-12-31", Refused("outside 1900-01-01..2100-12-31")),
    # enum: one of the values, exactly (case counts)
    ("enum", "run", "run"),
    ("enum", " run ", "run"),
    ("enum", "Run", Refused("is not one of")),
    ("enum", "5", Refused("is not one of")),
    ("enum", "true", Refused("is not one of")),
    # string: the text, spaces around it dropped; a JSON number is its literal
    ("string", "asthma", "asthma"),
    ("string", "  asthma  ", "asthma"),
    ("string", "120", "120"),
    ("string", "1e3", "1e3"),
    ("string", "true", "true"),
    ("string", "x" * 121, Refused("at most 120 allowed")),
    # boolean: true/false, 1/0, yes/no, any case
    ("boolean", "true", True),
    ("boolean", "FALSE", False),
    ("boolean", " yes ", True),
    ("boolean", "No", False),
    ("boolean", "1", True),
    ("boolean", "0", False),
    ("boolean", "1.0", Refused("expected true or false")),
    ("boolean", "2", Refused("expected true or false")),
    ("boolean", "maybe", Refused("expected true or false")),
]


def _uploads(kind: str, text: str) -> list[tuple[str, str, str]]:
    """(how, format, content) of one row holding `text` in the field of `kind`: a CSV cell, a JSON string and,
    where JSON can write it bare, a JSON literal."""
    category, field = FIELDS[kind]
    row = {**ROWS[category], field: text}
    cells = io.StringIO()
    csv.writer(cells, lineterminator="\n").writerows([list(row), list(row.values())])
    uploads = [("CSV cell", "csv", cells.getvalue()), ("JSON string", "jsonl", json.dumps(row))]
    if JSON_LITERAL.fullmatch(text):
        uploads.append(("JSON literal", "jsonl", json.dumps({**row, field: "\x00"}).replace('"\\u0000"', text)))
    return uploads


def _outcome(kind: str, fmt: str, content: str) -> Any:
    category, field = FIELDS[kind]
    try:
        return check_rows(SCHEMAS[category], parse_upload(content, fmt))[0][field]  # type: ignore[arg-type]
    except UploadRefused as refused:
        assert [(e.row, e.field) for e in refused.errors] == [(1, field)], refused.errors
        return Refused(refused.errors[0].message)


@pytest.mark.parametrize(("kind", "text", "expected"), TABLE,
                         ids=[f"{kind}-{text[:24]!r}" for kind, text, _ in TABLE])
def test_a_value_is_read_by_the_same_rule_in_csv_and_json_lines(kind: str, text: str, expected: Any) -> None:
    outcomes = {how: _outcome(kind, fmt, content) for how, fmt, content in _uploads(kind, text)}
    for how, outcome in outcomes.items():
        if isinstance(expected, Refused):
            assert isinstance(outcome, Refused), f"{how}: {text!r} was taken as {outcome!r}, not refused"
            assert expected.words in outcome.words, f"{how}: {outcome.words!r}"
            shown = text.strip()[:30]
            assert not shown or shown in outcome.words, f"{how}: the value is not named in {outcome.words!r}"
            assert len(outcome.words) < 200, f"{how}: a long value is shortened"
        else:
            assert not isinstance(outcome, Refused), f"{how}: {text!r} refused: {outcome.words}"
            assert (type(outcome), outcome) == (type(expected), expected), f"{how}: {outcome!r}"
            if isinstance(outcome, float):
                assert math.copysign(1.0, outcome) == 1.0 or expected < 0, f"{how}: -0 is kept as 0"
    words = {how: outcome.words for how, outcome in outcomes.items() if isinstance(outcome, Refused)}
    assert len(set(words.values())) <= 1, f"the formats refuse {text!r} in different words: {words}"


def test_the_same_bad_rows_give_the_same_report_in_both_formats() -> None:
    """The whole upload is refused and every bad row named, in the same words for a CSV cell and a JSON value
    (steps written as bare JSON numbers here)."""
    header = ["day", "steps", "workout"]
    rows = [["2026-03-01", "8000", "run"], ["2026-03-02", "1000.5", "run"], ["2026-03-03", "1e3", "Run"],
            ["2026-3-4", LONG_DIGITS, "walk"], ["2026-03-05", "7", "walk"]]
    csv_text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    jsonl = "\n".join(json.dumps({"day": day, "steps": "\x00", "workout": workout}).replace('"\\u0000"', steps)
                      for day, steps, workout in rows)
    reports = []
    for content, fmt in ((csv_text, "csv"), (jsonl, "jsonl")):
        with pytest.raises(UploadRefused) as refused:
            check_rows(SCHEMAS["fitness"], parse_upload(content, fmt))  # type: ignore[arg-type]
        assert "4 problem(s) in 3 row(s)" in refused.value.message, refused.value.message
        reports.append([(e.row, e.field, e.message) for e in refused.value.errors])
    assert [(row, field) for row, field, _ in reports[0]] == [(2, "steps"), (3, "workout"), (4, "day"),
                                                              (4, "steps")], reports[0]
    assert reports[0] == reports[1]
