"""Category schemas (categories/<name>.yaml, versioned) and the checking of uploaded rows against them.

Pure: parse an upload (JSON lines or CSV, `,` or `;` separated) into rows, then check every row.
An upload with any bad row is refused whole; the report names each bad row (1-based, counting data
rows only) and field, and says what was expected. A value is read by one rule set whatever the format:
a CSV cell, a JSON string and a JSON number (as its literal, `1e3` stays `1e3`) are the same text. Clean rows
come out typed: integer fields as int, number fields as float, dates as ISO `YYYY-MM-DD` strings, booleans as
bool, missing optional fields as None, so the sealed plaintext of a record is the same whatever format it
arrived in.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

CATEGORIES_DIR = Path(__file__).with_name("categories")
MAX_REPORTED_ERRORS = 200

UploadFormat = Literal["jsonl", "csv"]
# A checker returns the typed value or raises ValueError saying what was expected, and nothing else whatever
# value it is given (text, an object, a list, a boolean, or a Python number in rows not parsed from an upload).
Checker = Callable[[Any], Any]


@dataclass(frozen=True, eq=False)
class FieldSpec:
    name: str
    type: str
    required: bool
    rules: dict[str, Any]


@dataclass(frozen=True, eq=False)
class CategorySchema:
    category: str
    version: int
    description: str
    fields: tuple[FieldSpec, ...]

    def describe(self) -> dict[str, Any]:
        return {"category": self.category, "version": self.version, "description": self.description,
                "fields": {f.name: {"type": f.type, "required": f.required, **f.rules} for f in self.fields}}


@dataclass(frozen=True)
class RowError:
    row: int
    field: str
    message: str


class UploadRefused(ValueError):
    """The upload cannot be parsed or has invalid rows; `errors` names each (row, field)."""

    def __init__(self, message: str, errors: list[RowError] | None = None, error_count: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []
        self.error_count = error_count or len(self.errors)


@lru_cache(maxsize=1)
def load_schemas(directory: Path = CATEGORIES_DIR) -> dict[str, CategorySchema]:
    schemas = {}
    for path in sorted(directory.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        fields = []
        for name, spec in raw["fields"].items():
            spec = dict(spec)
            kind = spec.pop("type")
            if kind not in _BUILDERS:
                raise ValueError(f"{path.name}: field {name} has unknown type {kind!r}")
            fields.append(FieldSpec(name, kind, bool(spec.pop("required", True)), spec))
        schemas[raw["category"]] = CategorySchema(raw["category"], int(raw["version"]), raw.get("description", ""),
                                                  tuple(fields))
    return schemas


# -- field checkers ---------------------------------------------------------------------------
# One rule set for a value whatever the format it came in (docs/vault.md, "Values"): every checker reads the
# value's text, which is a CSV cell as written, a JSON string's contents, or a JSON number or literal as written
# (parse_upload keeps `1e3`, `-0`, `NaN` as their text; true/false arrive as bools and read as "true"/"false").
# Whitespace around the text is dropped; text that is only whitespace is a missing value (check_rows).
MAX_NUMBER_CHARS = 40
"""Longest number an integer or number field reads, sign, point and exponent included (after trimming): past
it a value is a mistake, not a measurement, and refused with its length rather than parsed."""
MAX_INTEGER_DIGITS = 18
"""An integer field's values stay under 10^18 even where its schema sets no min/max (a signed 64-bit store)."""

_INTEGER_LIMIT = 10 ** MAX_INTEGER_DIGITS
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NOT_FINITE = frozenset({"nan", "inf", "infinity"})


