"""The marketplace's request models and routes without a bus: strict numbers, bounded integers, worded
refusals of registrations, grants whose told expiry is the one signed, and short payments shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from datacoop.events.orders import OrderPaid, OrderPlaced
from services.marketplace import domain
from services.marketplace.api import GrantBody, OrderBody, RegisterBody, build_router, order_view
from services.marketplace.grants import verify_grant

OID = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a001"
T0 = datetime(2026, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)  # a clock between two seconds
WALLET = "0xfa45415c0be6179a9e96d68954ef966756c901fa"
CHECKSUMMED = "0xFa45415c0BE6179A9e96d68954EF966756c901fa"


def field_error(model: Any, body: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    err = info.value.errors()[0]
    return ".".join(str(p) for p in err["loc"]), err["msg"]


@pytest.mark.parametrize("version", [True, "1", 1.0, 0, 2**31, 100000000000000000000])
def test_an_order_version_is_a_whole_number_that_fits_the_projection(version: Any) -> None:
    loc, _ = field_error(OrderBody, {"dataset_id": "adult", "version": version, "offer": "query"})
    assert loc == "version"


@pytest.mark.parametrize("ttl", [0.4, 0, True, "60", float("nan")])
def test_a_grant_lives_at_least_a_second_and_its_ttl_is_a_number(ttl: Any) -> None:
    loc, _ = field_error(GrantBody, {"ttl_s": ttl})
    assert loc == "ttl_s"


@pytest.mark.parametrize(("body", "loc", "says"), [
    ({"name": "a", "wallet": "0x" + "0" * 40}, "wallet", "zero address"),
    ({"name": "   ", "wallet": WALLET}, "name", "empty or only spaces"),
    ({"name": "", "wallet": WALLET}, "name", "empty or only spaces"),
    ({"name": "a\x00b", "wallet": WALLET}, "name", "control character"),
    ({"name": "a", "organisation": "x\ny", "wallet": WALLET}, "organisation", "control character"),
])
def test_a_registration_without_a_real_name_or_paying_wallet_is_refused(body: dict[str, Any], loc: str,
                                                                       says: str) -> None:
    got, msg = field_error(RegisterBody, body)
    assert got == loc and says in msg


def test_a_registered_wallet_is_stored_checksummed_and_the_name_trimmed() -> None:
    body = RegisterBody.model_validate({"name": "  Ada  ", "wallet": WALLET})
    assert body.wallet == CHECKSUMMED and body.name == "Ada"


def test_a_grant_expiry_is_rounded_up_to_the_whole_second_it_signs() -> None:
    order = domain.Order(OID, "r1", CHECKSUMMED, "adult", 2, "download", 1_000, T0, T0 + timedelta(hours=1),
                         status="paid")
    [ev] = domain.decide(domain.GrantAccess(OID, "r1", "adult", 2, 1.0, "g1"), order, T0)
    assert ev.expires_at == datetime(2026, 1, 1, 12, 0, 2, tzinfo=UTC)  # never before now + ttl, whole second


def _app(order: domain.Order, short: list[dict[str, Any]] | None = None) -> tuple[FastAPI, Any]:
    async def execute(subject: str, decide: Any, **_: Any) -> list[Any]:
        return [SimpleNamespace(event=e) for e in decide()]

    projection = SimpleNamespace(
        order=lambda _oid: order, researcher_by_key_hash=lambda _h: {"researcher_id": "r1", "wallet": CHECKSUMMED},
        version_info=lambda *_: domain.VersionInfo("adult", 2, False), short_payments=lambda _oid: short or [],
        grants_of=lambda _oid: [], spends_of=lambda _oid: [])
    ctx = SimpleNamespace(projection=projection, writer=SimpleNamespace(execute=execute), ready=True,
                          settings=SimpleNamespace(grant_ttl_s=900.0), grant_key=Ed25519PrivateKey.generate(),
                          clock=lambda: T0)
    app = FastAPI()
    app.state.runtime = ctx
    app.include_router(build_router(ctx))
    return app, ctx


def test_the_expiry_a_grant_tells_is_exactly_the_one_it_signs() -> None:
    order = domain.Order(OID, "r1", CHECKSUMMED, "adult", 2, "download", 1_000, T0, T0 + timedelta(hours=1),
                         status="paid")
    app, ctx = _app(order)
    answer = TestClient(app).post(f"/orders/{OID}/grants", json={"ttl_s": 1.5},
                                  headers={"authorization": "Bearer dcr_x"}).json()
    told = datetime.fromisoformat(answer["expires_at"])
    grant = verify_grant(answer["grant"], ctx.grant_key.public_key(), researcher_id="r1", dataset_id="adult",
                         version=2, now=T0)
    assert told.timestamp() == grant.expires_at and told >= T0 + timedelta(seconds=1.5)


def test_a_short_payment_shows_in_the_order_with_a_note() -> None:
    order = domain.evolve(None, OrderPlaced(order_id=OID, researcher_id="r1", buyer=CHECKSUMMED, dataset_id="adult",
                                            version=2, offer="download", price_units=1_000, placed_at=T0,
                                            expires_at=T0 + timedelta(hours=1)))
    assert order is not None
    short = [{"amount_units": 999, "tx_hash": "0x" + "11" * 32, "confirmed_at": T0, "reason": "short of the price"}]
    view = order_view(order, False, short)
    assert view["status"] == "placed" and view["short_payments"] == short
    assert "999 units" in view["note"] and "short of its price 1000" in view["note"]
    app, _ = _app(order, short)
    got = TestClient(app).get(f"/orders/{OID}", headers={"authorization": "Bearer dcr_x"}).json()
    assert got["short_payments"][0]["amount_units"] == 999 and "new order" in got["note"]
    paid = domain.evolve(order, OrderPaid(order_id=OID, payment_event_id="p1", amount_units=1_000,
                                          tx_hash="0x" + "22" * 32, paid_at=T0))
    assert paid is not None and "note" not in order_view(paid, False, [])
