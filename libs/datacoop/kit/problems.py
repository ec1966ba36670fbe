"""Errors as RFC 9457 problem+json, with a stable `type` and a detail that says what to do."""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from datacoop.errors import DomainError, EarlierWriteUnsettled, Refused

__all__ = ["Conflict", "DomainError", "Forbidden", "NotFound", "NotReady", "Refused", "Unauthorized",
           "Unprocessable", "problem_response", "require_bearer"]

log = logging.getLogger("datacoop.http")
PROBLEM_BASE = "https://datacoop.example/problems/"


class NotFound(DomainError):
    status, slug = 404, "not-found"


class Conflict(DomainError):
    status, slug = 409, "conflict"


class Unauthorized(DomainError):
    status, slug = 401, "unauthorized"


def _bearer_secret(authorization: str | None) -> str | None:
    """The secret in `Authorization: Bearer <secret>` (the scheme in any case), or None."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    return authorization[7:].strip()


def require_bearer(authorization: str | None, expected: str, *, what: str, setting: str, slug: str) -> None:
    """Refuse (401 `slug`) unless the `Authorization` header carries `Bearer <expected>`; compared in
    constant time. `what` names the token, `setting` the environment variable that sets it."""
    given = _bearer_secret(authorization)
    if not hmac.compare_digest((given or "").encode(), expected.encode()):
        if not given:
            raise Unauthorized(f"{what} is required: send `Authorization: Bearer <token>` ({setting})", slug=slug)
        noun = what.removeprefix("a ").removeprefix("an ")
        raise Unauthorized(f"wrong {noun}: the token sent is not the one this service was started with "
                           f"({setting})", slug=slug)


class Forbidden(DomainError):
    status, slug = 403, "forbidden"


class Unprocessable(DomainError):
    status, slug = 422, "unprocessable"


class NotReady(DomainError):
    status, slug = 503, "not-ready"


def bearer(authorization: str | None, what: str, hint: str = "") -> str:
    """The secret in `Authorization: Bearer <secret>`; 401 `no-credentials` naming `what` otherwise."""
    secret = _bearer_secret(authorization)
    if secret is None:
        raise Unauthorized(f"no {what}: send `Authorization: Bearer <{what}>`{hint}", slug="no-credentials")
    return secret


def secret_sha256(secret: str) -> str:
    """How a bearer secret is stored and published (`ResearcherRegistered.api_key_sha256`): services
    that check one service's keys must hash them the same way."""
    return hashlib.sha256(secret.encode()).hexdigest()


def problem_response(status: int, slug: str, title: str, detail: str, instance: str = "",
                     **extra: Any) -> JSONResponse:
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    detail = exc.detail
    if exc.slug == "not-ready":  # "still catching up" is untrue while the log cannot be read at all: say why
        runtime = getattr(request.app.state, "runtime", None)
        failing = getattr(getattr(runtime, "runner", None), "failing", None)
        if failing and failing.startswith("AnotherWriter"):
            detail = failing.removeprefix("AnotherWriter: ")
        elif failing and failing.startswith("CommitFailed"):
            detail = f"the service cannot write its database now ({failing}); retry once it can (its /readyz says when)"
        elif failing:
            detail = (f"the service cannot read the event log now ({failing}); retry once it reads again "
                      "(its /readyz says when)")
    return problem_response(exc.status, exc.slug, exc.slug.replace("-", " "), detail,
                            request.url.path, **exc.extra)


async def database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The service's own database could not commit (its disk, its folder): 503, not a 500 "bug". A command's
    events were written to the log before that commit: the service applies them when it reads the log again."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return problem_response(503, "database-unavailable", "database unavailable",
                            f"{exc}. A command's events were written to the event log before this, and the service "
                            "applies them once it can write again: check before sending it again (a repeat is "
                            "refused, e.g. 409)", request.url.path)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = _body_fields(request)
    for e in exc.errors():
        # only the body as a whole: a model-level check (a validator's value_error) also sits at ('body',)
        if e["type"] == "json_invalid" or (tuple(e["loc"]) == ("body",) and e["type"] in _WHOLE_BODY_ERRORS):
            message = _body_message(e, fields)
            return problem_response(422, "invalid-request", "invalid request", message, request.url.path,
                                    errors=[{"field": "", "message": message}])
    errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": _said(e)}
              for e in exc.errors()]
    # a check of the body as a whole (a model validator) has no field: its own words say what is wrong
    detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors[:5])
    return problem_response(422, "invalid-request", "invalid request",
                            f"{detail}. Fix these fields and send again.", request.url.path, errors=errors)


def _said(error: Any) -> str:
    """A validation error's message without pydantic's prefix for errors a validator raised ("Value error, ")."""
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