def _shown(value: Any) -> str:
    """A value as a row error quotes it: a JSON object or list by its kind (its repr may be huge or nested
    deeper than repr can walk), anything else as written, cut short past 60 characters."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _text(value: Any, expected: str) -> str:
    """The text of a value, trimmed; ValueError(`expected <expected>, got …`) for an object or a list, which
    no field takes. Values given as Python objects (rows not parsed from an upload, e.g. the demo's sample
    rows) read as JSON would write them."""
    if type(value) is str:
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 4 * MAX_NUMBER_CHARS:  # str() refuses past 4,300 digits: say its size instead
            raise ValueError(f"expected {expected} of at most {MAX_NUMBER_CHARS} characters, got an integer of "
                             f"about {int(value.bit_length() * 0.30103):,} digits")
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise ValueError(f"expected {expected}, got {_shown(value)}")


def _decimal_text(value: Any, expected: str) -> str:
    """The text of a number field's value, refused unless it is a plain decimal (ASCII digits, an optional sign,
    point and exponent: what JSON writes, plus a leading `+`, `.5` and `5.`) of at most MAX_NUMBER_CHARS."""
    text = _text(value, expected)
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"expected {expected} of at most {MAX_NUMBER_CHARS} characters, got {_shown(text)} "
                         f"({len(text):,} characters)")
    if not _DECIMAL.fullmatch(text):
        if text.lstrip("+-").lower() in _NOT_FINITE and expected == "a number":
            raise ValueError(f"expected a finite number, got {_shown(text)}")
        hint = " (digits without _ grouping)" if "_" in text else ""
        raise ValueError(f"expected {expected}, got {_shown(text)}{hint}")
    return text


def _outside(text: str, lo: Any, hi: Any) -> ValueError:
    return ValueError(f"{text} is outside {'' if lo is None else lo}..{'' if hi is None else hi}")


def _integer(rules: dict[str, Any]) -> Checker:
    lo, hi = rules.get("min"), rules.get("max")

    def check(value: Any) -> int:
        # The common case, a CSV cell or JSON number of plain digits. ASCII only: isdigit() also takes "²".
        if type(value) is str and value.isascii() and value.isdigit() and len(value) <= MAX_INTEGER_DIGITS:
            number = int(value)
            if (lo is None or number >= lo) and (hi is None or number <= hi):
                return number
        text = _decimal_text(value, "an integer")
        # Exact, never through a float: 1e3 and 1000.0 are 1000, 1.0000000000000000001 is not 1.
        exact = Decimal(text)
        if exact != exact.to_integral_value():
            raise ValueError(f"expected an integer, got {_shown(text)} (not a whole number; it is not rounded)")
        if (lo is not None and exact < lo) or (hi is not None and exact > hi):
            raise _outside(text, lo, hi)
        if not -_INTEGER_LIMIT < exact < _INTEGER_LIMIT:  # compared, not abs(): that rounds, and overflows
            raise ValueError(f"expected an integer of at most {MAX_INTEGER_DIGITS} digits, got {_shown(text)}")
        return int(exact)  # -0 is 0
    return check


def _number(rules: dict[str, Any]) -> Checker:
    lo, hi = rules.get("min"), rules.get("max")

    def check(value: Any) -> float:
        text = _decimal_text(value, "a number")
        number = float(text)  # the nearest 64-bit float, as every JSON reader takes a number
        if number in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {_shown(text)} (beyond ±1.8e308)")
        if number == 0.0:
            if any(digit in "123456789" for digit in text.partition("e")[0].partition("E")[0]):
                raise ValueError(f"expected a number, got {_shown(text)}: too close to 0 for a 64-bit float "
                                 "(under about 1e-308); write 0 if 0 is meant")
            number = 0.0  # -0 is 0
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            raise _outside(text, lo, hi)
        return number
    return check


_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")  # C0 controls but tab, LF and CR (JSON
# writes them \u00XX), and lone surrogates (a JSON escape like \ud800 that pairs with nothing: not a character)


def _string(rules: dict[str, Any]) -> Checker:
    allowed = frozenset(rules["enum"]) if "enum" in rules else None
    pattern = re.compile(rules["pattern"]) if "pattern" in rules else None
    max_length = rules.get("max_length")

    def check(value: Any) -> str:
        if allowed is not None and type(value) is str and value in allowed and max_length is None \
                and pattern is None:
            return value  # the common case of a value set, without the work below
        text = _text(value, "text")
        control = _CONTROL.search(text)
        if control is not None:
            code = ord(control.group())
            if 0xD800 <= code <= 0xDFFF:
                raise ValueError(f"{_shown(text)} holds U+{code:04X} at character {control.start() + 1}: half of a "
                                 "UTF-16 surrogate pair without its other half, which is no character (an escape "
                                 "such as \\ud800 in the JSON?); write the character itself, or its two halves")
            raise ValueError(f"{_shown(text)} holds the control character U+{code:04X} at character "
                             f"{control.start() + 1}; remove it (text may hold tabs and line breaks, no other)")
        if allowed is not None and text not in allowed:
            shown = ", ".join(sorted(allowed)[:12]) + (", …" if len(allowed) > 12 else "")
            raise ValueError(f"{_shown(text)} is not one of {shown}")
        if max_length is not None and len(text) > max_length:
            raise ValueError(f"{_shown(text)} is {len(text):,} characters, at most {max_length} allowed")
        if pattern is not None and not pattern.fullmatch(text):
            raise ValueError(f"{_shown(text)} does not match {pattern.pattern}")
        return text
    return check


def _date(rules: dict[str, Any]) -> Checker:
    lo = date.fromisoformat(str(rules["min"])) if "min" in rules else None
    hi = date.fromisoformat(str(rules["max"])) if "max" in rules else None

    def check(value: Any) -> str:
        # A date alone, as written: "2026-03-08 or maybe the 9th" or a date and time is not cut to its first ten
        # characters, nor the compact 20260308 (fromisoformat's other form) taken.
        text = _text(value, "a date YYYY-MM-DD")
        try:
            day = (date.fromisoformat(text) if len(text) == 10 and text.isascii() and text[4] == "-"
                   and text[7] == "-" else None)
        except ValueError:
            day = None
        if day is None:
            raise ValueError(f"expected a date YYYY-MM-DD, got {_shown(text)}")
        if (lo and day < lo) or (hi and day > hi):
            raise _outside(text, lo, hi)
        return day.isoformat()
    return check


_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


def _boolean(rules: dict[str, Any]) -> Checker:
    def check(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        text = _text(value, "true or false")
        if text.lower() in _TRUE or text.lower() in _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"expected true or false (or 1/0, yes/no), got {_shown(text)}")
    return check


_BUILDERS: dict[str, Callable[[dict[str, Any]], Checker]] = {
    "integer": _integer, "number": _number, "string": _string, "date": _date, "boolean": _boolean}



# -- the sealed length: every record of a category is padded to one length before it is encrypted ---------------
# AES-GCM hides a record's bytes, not its length (ciphertext = plaintext + 16 bytes), and the records topic is
# readable by every consumer: a diagnosis, a smoker flag or an income band written at its own length would be
# read off the ciphertext's size. So the vault pads each row's JSON with spaces (JSON ignores them) to the
# longest row the category's schema allows, in bytes: a free-text character takes up to 4 bytes of UTF-8 (a
# condition in Chinese must not seal longer than one in English: that would tell the script a member writes),
# and text refuses the control characters JSON would write as 6-byte escapes (a quote or backslash takes 2).
# A row can exceed it only through a schema whose text has no bounded length: such a category pads to multiples
# of UNBOUNDED_STEP.
FLOAT_CHARS = 24
"""The longest text orjson gives a 64-bit float (e.g. -1.2345678901234567e-308)."""
UTF8_MAX = 4
"""The most bytes UTF-8 takes for one character (and JSON for one allowed character: 2 for a quote)."""
UNBOUNDED_STEP = 1024
"""A category with a field of no bounded length (a string with neither enum, max_length nor a bounded
pattern) pads to multiples of this many bytes instead."""


def _value_chars(spec: FieldSpec) -> int | None:
    """The most bytes a value of `spec` takes in the sealed JSON, or None: unbounded."""
    rules = spec.rules
    if spec.type == "integer":
        lo, hi = rules.get("min"), rules.get("max")
        return max(len(str(int(lo))), len(str(int(hi)))) if lo is not None and hi is not None \
            else MAX_INTEGER_DIGITS + 1
    if spec.type == "number":
        return FLOAT_CHARS
    if spec.type == "boolean":
        return len("false")
    if spec.type == "date":
        return len('"YYYY-MM-DD"')
    widths = []
    if "enum" in rules:
        widths.append(max(len(json.dumps(str(v), ensure_ascii=False).encode()) for v in rules["enum"]))
    if "max_length" in rules:
        widths.append(UTF8_MAX * int(rules["max_length"]) + 2)
    if "pattern" in rules:
        most = re._parser.parse(rules["pattern"]).getwidth()[1]  # type: ignore[attr-defined]
        if most < re._parser.MAXREPEAT:  # type: ignore[attr-defined]
            widths.append(UTF8_MAX * most + 2)
    return min(widths) if widths else None


def sealed_length(schema: CategorySchema) -> int:
    """The length every row of `schema` is padded to before sealing (see above); cached per schema."""
    key = (schema.category, schema.version)
    if key not in _SEALED_LENGTHS:
        values = [_value_chars(f) for f in schema.fields]
        if None in values:
            _SEALED_LENGTHS[key] = UNBOUNDED_STEP
        else:
            keys = sum(len(json.dumps(f.name)) + 1 for f in schema.fields)  # "name":
            longest = 2 + keys + sum(max(v or 0, len("null")) for v in values) + max(len(values) - 1, 0)
            _SEALED_LENGTHS[key] = longest
    return _SEALED_LENGTHS[key]


def pad_to(plaintext: bytes, length: int) -> bytes:
    """`plaintext` followed by spaces up to `length` bytes, or up to the next multiple of it when longer."""
    target = length if len(plaintext) <= length else -(-len(plaintext) // length) * length
    return plaintext + b" " * (target - len(plaintext))


_SEALED_LENGTHS: dict[tuple[str, int], int] = {}

_CHECKERS: dict[tuple[str, int], tuple[tuple[str, bool, Checker], ...]] = {}


def _checkers(schema: CategorySchema) -> tuple[tuple[str, bool, Checker], ...]:
    key = (schema.category, schema.version)
    if key not in _CHECKERS:
        _CHECKERS[key] = tuple((f.name, f.required, _BUILDERS[f.type](f.rules)) for f in schema.fields)
    return _CHECKERS[key]


# -- uploads ----------------------------------------------------------------------------------
MALFORMED = "\x00malformed"
"""Key of the stand-in parse_upload puts where a row could not be read (its value says why): check_rows
reports it with every other bad row, so one upload gets one whole report."""
MALFORMED_FIELD = "\x00field"
"""Beside MALFORMED, where the fault is one field's (a JSON key given twice, a CSV value too long): its name."""

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects read in a JSON line (a row is one flat object). json's C decoder
recurses once a level, and importing eth_account (its py_ecc) lifts the recursion limit to 100,000: a line
of 100,000 `[` would overflow the C stack and kill the process instead of raising RecursionError."""

_JSON_STRUCTURE = re.compile(r'[\\"\[\]{}]')


def _nested_too_deep(line: str) -> bool:
    """Whether `line`'s arrays and objects nest deeper than MAX_JSON_DEPTH (brackets in strings not counted).
    The count first, in C, leaves the scan to the rare line with that many brackets."""
    if line.count("[") + line.count("{") <= MAX_JSON_DEPTH:
        return False
    depth, in_string, skip_to = 0, False, 0
    for match in _JSON_STRUCTURE.finditer(line):
        at, char = match.start(), match.group()
        if at < skip_to:
            continue
        if in_string:
            if char == "\\":
                skip_to = at + 2  # the escaped character, a quote or a backslash, is not structure
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False


class _RepeatedField(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it names a field twice: json keeps the last value silently, and a CSV header
    that repeats a column is refused too."""
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _RepeatedField(name)
            seen.add(name)
    return row


