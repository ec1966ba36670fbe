"""`datacoop dataset define FILE`: YAML's own values (dates) travel as the JSON the service reads, a value JSON
cannot carry and a file that does not exist are usage errors (exit 2), before anything is sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datacoop.cli import app
from datacoop.testing.http import answer_json

WIDE = {"COLUMNS": "200", "DATACOOP_ANONYMIZER_OPERATOR_TOKEN": "t" * 32}
DEFINITION = """name: days
version: 1
purpose: health-research
data_categories: [fitness]
columns:
  day: {type: date, first: 2026-01-01, last: 2026-12-31}
quasi_identifiers:
  day: {dates: {first: 2026-01-01, last: 2026-12-31}}
privacy: {k: 3, epsilon: %s}
aggregates: {epsilon: 1.0, mechanism: laplace}
"""


@pytest.fixture
def anonymizer() -> Iterator[tuple[str, list[Any]]]:
    """A stand-in anonymizer: POST /definitions/validate records the body and answers it valid."""
    received: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer_json(self, {"status": "ok", "service": "anonymizer"} if self.path == "/healthz" else None)

        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            answer_json(self, {"valid": True, "dataset_id": "days", "privacy_model": "k-anonymity (k=3)",
                               "quasi_identifiers": ["day"], "published_as_is": []})

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def _written(tmp_path: Path, epsilon: str) -> Path:
    """The test definition, with `epsilon` as YAML text, in a file."""
    path = tmp_path / "days.yaml"
    path.write_text(DEFINITION % epsilon)
    return path


def _define(path: Path, url: str) -> Any:
    return CliRunner().invoke(app, ["dataset", "define", str(path), "--check", "--anonymizer-url", url], env=WIDE)


def test_dates_in_the_yaml_are_sent_as_the_iso_text_the_service_reads(
        anonymizer: tuple[str, list[Any]], tmp_path: Path) -> None:
    url, received = anonymizer
    result = _define(_written(tmp_path, "1.0"), url)
    assert result.exit_code == 0, result.output
    assert received[0]["columns"]["day"] == {"type": "date", "first": "2026-01-01", "last": "2026-12-31"}


def test_a_value_json_cannot_carry_or_a_missing_file_is_a_usage_error(
        anonymizer: tuple[str, list[Any]], tmp_path: Path) -> None:
    url, received = anonymizer
    infinite = _define(_written(tmp_path, ".inf"), url)
    assert infinite.exit_code == 2 and "holds a value JSON cannot carry" in infinite.output, infinite.output
    missing = _define(tmp_path / "nope.yaml", url)
    assert missing.exit_code == 2 and "nope.yaml does not exist" in " ".join(missing.output.split())
    assert received == [], "nothing was sent"
