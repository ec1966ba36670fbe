"""Settlement's GET /orders/{id} answers only once its projection has caught up: `datacoop refund` reads
"not allocated" from it, and a projection still rebuilding would say that of an allocated order."""

from __future__ import annotations

import types

from fastapi import FastAPI
from fastapi.testclient import TestClient

from datacoop.kit import problems
from services.settlement.api import build_router

OID = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a001"
TOKEN = "t" * 32


def test_an_order_is_not_described_while_the_projection_catches_up() -> None:
    views = {OID: {"order_id": OID, "allocation": {"shares": {"0x" + "a" * 40: 5}}}}
    ctx = types.SimpleNamespace(ready=False, operator_token=TOKEN,
                                projection=types.SimpleNamespace(order_view=views.get))
    app = FastAPI()
    app.add_exception_handler(problems.DomainError, problems.domain_error_handler)
    app.include_router(build_router(ctx))  # type: ignore[arg-type]
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    catching_up = client.get(f"/orders/{OID}", headers=auth)
    assert catching_up.status_code == 503 and "catching up" in catching_up.json()["detail"]
    ctx.ready = True
    assert client.get(f"/orders/{OID}", headers=auth).json()["allocation"] is not None