JSON_ARRAY_HINT = ("JSON Lines takes one object per line, not a JSON array: convert the file first, e.g. "
                   "`jq -c '.[]' FILE.json > FILE.jsonl`, and upload that; nothing was stored")


def parse_upload(content: str, fmt: UploadFormat) -> list[dict[str, Any]]:
    """Rows of a JSON-lines or CSV upload (CSV: header row; `,` or `;` separated, as the header shows). A
    line that can't be read as a row stays in place as {MALFORMED: why}; a header that can't name the
    fields (a repeated or empty column name) or a file that is one JSON document (an array, an object over
    several lines) rather than JSON lines refuses the whole upload. A leading byte-order mark is dropped."""
    lone = _SURROGATE.search(content)
    if lone is not None:  # only a JSON body parsed leniently gets one here; no name or message may hold it
        line = content.count("\n", 0, lone.start()) + 1
        raise UploadRefused(f"the upload holds U+{ord(lone.group()):04X} on line {line}, half of a UTF-16 surrogate "
                            "pair without its other half (not a character); save the file as UTF-8 and upload it "
                            "again", [RowError(0, "(whole upload)", f"a lone surrogate on line {line}")])
    if fmt == "jsonl":
        return _parse_json_lines(content.removeprefix("\ufeff"))
    if fmt == "csv":
        return _parse_csv(content.lstrip("\ufeff"))
    raise UploadRefused(f"unknown upload format {fmt!r}; use jsonl or csv")


