"""Service kit pieces that need no broker: JSON logs with correlation ids, problem+json bodies."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from pydantic import BaseModel, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from datacoop.errors import EarlierWriteUnsettled
from datacoop.kit import problems
from datacoop.kit.app import CorrelationIds
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


class _GrantBody(BaseModel):
    member: str
    nonce: int
    note: str = ""

    @model_validator(mode="after")
    def _note_needs_a_nonce(self) -> _GrantBody:
        if self.note == "bounds?":
            raise ValueError("a sum needs bounds: pass lower and upper")
        return self


@pytest.fixture(scope="module")
def body_client() -> TestClient:
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, problems.validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, problems.http_error_handler)
    app.add_exception_handler(Exception, problems.unexpected_error_handler)

    @app.post("/grants")
    async def grant(body: _GrantBody) -> dict[str, Any]:
        if body.note == "crash":
            raise ValueError("year 10000 is out of range, for member " + body.member)
        return body.model_dump()

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("content", [b'{"member": "\xff", "nonce": 1}',
                                     b'{"member": "0x1", "nonce": ' + b"9" * 5000 + b"}"],
                         ids=["not-utf-8", "5000-digit-integer"])
def test_a_body_json_cannot_read_is_told_what_json_takes(body_client: TestClient, content: bytes) -> None:
    resp = body_client.post("/grants", content=content, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.headers["content-type"] == "application/problem+json"
    detail = resp.json()["detail"]
    assert "could not be read as JSON: it must be UTF-8 text, and its integers at most 4,300 digits" in detail
    assert 'send a JSON object like {"member": ..., "nonce": ...}' in detail


def test_a_bug_is_a_problem_json_500_with_an_error_id_not_its_message(
        body_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="datacoop.http"):
        resp = body_client.post("/grants", json={"member": "0xsecret", "nonce": 1, "note": "crash"})
    assert resp.status_code == 500 and resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["type"].endswith("/internal-error") and "ValueError" in body["detail"]
    assert body["error_id"] in body["detail"] and "0xsecret" not in resp.text
    logged = [r for r in caplog.records if body["error_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None


def _problem(client: TestClient, **request: Any) -> dict[str, Any]:
    resp = client.post("/grants", **request)
    assert resp.status_code == 422 and resp.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = resp.json()
    assert body["type"].endswith("/invalid-request")
    return body


def test_malformed_json_is_named_as_such_not_as_a_field(body_client: TestClient) -> None:
    body = _problem(body_client, content=b"{member: 1}", headers={"content-type": "application/json"})
    assert body["detail"].startswith("the request body is not valid JSON (")
    assert "at character 1" in body["detail"]
    assert 'send a JSON object like {"member": ..., "nonce": ...}' in body["detail"]
    assert body["errors"] == [{"field": "", "message": body["detail"]}]


def test_missing_body_names_the_fields_it_needs(body_client: TestClient) -> None:
    body = _problem(body_client)
    assert body["detail"].startswith("the request needs a JSON body with fields member, nonce: ")
    assert "Field required" not in body["detail"]


def test_a_body_that_is_not_an_object_is_told_to_send_one(body_client: TestClient) -> None:
    body = _problem(body_client, json=[1, 2])
    assert body["detail"].startswith('the request body must be a JSON object: send one like {"member": ...')


def test_field_errors_still_name_their_fields(body_client: TestClient) -> None:
    body = _problem(body_client, json={"member": "0x1", "nonce": "soon"})
    assert body["errors"][0]["field"] == "nonce" and body["detail"].startswith("nonce: ")


def test_a_model_level_check_keeps_its_own_message(body_client: TestClient) -> None:
    """A model validator's error sits at ('body',) too; it is not a problem with the body as a whole."""
    body = _problem(body_client, json={"member": "0x1", "nonce": 1, "note": "bounds?"})
    assert "a sum needs bounds: pass lower and upper" in body["detail"]
    assert "must be a JSON object" not in body["detail"]
    assert body["detail"].startswith("a sum needs bounds"), "no `body: Value error, ` before a validator's words"
    assert body["errors"] == [{"field": "", "message": "a sum needs bounds: pass lower and upper"}]


