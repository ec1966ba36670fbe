"""Service kit pieces that need no broker: JSON logs with correlation ids, problem+json bodies."""

from __future__ import annotations

import json
import logging

from datacoop.kit.logs import JsonFormatter, correlation_id
from datacoop.kit.problems import problem_response


def test_json_log_lines_carry_the_correlation_id_in_hand() -> None:
    formatter = JsonFormatter("consent")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "granted %s", ("c-1",), None)
    token = correlation_id.set("req-42")
    try:
        line = json.loads(formatter.format(record))
    finally:
        correlation_id.reset(token)
    assert line["message"] == "granted c-1" and line["correlation_id"] == "req-42"
    assert line["service"] == "consent" and line["time"].endswith("+00:00")
    assert "correlation_id" not in json.loads(formatter.format(record))


def test_problem_responses_follow_rfc_9457() -> None:
    resp = problem_response(409, "conflict", "conflict", "nonce 3 was already used; sign again with nonce 4",
                            "/members/0x1")
    body = json.loads(bytes(resp.body))
    assert resp.media_type == "application/problem+json" and resp.status_code == 409
    assert body["type"].endswith("/conflict") and body["status"] == 409 and "nonce 4" in body["detail"]