def _parse_json_lines(content: str) -> list[dict[str, Any]]:
    text = content.lstrip()
    first = text[:text.find("\n")] if "\n" in text else text
    if first.startswith("[") and (first.rstrip() == "[" or first.startswith("[{") or first == text.rstrip()):
        raise UploadRefused(f"the upload is a JSON array; {JSON_ARRAY_HINT}",
                            [RowError(0, "(whole upload)", "a JSON array, not one object per line")])
    rows: list[dict[str, Any]] = []
    unreadable = 0
    # Lines end at \n alone (a \r before it is JSON whitespace): str.splitlines() would also end one at
    # U+2028, U+2029, U+0085 or \x1c-\x1e, which JSON allows raw inside a string. A file with no \n at all
    # but \r (classic Mac line ends) ends its lines at \r: JSON allows no raw \r inside a string either.
    for line in content.split(_json_line_end(content)):
        if not line.strip():
            continue
        if _nested_too_deep(line):
            rows.append({MALFORMED: f"arrays or objects nested more than {MAX_JSON_DEPTH} deep; each line "
                                    "must be one object of field: value"})
            continue
        try:
            row = _read_json(line)
            # Each key of an object is followed by one colon: a line with no more colons than its row has
            # fields repeats none (json keeps a repeated key's last value); else read again, pair by pair.
            if type(row) is dict and line.count(":") > len(row):
                row = _read_json(line, object_pairs_hook=_object)
        except json.JSONDecodeError as exc:
            unreadable += 1
            rows.append({MALFORMED: f"not JSON ({exc})"})
            continue
        except _RepeatedField as exc:
            rows.append({MALFORMED: f"gives field {exc.name!r} more than once; a field takes one value a row: "
                                    "drop all but one", MALFORMED_FIELD: exc.name})
            continue
        if isinstance(row, dict) and "\\u" in line and any(_SURROGATE.search(name) for name in row):
            rows.append({MALFORMED: "names a field with an escape such as \\ud800 that pairs with nothing (half of a "
                                    "UTF-16 surrogate pair, not a character); write the field's name as the "
                                    "category's schema spells it"})
            continue
        rows.append(row if isinstance(row, dict) else
                    {MALFORMED: "not a JSON object; each line must be an object of field: value"})
    if unreadable:
        _refuse_one_document(content)
        if unreadable == len(rows):
            _refuse_csv_given_as_json_lines(content)
    return rows