def test_each_request_runs_with_its_correlation_id_and_the_response_echoes_it() -> None:
    from datacoop.kit.app import CorrelationIds

    app = FastAPI()
    app.add_middleware(CorrelationIds)
    app.add_exception_handler(problems.DomainError, problems.domain_error_handler)

    @app.get("/seen")
    async def seen() -> dict[str, str | None]:
        return {"cid": correlation_id.get()}

    @app.get("/refused")
    async def refused() -> None:
        raise problems.DomainError("no", status=409, slug="conflict")

    client = TestClient(app)
    given = client.get("/seen", headers={"x-correlation-id": "req-7"})
    assert given.json() == {"cid": "req-7"} and given.headers["x-correlation-id"] == "req-7"
    made = client.get("/seen")
    assert made.headers["x-correlation-id"] == made.json()["cid"] and len(made.json()["cid"]) == 36
    assert client.get("/seen").json()["cid"] != made.json()["cid"], "a new id per request"
    problem = client.get("/refused", headers={"x-correlation-id": "req-8"})
    assert problem.status_code == 409 and problem.headers["x-correlation-id"] == "req-8"
    assert correlation_id.get() is None, "nothing leaks out of a request"


def test_each_refusal_is_logged_once_by_its_route_under_its_correlation_id(caplog: pytest.LogCaptureFixture) -> None:
    """An operator saw 6 lines in a service's log after dozens of refused requests: no access log told of them."""
    app = FastAPI()
    app.add_middleware(CorrelationIds)
    app.add_exception_handler(problems.DomainError, problems.domain_error_handler)
    seen: list[str | None] = []

    @app.get("/members/{member}")
    async def member(member: str) -> dict[str, str]:
        if member == "0xgone":
            raise problems.DomainError("gone", status=410, slug="erased")
        return {"member": member}

    @app.get("/readyz")
    async def readyz() -> None:
        raise problems.DomainError("catching up", status=503, slug="not-ready")

    class Under(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(correlation_id.get())

    under = Under()
    logging.getLogger("datacoop.http.access").addHandler(under)
    try:
        with caplog.at_level(logging.INFO, logger="datacoop.http.access"):
            client = TestClient(app)
            assert client.get("/members/0xok").status_code == 200
            assert client.get("/members/0xgone", headers={"x-correlation-id": "req-9"}).status_code == 410
            assert client.get("/readyz").status_code == 503
            assert client.get("/members/0xgone/recordz").status_code == 404  # no route: its path is not logged
    finally:
        logging.getLogger("datacoop.http.access").removeHandler(under)
    lines = [r.getMessage() for r in caplog.records if r.name == "datacoop.http.access"]
    assert len(lines) == 2 and lines[0].startswith("GET /members/{member} answered 410 ("), lines
    assert lines[1].startswith("GET (no route) answered 404 ("), lines
    assert not [line for line in lines if "0xgone" in line], "the route, not the member's address"
    assert seen[0] == "req-9", "logged under the request's correlation id"


def test_a_bug_is_answered_inside_the_requests_correlation_id() -> None:
    """The 500 echoes the caller's correlation id, and its log line (with the traceback) is written under it."""
    app = FastAPI()
    app.add_middleware(CorrelationIds)

    @app.get("/boom")
    async def boom() -> None:
        raise ValueError("year 10000 is out of range")

    seen: list[tuple[str | None, bool]] = []

    class Under(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((correlation_id.get(None), record.exc_info is not None))

    handler = Under(logging.ERROR)
    logging.getLogger("datacoop.http").addHandler(handler)
    try:
        resp = TestClient(app).get("/boom", headers={"x-correlation-id": "cid-123"})
    finally:
        logging.getLogger("datacoop.http").removeHandler(handler)
    assert resp.status_code == 500 and resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["x-correlation-id"] == "cid-123"
    assert resp.json()["error_id"] in resp.json()["detail"] and "10000" not in resp.text
    assert seen == [("cid-123", True)]


def test_an_unsettled_earlier_write_is_a_503_that_says_nothing_of_this_request_was_written() -> None:
    app = FastAPI()
    app.add_exception_handler(KafkaError, problems.event_log_error_handler)

    @app.post("/grants")
    async def grant() -> None:
        raise EarlierWriteUnsettled("nothing of this request was written: an earlier write for 0xa was not confirmed")

    resp = TestClient(app).post("/grants")
    assert resp.status_code == 503 and resp.json()["type"].endswith("/event-log-unavailable")
    assert resp.json()["detail"].startswith("nothing of this request was written")
    assert "may or may not be recorded" not in resp.json()["detail"]


def test_a_wrong_method_or_path_is_problem_json_that_says_what_the_service_takes() -> None:
    app = FastAPI()
    app.add_exception_handler(StarletteHTTPException, problems.http_error_handler)  # as kit.app.create_app does

    @app.get("/things")
    def things() -> list[str]:
        return []

    @app.get("/things/{name}")
    def thing(name: str) -> None:
        raise StarletteHTTPException(404, f"no thing {name!r}; list them with GET /things")

    http = TestClient(app)
    wrong_method = http.post("/things", json={})
    assert wrong_method.status_code == 405 and wrong_method.headers["content-type"] == "application/problem+json"
    assert wrong_method.headers["allow"] == "GET", "RFC 9110: a 405 carries Allow"
    assert wrong_method.json()["detail"] == "POST is not allowed on /things; it takes GET"
    nowhere = http.get("/thinggs")
    assert nowhere.status_code == 404 and "/thinggs" in nowhere.json()["detail"] and "/docs" in nowhere.json()["detail"]
    own = http.get("/things/x")  # a route's own 404 keeps its words
    assert own.status_code == 404 and own.json()["detail"] == "no thing 'x'; list them with GET /things"


def test_a_commit_failure_is_a_503_that_says_the_events_are_in_the_log() -> None:
    """A command whose events were written but whose database commit failed was a 500 "this is a bug"."""
    from datacoop.store import CommitFailed

    app = FastAPI()
    app.add_exception_handler(CommitFailed, problems.database_error_handler)

    @app.post("/grants")
    async def grant() -> None:
        raise CommitFailed("the database /data/consent.duckdb could not commit: Cannot open file; check its disk")

    answer = TestClient(app).post("/grants")
    body = answer.json()
    assert answer.status_code == 503 and body["type"].endswith("/database-unavailable"), body
    assert "could not commit" in body["detail"] and "written to the event log before this" in body["detail"]


def test_not_ready_says_why_when_the_log_cannot_be_read(body_client: TestClient) -> None:
    """During a broker outage every member command said "still catching up; retry in a moment", which never ends."""
    from types import SimpleNamespace

    app = FastAPI()
    app.add_exception_handler(problems.DomainError, problems.domain_error_handler)
    app.state.runtime = SimpleNamespace(runner=SimpleNamespace(failing="BrokerSilent: no fetch answered for 12 s"))

    @app.get("/members/x")
    async def member() -> None:
        raise problems.NotReady("the consent service is still catching up with the event log; retry in a moment")

    body = TestClient(app).get("/members/x").json()
    assert body["detail"].startswith("the service cannot read the event log now (BrokerSilent: no fetch"), body
    app.state.runtime.runner.failing = "CommitFailed: the database /d/consent.duckdb could not commit"
    assert TestClient(app).get("/members/x").json()["detail"].startswith(
        "the service cannot write its database now (CommitFailed"), "the disk, not the log"
    app.state.runtime.runner.failing = None
    assert "still catching up" in TestClient(app).get("/members/x").json()["detail"]


def test_the_kafka_clients_repeats_are_held_back_and_counted() -> None:
    """With the broker down, aiokafka logged ~40 lines a second; the line saying what is wrong was lost."""
    import time as clock

    from datacoop.kit.logs import Repeats

    repeats = Repeats(window_s=0.3)

    def record(name: str, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)

    passed = [repeats.filter(record("aiokafka", "Unable connect to node with id %s: %s", 1, f"try {i}"))
              for i in range(40)]
    assert passed == [True] + [False] * 39
    assert all(repeats.filter(record("datacoop.bus", "consumer c: BrokerSilent")) for _ in range(3)), \
        "only the Kafka client's records are held back"
    assert repeats.filter(record("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s", 1, "x"))
    clock.sleep(0.35)
    again = record("aiokafka", "Unable connect to node with id %s: %s", 1, "try 41")
    assert repeats.filter(again) and again.getMessage() == \
        "Unable connect to node with id 1: try 41 (and 39 more like this in the last 0.3 s)"
