"""Errors as RFC 9457 problem+json, with a stable `type` and a detail that says what to do."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from datacoop.errors import DomainError, Refused

__all__ = ["Conflict", "DomainError", "Forbidden", "NotFound", "NotReady", "Refused", "Unauthorized",
           "Unprocessable", "problem_response"]

PROBLEM_BASE = "https://datacoop.example/problems/"


class NotFound(DomainError):
    status, slug = 404, "not-found"


class Conflict(DomainError):
    status, slug = 409, "conflict"


class Unauthorized(DomainError):
    status, slug = 401, "unauthorized"


class Forbidden(DomainError):
    status, slug = 403, "forbidden"


class Unprocessable(DomainError):
    status, slug = 422, "unprocessable"


class NotReady(DomainError):
    status, slug = 503, "not-ready"


def bearer(authorization: str | None, what: str, hint: str = "") -> str:
    """The secret in `Authorization: Bearer <secret>`; 401 `no-credentials` naming `what` otherwise."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized(f"no {what}: send `Authorization: Bearer <{what}>`{hint}", slug="no-credentials")
    return authorization[7:].strip()


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
    return problem_response(exc.status, exc.slug, exc.slug.replace("-", " "), exc.detail,
                            request.url.path, **exc.extra)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
              for e in exc.errors()]
    detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors[:5])
    return problem_response(422, "invalid-request", "invalid request",
                            f"{detail}. Fix these fields and send again.", request.url.path, errors=errors)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    return problem_response(exc.status_code, slug, slug.replace("-", " "), str(exc.detail), request.url.path)
