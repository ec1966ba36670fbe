"""Uploads as the adversarial tester wrote them: a value is never cut or changed to fit a field (a date with text
after it, a number with `_` grouping), a JSON line is split at line feeds alone and names a field given twice,
a byte-order mark or a JSON array is understood, and a CSV reader's fault is told in its own words."""

from __future__ import annotations

import json

import pytest

from services.vault.categories import MALFORMED, UploadRefused, check_rows, load_schemas, parse_upload

SCHEMAS = load_schemas()


def _refusal(category: str, content: str, fmt: str = "jsonl") -> UploadRefused:
    with pytest.raises(UploadRefused) as refused:
        check_rows(SCHEMAS[category], parse_upload(content, fmt))  # type: ignore[arg-type]
    return refused.value


@pytest.mark.parametrize("day", ["2026-03-08 or maybe the 9th", "2026-01-0112345", "2026-01-01T23:59:59+14:00",
                                 "20260308", "2026-W10-1", "２０２６-03-08"])
def test_a_date_with_anything_else_is_refused_not_cut_to_ten_characters(day: str) -> None:
    for content, fmt in ((json.dumps({"day": day, "steps": 3}), "jsonl"), (f"day,steps\n{day},3\n", "csv")):
        errors = _refusal("fitness", content, fmt).errors
        assert [(e.row, e.field) for e in errors] == [(1, "day")], errors
        assert errors[0].message.startswith("expected a date YYYY-MM-DD"), errors


def test_a_plain_date_is_still_a_date() -> None:
    rows = check_rows(SCHEMAS["fitness"], parse_upload("day,steps\n 2026-03-08 ,3\n", "csv"))
    assert rows[0]["day"] == "2026-03-08"


@pytest.mark.parametrize(("field", "value"), [
    ("heart_rate_bpm", "1_00"), ("heart_rate_bpm", " 6_0 "), ("heart_rate_bpm", "60.5"), ("heart_rate_bpm", "6.05e1"),
    ("heart_rate_bpm", "٦٠"), ("heart_rate_bpm", "0x40"), ("weight_kg", "2_5"), ("weight_kg", " 7_0.5"),
    ("weight_kg", "nan"), ("weight_kg", "inf"), ("weight_kg", "-Infinity"), ("weight_kg", "٧٠"),
    ("weight_kg", "70,5"), ("weight_kg", "0x1p6"),
])
def test_a_number_not_written_plainly_is_refused_not_changed(field: str, value: str) -> None:
    """As a CSV cell or a JSON string: int() and float() read `1_000`, `2_5`, digits of other scripts; an integer
    field takes 1e2 or 60.0 (exactly whole) but never rounds 60.5."""
    with pytest.raises(UploadRefused) as refused:
        check_rows(SCHEMAS["health"], [{"measured_on": "2026-03-10", field: value}])
    errors = refused.value.errors
    assert [(e.row, e.field) for e in errors] == [(1, field)], errors
    assert errors[0].message.startswith(("expected an integer", "expected a number", "expected a finite number"))
    assert ("without _ grouping" in errors[0].message) == ("_" in value), errors


def test_plain_numbers_stay_valid() -> None:
    rows = check_rows(SCHEMAS["health"], parse_upload(
        "measured_on,heart_rate_bpm,weight_kg\n2026-03-10, 62 ,72.5\n2026-03-11,+70,1e2\n2026-03-12,60,.5e2\n"
        "2026-03-13,61,80.\n2026-03-14,1e2,80\n2026-03-15,60.0,80\n", "csv"))
    assert [(r["heart_rate_bpm"], r["weight_kg"]) for r in rows] == [(62, 72.5), (70, 100.0), (60, 50.0), (61, 80.0),
                                                                      (100, 80.0), (60, 80.0)]
    json_rows = check_rows(SCHEMAS["health"], parse_upload(
        '{"measured_on": "2026-03-10", "heart_rate_bpm": 1e2, "weight_kg": 70}\n'
        '{"measured_on": "2026-03-11", "heart_rate_bpm": 60.0, "weight_kg": "70.5"}\n', "jsonl"))
    assert [(r["heart_rate_bpm"], r["weight_kg"]) for r in json_rows] == [(100, 70.0), (60, 70.5)]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x1c", "\x0b", "\x0c"])