def _refuse_csv_given_as_json_lines(content: str) -> None:
    """Of JSON lines none of which is JSON: refuse in one message a file whose first line reads as a CSV header
    (names separated by `,` or `;`, no JSON in sight), rather than one "not JSON" for each of its lines."""
    first = next((line.strip() for line in content.split("\n") if line.strip()), "")
    separator = next((sep for sep in (",", ";") if sep in first), None)
    if separator is None or first[:1] in "{[\"" or not all(name.strip() for name in first.split(separator)):
        return
    shown = first if len(first) <= 60 else first[:57] + "…"
    raise UploadRefused(f"the upload is not JSON lines: it reads as CSV (its first line, {shown!r}, is a header); "
                        "upload it as CSV (format csv: `datacoop contribute FILE --format csv`, or name the file "
                        ".csv); nothing was stored", [RowError(0, "(whole upload)", "CSV given as JSON lines")])


def _read_json(text: str, **options: Any) -> Any:
    """JSON with each number and NaN/Infinity kept as the text it was written as (`1e3`, `1000.0`, `-0`), so a
    field reads a JSON number by the same rules as a CSV cell, and no literal is rounded (1.0000000000000000001)
    or refused by int() (over 4,300 digits) before its field has said what it takes."""
    return json.loads(text, parse_int=str, parse_float=str, parse_constant=str, **options)


def _json_line_end(content: str) -> str:
    """\n, or \r for a file whose lines end at \r alone (classic Mac): no \n in it, a \r in it, and not one
    object by itself (a \r may be whitespace within one)."""
    if "\n" in content or "\r" not in content.strip():
        return "\n"
    try:
        _read_json(content)
    except ValueError:
        return "\r"
    return "\n"