_WHOLE_BODY_ERRORS = frozenset({"missing", "model_type", "model_attributes_type", "dict_type"})


def _body_fields(request: Request) -> tuple[list[str], list[str]]:
    """The (required, all) top-level fields of the route's JSON body model; empty if it has none."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(body_field, "field_info", None), "annotation", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return [], []
    names = {name: f.alias or name for name, f in model.model_fields.items()}
    return [names[n] for n, f in model.model_fields.items() if f.is_required()], list(names.values())


def _body_message(error: Any, fields: tuple[list[str], list[str]]) -> str:
    """What is wrong with the body as a whole (not JSON, absent, not an object) and what to send instead.

    pydantic puts a JSON syntax error at ('body', <character offset>): the offset is not a field name."""
    required, every = fields
    example = "{" + ", ".join(f'"{name}": ...' for name in (required or every)) + "}"
    if error["type"] == "json_invalid":
        where = [str(error.get("ctx", {}).get("error", ""))]
        if len(error["loc"]) > 1:
            where.append(f"at character {error['loc'][1]}")
        return (f"the request body is not valid JSON ({', '.join(w for w in where if w)}): "
                f"send a JSON object like {example}")
    if error["type"] == "missing":
        noun = "field" if len(required) == 1 else "fields"
        needs = f"a JSON body with {noun} {', '.join(required)}" if required else "a JSON body"
        return f"the request needs {needs}: send a JSON object like {example} (Content-Type: application/json)"
    return f"the request body must be a JSON object: send one like {example} (Content-Type: application/json)"


_UNPARSED_BODY = "There was an error parsing the body"  # FastAPI's words for a body its JSON decoding raised on


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _UNPARSED_BODY:  # not UTF-8, or an integer past Python's limit
        required, every = _body_fields(request)
        example = "{" + ", ".join(f'"{name}": ...' for name in (required or every)) + "}"
        message = ("the request body could not be read as JSON: it must be UTF-8 text, and its integers at most "
                   f"4,300 digits long; send a JSON object like {example} (Content-Type: application/json)")
        return problem_response(400, "invalid-request", "invalid request", message, request.url.path,
                                errors=[{"field": "", "message": message}])
    slug = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(exc.status_code, "http-error")
    headers = dict(exc.headers or {})  # a 405's Allow (RFC 9110: it must carry one)
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":  # the router's: no such path at all
        detail = (f"this service has no {request.url.path}; its routes are listed at /docs (OpenAPI at "
                  "/openapi.json): check the path, and the service's URL")
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        allowed = headers.get("allow") or headers.get("Allow") or ""
        detail = (f"{request.method} is not allowed on {request.url.path}; "
                  + (f"it takes {allowed}" if allowed else "see /docs for what it takes"))
    response = problem_response(exc.status_code, slug, slug.replace("-", " "), detail, request.url.path)
    response.headers.update(headers)
    return response


def unexpected_error_response(method: str, path: str, exc: BaseException) -> JSONResponse:
    """A bug: 500 as problem+json with an id to find its traceback in the log. The exception's own words stay
    in the log (they may quote what the request held)."""
    error_id = uuid.uuid4().hex[:12]
    log.error("%s %s failed unexpectedly (error id %s)", method, path, error_id, exc_info=exc)
    return problem_response(500, "internal-error", "internal error",
                            f"the service failed unexpectedly ({type(exc).__name__}); this is a bug, logged with error "
                            f"id {error_id}: report it with that id. Whether the request took effect is not known: "
                            "read the state back before sending it again", path, error_id=error_id)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """`unexpected_error_response` as an exception handler (an app without `kit.app.CorrelationIds`, which
    answers these itself, inside the request's correlation id)."""
    return unexpected_error_response(request.method, request.url.path, exc)


async def event_log_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The broker did not confirm a write (unreachable, timed out, refused): 503, not a bare 500. The
    events may have landed (an ack can be lost), so the caller is told to retry, not that nothing
    happened: a command that did land is refused as a repeat, and a half-landed upload is never served."""
    if isinstance(exc, EarlierWriteUnsettled):
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        detail = str(exc.args[0]) if exc.args else str(exc)  # aiokafka's str() puts the class name first
        return problem_response(503, "event-log-unavailable", "event log unavailable", detail, request.url.path)
    log.warning("%s %s: the event log did not confirm a write: %r", request.method, request.url.path, exc)
    return problem_response(503, "event-log-unavailable", "event log unavailable",
                            f"the event log (Kafka) did not confirm the write ({type(exc).__name__}: {exc}); it may "
                            "or may not be recorded: retry shortly (a command that was recorded is refused as a "
                            "repeat, e.g. 409)", request.url.path)
