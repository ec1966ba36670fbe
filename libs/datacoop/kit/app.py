"""The FastAPI app factory every service uses: health, readiness, problem+json, correlation ids."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from datacoop.kit import problems
from datacoop.kit.logs import configure, correlation_id
from datacoop.kit.runtime import ServiceRuntime
from datacoop.kit.settings import ServiceSettings


def create_app(runtime: ServiceRuntime[Any], routers: list[APIRouter], *, title: str, version: str = "1",
               description: str = "") -> FastAPI:
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

    @app.middleware("http")
    async def correlate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        cid = request.headers.get("x-correlation-id") or str(uuid.uuid4())
        token = correlation_id.set(cid)
        try:
            response = await call_next(request)
        finally:
            correlation_id.reset(token)
        response.headers["x-correlation-id"] = cid
        return response

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """Alive: the process answers."""
        return {"status": "ok", "service": runtime.name}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> Response:
        """Ready: the projection has caught up with the topics it reads (fetch high-water mark)."""
        body = {"service": runtime.name, "ready": runtime.ready, "applied": runtime.runner.applied_count,
                "dead_lettered": runtime.runner.dead_count, "partitions": runtime.runner.lag()}
        if runtime.ready:
            return JSONResponse(body)
        return problems.problem_response(503, "not-ready", "not ready",
                                         "the projection is still catching up with the log; retry shortly",
                                         "/readyz", **body)

    for router in routers:
        app.include_router(router)
    return app


def serve(name: str, settings: ServiceSettings, build: Callable[[Any], FastAPI], **uvicorn_options: Any) -> None:
    """Run a service's app: JSON logs configured first, uvicorn on the settings' host and port."""
    import uvicorn

    configure(name, settings.log_level, settings.log_json)
    uvicorn.run(build(settings), host=settings.host, port=settings.port, log_config=None, **uvicorn_options)
