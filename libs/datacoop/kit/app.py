"""The FastAPI app factory every service uses: health, readiness, problem+json, correlation ids."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datacoop.kit import problems
from datacoop.kit.logs import configure, correlation_id
from datacoop.kit.runtime import ServiceRuntime
from datacoop.kit.settings import ServiceSettings, SettingRefused
from datacoop.store import CommitFailed, StoreUnusable

_QUIET_PATHS = frozenset({"/healthz", "/readyz"})  # polled by supervisors and `datacoop up`: a 503 there is no news
access_log = logging.getLogger("datacoop.http.access")


def _log_refusal(scope: Scope, status: int, seconds: float) -> None:
    """One line for each request answered 4xx or 5xx (with the correlation id in hand): an operator sees what was
    refused without a proxy's access log. The route's template, not the path: a member's address stays out."""
    if status < 400 or scope.get("path") in _QUIET_PATHS:
        return
    route = getattr(scope.get("route"), "path", None) or "(no route)"  # a raw path may hold a member's address
    access_log.log(logging.WARNING if status >= 500 else logging.INFO, "%s %s answered %d (%.0f ms)",
                   scope.get("method", ""), route, status, seconds * 1000)


class CorrelationIds:
    """Every request runs with a correlation id (the caller's `x-correlation-id`, else a new one) in
    `correlation_id`, so log lines and the events it writes carry it; the response echoes it. An exception
    no handler took (a bug) is answered here, a problem+json 500 logged under that id, not by Starlette's
    outer error middleware, which would answer outside the id, in plain text.

    A plain ASGI middleware, not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs the
    endpoint behind a receive wrapper through which `request.is_disconnected()` never sees the client
    hang up (the jobs service's lease long-poll asks it), and it costs a task per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-correlation-id"), b"").decode("latin-1")
        cid = given or str(uuid.uuid4())

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-correlation-id"]
                message = {**message, "headers": [*headers, (b"x-correlation-id", cid.encode("latin-1"))]}
                _log_refusal(scope, int(message.get("status", 0)), time.monotonic() - began)
            await send(message)

        began = time.monotonic()
        token = correlation_id.set(cid)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # a bug the app's handlers left: problem+json 500, logged with this request's id
            if started:
                raise  # the response is under way: nothing else can be sent
            response = problems.unexpected_error_response(scope.get("method", ""), scope.get("path", ""), exc)
            await response(scope, receive, send_with_id)
        finally:
            correlation_id.reset(token)


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413 before it is read whole: at once when its
    Content-Length says so, else as soon as the bytes received pass the limit (a chunked upload). FastAPI
    reads and parses a body before any route or signature check runs, holding several times its size in
    memory, so without a bound anyone could make a service hold gigabytes with one unsigned request."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _detail(self) -> str:
        return (f"the request body is over {self.limit:,} bytes, the most this service takes "
                "(DATACOOP_MAX_BODY_BYTES); send less at once (e.g. split an upload into several files)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            response = problems.problem_response(413, "too-large", "too large", self._detail(), scope.get("path", ""))
            await response(scope, receive, send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # FastAPI passes an HTTPException from the body's reading on as is
                    raise StarletteHTTPException(413, self._detail())
            return message

        await self.app(scope, bounded, send)


RECURSION_LIMIT = 1000
"""Python's own default. py_ecc (imported by eth_account) raises the interpreter's limit to 100,000 when it
loads, and the standard JSON parser then runs out of C stack on a deeply nested request body (`[[[[…`)
before it raises: the process dies (SIGSEGV) on one unauthenticated request. Every app puts it back."""


def bound_recursion() -> None:
    if sys.getrecursionlimit() > RECURSION_LIMIT:
        sys.setrecursionlimit(RECURSION_LIMIT)


def create_app(runtime: ServiceRuntime[Any], routers: list[APIRouter], *, title: str, version: str = "1",
               description: str = "") -> FastAPI:
    bound_recursion()
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=title, version=version, description=description, lifespan=lifespan)
    app.state.runtime = runtime
    app.add_exception_handler(problems.DomainError, problems.domain_error_handler)
    app.add_exception_handler(RequestValidationError, problems.validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, problems.http_error_handler)
    app.add_exception_handler(KafkaError, problems.event_log_error_handler)
    app.add_exception_handler(CommitFailed, problems.database_error_handler)

    app.add_middleware(BodyLimit, limit=runtime.settings.max_body_bytes)
    app.add_middleware(CorrelationIds)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """Alive: the process answers (`pid`: which process, so a supervisor can tell it from another)."""
        return {"status": "ok", "service": runtime.name, "pid": os.getpid()}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> Response:
        """Ready: the projection has caught up with the topics it reads (fetch high-water mark)."""
        runner = runtime.runner
        body = {"service": runtime.name, "pid": os.getpid(), "ready": runtime.ready, "applied": runner.applied_count,
                "dead_lettered": runner.dead_count, "partitions": runner.lag(), "failing": runner.failing}
        if runtime.ready:
            return JSONResponse(body)
        if runner.failing is not None:
            detail = (f"reading the log fails: {runner.failing}. The service asks again every few seconds (at "
                      "most 30); see its log")
        elif runner.ended:
            detail = "the service has stopped reading the log; see its log and restart it"
        else:
            detail = "the projection is still catching up with the log; retry shortly"
        return problems.problem_response(503, "not-ready", "not ready", detail, "/readyz", **body)

    for router in routers:
        app.include_router(router)
    return app


def serve(name: str, settings: ServiceSettings | type[ServiceSettings], build: Callable[[Any], FastAPI],
          **uvicorn_options: Any) -> None:
    """Run a service's app: settings read (from the environment when given the class), JSON logs
    configured, uvicorn on the settings' host and port. Settings that can't be used (a missing or
    malformed value, a development secret outside a development stack) end the process with a message
    naming each and exit status 2, not a traceback."""
    import uvicorn

    try:
        if isinstance(settings, type):
            settings = settings()
        configure(name, settings.log_level, settings.log_json)
        _check_address(name, settings.host, settings.port)  # before the database is made or opened
        app = build(settings)
    except ValidationError as exc:
        problems_ = "; ".join(f"DATACOOP_{'_'.join(str(p) for p in e['loc']).upper()}: "
                              f"{str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors())
        _refuse_start(name, f"bad settings ({problems_}); set them in the environment")
    except (SettingRefused, StoreUnusable) as exc:
        _refuse_start(name, str(exc))
    unreachable = broker_unreachable(settings.bootstrap, BROKER_WAIT_S)
    if unreachable:
        _refuse_start(name, f"no Kafka broker answers at {settings.bootstrap} (DATACOOP_BOOTSTRAP) after "
                            f"{BROKER_WAIT_S:g} s ({unreachable}); start one (`datacoop up` runs a local one) or set "
                            "DATACOOP_BOOTSTRAP to your broker's host:port", code=3)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, **uvicorn_options)


def _check_address(name: str, host: str, port: int) -> None:
    """Refuse the start, naming the setting, where uvicorn would fail later with a bare errno: a DATACOOP_HOST
    that is no address of this machine, a DATACOOP_PORT another process listens on."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # uvicorn's own refusal names neither the host nor the setting
        _refuse_start(name, f"DATACOOP_HOST {host!r} is no address this machine can listen on "
                            f"({getattr(exc, 'strerror', None) or exc}); set it to an address of this host, e.g. "
                            "0.0.0.0 (every interface) or 127.0.0.1")
    if port == 0:
        return
    with contextlib.closing(socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                _refuse_start(name, f"port {port} on {host} is taken by another process (DATACOOP_PORT): stop it, "
                                    "or set DATACOOP_PORT to a free port")
            # anything else (an address of another machine, no permission): uvicorn says it in its words


BROKER_WAIT_S = 30.0  # how long a starting service waits for its broker (one started beside it) to listen


def broker_unreachable(bootstrap: str, wait_s: float) -> str | None:
    """None once any bootstrap server accepts a TCP connection, trying for up to `wait_s`; else the last
    error, in words. (Without it, a service started with no broker died with aiokafka's traceback.)"""
    deadline = time.monotonic() + wait_s
    while True:
        error = ""
        for server in bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=2):
                    return None
            except (OSError, ValueError) as exc:
                error = f"{server.strip()}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
        if time.monotonic() >= deadline:
            return error
        time.sleep(0.5)


def _refuse_start(name: str, why: str, code: int = 2) -> NoReturn:
    print(f"datacoop {name}: cannot start: {why}", file=sys.stderr, flush=True)
    raise SystemExit(code)