def test_a_json_line_is_ended_by_a_line_feed_alone(separator: str) -> None:
    """U+2028, U+2029 and U+0085 are valid raw inside a JSON string; str.splitlines() ended the line there. The
    C0 controls among them are read inside the line too, and then refused as text (JSON escapes them)."""
    line = json.dumps({"measured_on": "2026-01-01", "condition": f"headache{separator}after run"}, ensure_ascii=False)
    parsed = parse_upload(f"{line}\r\n{line}\n", "jsonl")
    assert [r["condition"] for r in parsed] == [f"headache{separator}after run"] * 2
    if separator < " ":
        with pytest.raises(UploadRefused, match="2 problem"):
            check_rows(SCHEMAS["health"], parsed)
        return
    rows = check_rows(SCHEMAS["health"], parsed)
    assert [r["condition"] for r in rows] == [f"headache{separator}after run"] * 2


def test_lines_ended_by_a_carriage_return_alone_are_read_as_lines() -> None:
    """Classic Mac line ends: JSON lines were one line, refused as "not JSON (Extra data)", and a CSV's
    header "cannot be read (new-line character seen in unquoted field)"."""
    lines = [json.dumps({"day": f"2026-01-0{i}", "steps": i}) for i in range(1, 4)]
    fitness = SCHEMAS["fitness"]
    assert [r["steps"] for r in check_rows(fitness, parse_upload("\r".join(lines) + "\r", "jsonl"))] == [1, 2, 3]
    assert [r["steps"] for r in check_rows(fitness, parse_upload(lines[0] + "\r", "jsonl"))] == [1]
    one = '{"day": "2026-01-03",\r "steps": 4}'  # one object, a \r as whitespace inside it
    assert [r["steps"] for r in check_rows(fitness, parse_upload(one, "jsonl"))] == [4]
    csv_text = "day;steps\r2026-01-03;1\r2026-01-04;2\r"
    assert [r["steps"] for r in check_rows(fitness, parse_upload(csv_text, "csv"))] == [1, 2]
    quoted = 'measured_on,condition\r2026-01-03,"cough\rthen fever"\r'  # a quoted value may hold a line end
    assert check_rows(SCHEMAS["health"], parse_upload(quoted, "csv"))[0]["condition"] == "cough\rthen fever"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_a_csv_value_may_hold_unicode_line_separators(separator: str) -> None:
    rows = check_rows(SCHEMAS["health"], parse_upload(
        f'measured_on,condition\n2026-01-01,"a{separator}b"\n2026-01-02,c{separator}d\n', "csv"))
    assert [r["condition"] for r in rows] == [f"a{separator}b", f"c{separator}d"]


def test_a_json_line_giving_a_field_twice_is_refused_like_a_repeated_csv_column() -> None:
    refused = _refusal("fitness", '{"day":"2026-03-12","steps":999999,"steps":7}\n{"day":"2026-03-13","steps":7}\n'
                                  '{"day":"2026-03-14","steps":7,"workout":"run","day":"2026-03-15"}\n')
    assert [(e.row, e.field) for e in refused.errors] == [(1, "steps"), (3, "day")], refused.errors
    assert "gives field 'steps' more than once" in refused.errors[0].message


def test_colons_in_values_are_not_repeated_fields() -> None:
    text = json.dumps({"measured_on": "2026-01-01", "condition": "a: b: c: d"})
    assert check_rows(SCHEMAS["health"], parse_upload(text, "jsonl"))[0]["condition"] == "a: b: c: d"


def test_json_lines_may_start_with_a_byte_order_mark_as_csv_may() -> None:
    jsonl = "\ufeff" + json.dumps({"day": "2026-01-03", "steps": 1}) + "\n"
    csv_text = "\ufeffday,steps\r\n2026-01-03,1\r\n"
    fitness = SCHEMAS["fitness"]
    assert check_rows(fitness, parse_upload(jsonl, "jsonl")) == check_rows(fitness, parse_upload(csv_text, "csv"))