def _refuse_one_document(content: str) -> None:
    """Of JSON lines some of which are not JSON: refuse at once, in one message, a file that is one JSON
    object written over several lines (pretty-printed), rather than one "not JSON" for each of its lines."""
    text = content.strip()
    if not text.startswith("{") or "\n" not in text or _nested_too_deep(text):
        return
    try:
        _read_json(text)
    except ValueError:  # not one object; maybe several, pretty-printed one after another
        first = next(line.strip() for line in text.split("\n") if line.strip())
        if first != "{":
            return
    raise UploadRefused("the upload holds JSON objects written over several lines; JSON Lines takes each object "
                        "on one line: write it compact, e.g. `jq -c . FILE.json > FILE.jsonl` (or `jq -c '.[]'` "
                        "for an array), and upload that; nothing was stored",
                        [RowError(0, "(whole upload)", "an object over several lines, not one object per line")])


def _parse_csv(content: str) -> list[dict[str, Any]]:
    if not content.strip():
        return []
    header = content.split("\n", 1)[0].split("\r", 1)[0]  # the first line alone, however lines end
    delimiter = ";" if header.count(";") > header.count(",") else ","
    # newline="": lines end at \r\n, \n or \r alone (classic Mac), as the csv module expects to read them
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, strict=True)
    try:
        names = [name.strip() for name in next(reader)]
    except csv.Error as exc:
        raise UploadRefused(f"the CSV header cannot be read ({exc}); fix it and upload again; nothing was stored",
                            [RowError(0, "(header)", str(exc))]) from exc
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if not name:
            raise UploadRefused(f"column {position} of the CSV header has no name; name every column (or drop the "
                                "empty one, e.g. a trailing separator) and upload again; nothing was stored",
                                [RowError(0, f"(column {position})", "has no name")])
        if name in seen:
            raise UploadRefused(f"column {name!r} appears twice in the CSV header (columns {seen[name]} and "
                                f"{position}): a field takes one value a row; drop or rename one and upload again; "
                                "nothing was stored", [RowError(0, name, "repeated in the header")])
        seen[name] = position
    width = len(names)
    rows: list[dict[str, Any]] = []
    while True:
        starts_at = reader.line_num  # lines read before this row
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a quote never closed, or a value over the CSV reader's size limit
            rows.append(_unreadable_csv_row(exc, content, starts_at, delimiter, names))
            break
        if not cells:
            continue
        if len(cells) != width:
            rows.append({MALFORMED: f"{len(cells)} values, the header has {width} columns"})
        else:
            rows.append({k: v for k, v in zip(names, cells, strict=True) if v != ""})
    return rows


_AFTER = "the rows after it are not read"


def _unreadable_csv_row(exc: csv.Error, content: str, starts_at: int, delimiter: str,
                        names: list[str]) -> dict[str, Any]:
    """The stand-in row of what the CSV reader refused, saying why in the words of the fault: a quote opened
    and never closed (which runs to the end of the file, or past the field limit), a quote inside a quoted
    value not doubled, or a value longer than the reader takes (naming its column and the limit)."""
    why = str(exc)
    rest = content[_line_offset(content, starts_at):]
    if why == "unexpected end of data":
        return {MALFORMED: f"cannot be read as CSV: a quote opened and never closed runs to the end of the file; "
                           f"close it (or double a quote inside a quoted value: \"\"); {_AFTER}"}
    if why.startswith("field larger than field limit"):
        limit = csv.field_size_limit()
        column, length = _long_field(rest, delimiter, limit)
        if column is None:  # an open quote: the field runs on past the limit
            return {MALFORMED: f"cannot be read as CSV: a value runs past {limit:,} characters, the most a CSV "
                               f"field holds: a quote opened and never closed runs on into the lines after it; "
                               f"close it (or double a quote inside a quoted value: \"\"); {_AFTER}"}
        name = names[column - 1] if column <= len(names) else f"(column {column})"
        return {MALFORMED: f"the value of {name} (column {column}) is {length:,} characters, over the {limit:,} a "
                           f"CSV field may hold; shorten it; {_AFTER}", MALFORMED_FIELD: name}
    if "expected after" in why:
        return {MALFORMED: f"cannot be read as CSV ({why}): a quote inside a quoted value must be doubled (\"\"), "
                           f"and a quoted value must be followed by the separator {delimiter!r} or the line's end; "
                           f"{_AFTER}"}
    return {MALFORMED: f"cannot be read as CSV ({why}); {_AFTER}"}


