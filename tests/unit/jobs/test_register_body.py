"""A worker's registration body: a GPU figure JSON cannot carry (NaN, Infinity: Starlette's parser takes both) is
refused as the request's fault (422), not found later by the event model as a 500."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from datacoop.kit.problems import validation_error_handler
from services.jobs.api import build_router
from services.jobs.settings import JobsSettings

PROVIDER = "0x" + "11" * 20
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _client(registered: list[Any]) -> TestClient:
    async def register_worker(event: Any, held: Any = None) -> int:
        registered.append(event)
        return 1

    ctx = SimpleNamespace(settings=JobsSettings(dev_secrets=True), ready=True, clock=lambda: NOW,
                          recover=lambda *a, **k: PROVIDER, register_worker=register_worker,
                          new_token=lambda w: "tok")
    app = FastAPI()
    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.include_router(build_router(ctx))
    return TestClient(app, raise_server_exceptions=False)


def _body(utilization: str) -> str:
    """A registration whose one GPU reports `utilization` as written (NaN is not JSON; Starlette reads it)."""
    signed = f'"worker_id":"w1","provider":"{PROVIDER}","issued_at":{int(NOW.timestamp())},"signature":"0x{"ab" * 65}"'
    gpus = f'"gpus":[{{"index":0,"utilization":{utilization}}}]'
    return f'{{{signed},"hardware":{{"backend":"numpy","cpu_cores":4,"memory_bytes":1,{gpus}}}}}'



@pytest.mark.parametrize("figure", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_gpu_figure_is_a_422_naming_it(figure: str) -> None:
    registered: list[Any] = []
    body = _body(figure)
    answer = _client(registered).post("/workers", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422, (answer.status_code, answer.text)
    assert "utilization" in answer.text and not registered


def test_a_finite_gpu_figure_registers() -> None:
    registered: list[Any] = []
    body = _body("0.5")
    answer = _client(registered).post("/workers", content=body, headers={"content-type": "application/json"})
    assert answer.status_code < 300, answer.text
    assert len(registered) == 1