PRETTY = json.dumps([{"day": "2026-06-01", "steps": 1}, {"day": "2026-06-02", "steps": 2}], indent=2)


@pytest.mark.parametrize("content", [PRETTY, "\ufeff  \n" + PRETTY, json.dumps([{"day": "2026-06-01", "steps": 1}]),
                                     "[\n]"])
def test_a_json_array_is_refused_once_saying_how_to_convert_it(content: str) -> None:
    with pytest.raises(UploadRefused) as refused:
        parse_upload(content, "jsonl")
    assert "JSON Lines takes one object per line" in refused.value.message
    assert "jq -c '.[]'" in refused.value.message and "nothing was stored" in refused.value.message
    assert len(refused.value.errors) == 1 and refused.value.errors[0].row == 0


@pytest.mark.parametrize("content", [json.dumps({"day": "2026-06-01", "steps": 1}, indent=2),
                                     json.dumps({"day": "2026-06-01", "steps": 1}, indent=2) + "\n"
                                     + json.dumps({"day": "2026-06-02", "steps": 2}, indent=2)])
def test_objects_written_over_several_lines_are_refused_once(content: str) -> None:
    with pytest.raises(UploadRefused) as refused:
        parse_upload(content, "jsonl")
    assert "each object on one line" in refused.value.message and "jq -c" in refused.value.message
    assert len(refused.value.errors) == 1


@pytest.mark.parametrize("content", ["day,steps\n2026-06-01,1\n2026-06-02,2\n", "\nday;steps\n2026-06-01;1\n"])
def test_csv_given_as_json_lines_is_refused_once_naming_csv(content: str) -> None:
    """It listed a "not JSON" error for every line, the header counted as row 1, and never said CSV."""
    with pytest.raises(UploadRefused) as refused:
        parse_upload(content, "jsonl")
    assert "it reads as CSV" in refused.value.message and "--format csv" in refused.value.message
    assert len(refused.value.errors) == 1 and refused.value.errors[0].row == 0


def test_text_that_is_neither_is_still_a_row_error_per_line() -> None:
    rows = parse_upload("hello there\nsteps: 5\n", "jsonl")
    assert all(MALFORMED in r for r in rows) and len(rows) == 2


def test_a_line_that_is_an_array_among_objects_is_still_a_row_error() -> None:
    rows = parse_upload('{"day": "2026-03-01", "steps": 5}\n[1, 2]\n{oops\n', "jsonl")
    assert [MALFORMED in r for r in rows] == [False, True, True]


HEADER = "day,steps,active_minutes,resting_heart_rate_bpm,distance_m,workout"


def test_a_csv_value_over_the_field_limit_is_named_not_blamed_on_a_quote() -> None:
    for cell in ("x" * 200_000, '"' + "x" * 200_000 + '"', '"' + 'x""' * 70_000 + '"'):
        refused = _refusal("fitness", f"{HEADER}\n2026-03-01,5,20,,,walk\n2026-03-02,5,20,,,{cell}\n", "csv")
        assert [(e.row, e.field) for e in refused.errors] == [(2, "workout")], refused.errors
        message = refused.errors[0].message
        assert "column 6" in message and "131,072" in message and "never closed" not in message, message


def test_a_quote_never_closed_is_still_said_so() -> None:
    for text in (f'{HEADER}\n"2026-03-01,5,20,,,walk\n2026-03-02,5,20,,,walk\n',
                 f'{HEADER}\n2026-03-01,"{"x" * 200_000}\n'):
        refused = _refusal("fitness", text, "csv")
        assert [(e.row, e.field) for e in refused.errors] == [(1, "(whole row)")], refused.errors
        assert "a quote opened and never closed" in refused.errors[0].message


def test_a_quote_inside_a_quoted_value_is_said_to_need_doubling() -> None:
    refused = _refusal("fitness", f'{HEADER}\n2026-03-01,5,20,,,"wa"lk"\n', "csv")
    assert "must be doubled" in refused.errors[0].message and "never closed" not in refused.errors[0].message