def _line_offset(content: str, lines: int) -> int:
    at = 0
    for _ in range(lines):
        found = content.find("\n", at)
        if found < 0:
            return len(content)
        at = found + 1
    return at


def _long_field(record: str, delimiter: str, limit: int) -> tuple[int | None, int]:
    """(1-based column, length) of the first field of the CSV record at the start of `record` longer than
    `limit`; (None, 0) when that field is a quote never closed."""
    field = re.compile(rf'"[^"]*(?:""[^"]*)*"|[^{re.escape(delimiter)}"\r\n]*')
    at, column = 0, 1
    while at <= len(record):
        match = field.match(record, at)
        assert match is not None  # the second alternative matches the empty string
        text = match.group()
        quoted = text.startswith('"')
        if not quoted and record.startswith('"', at):  # a quote opened and never closed
            return None, 0
        length = len(text) - 2 if quoted else len(text)
        if length > limit:
            return column, (len(text[1:-1].replace('""', '"')) if quoted else length)
        at = match.end()
        if not record.startswith(delimiter, at):
            return None, 0
        at += 1
        column += 1
    return None, 0


def check_rows(schema: CategorySchema, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row typed, or UploadRefused naming each bad (row, field) — none accepted if one is bad. A file
    whose columns are not the category's (another category, a renamed header) is said once for the whole
    upload, not as the same errors in every row."""
    if not rows:
        raise UploadRefused("upload holds no rows; send at least one record")
    checkers = _checkers(schema)
    known = frozenset(name for name, _, _ in checkers)
    unknown: dict[str, int] = {}  # field the category lacks -> rows that hold it
    clean: list[dict[str, Any]] = []
    errors: list[RowError] = []
    count = bad_rows = 0
    for n, row in enumerate(rows, start=1):
        typed: dict[str, Any] = {}
        before = count
        if MALFORMED in row:
            count += 1
            bad_rows += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append(RowError(n, str(row.get(MALFORMED_FIELD, "(whole row)")), str(row[MALFORMED])))
            continue
        for name, required, check in checkers:
            value = row.get(name)
            if value is None or value == "" or (type(value) is str and value.isspace()):
                if required:
                    count += 1
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append(RowError(n, name, "is required and missing"))
                typed[name] = None
                continue
            try:
                typed[name] = check(value)
            except ValueError as exc:
                count += 1
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append(RowError(n, name, str(exc)))
        if len(row) > len(known) or not known.issuperset(row):
            for extra in sorted(set(row) - known):
                unknown[extra] = unknown.get(extra, 0) + 1
                count += 1
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append(RowError(n, extra, f"is not a field of {schema.category} "
                                                     f"v{schema.version}; fields: {', '.join(sorted(known))}"))
        bad_rows += count > before
        clean.append(typed)
    if errors:
        _check_columns(schema, known, rows, checkers, unknown)
        raise UploadRefused(f"{count} problem(s) in {bad_rows} row(s) of the {schema.category} upload; "
                            "nothing was stored — fix them and upload again", errors, count)
    return clean


def _check_columns(schema: CategorySchema, known: frozenset[str], rows: list[dict[str, Any]],
                   checkers: tuple[tuple[str, bool, Checker], ...], unknown: dict[str, int]) -> None:
    """Of a refused upload, say once that its columns are not the category's: a field the category lacks
    in most rows is a column of the file, not a slip in a row."""
    columns = sorted(name for name, rows_with in unknown.items() if 2 * rows_with > len(rows))
    if not columns:
        return
    present = {name for row in rows for name in row}
    absent = [name for name, required, _ in checkers if required and name not in present]
    problem = (f"{', '.join(columns)} {'is not a field' if len(columns) == 1 else 'are not fields'} of "
               f"{schema.category} v{schema.version}" + (f", and no row holds the required {', '.join(absent)}"
                                                         if absent else ""))
    raise UploadRefused(f"the upload's columns do not fit the {schema.category} category: {problem}. Its fields "
                        f"are {', '.join(sorted(known))}; rename or drop the other columns (or choose the category "
                        "the file is of) and upload again; nothing was stored",
                        [RowError(0, name, "not a field of the category") for name in columns]
                        + [RowError(0, name, "required, and in no row") for name in absent])
