"""The marketplace's request models and routes without a bus: strict numbers, bounded integers, worded
refusals of registrations, grants whose told expiry is the one signed, short payments and refunds shown."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from datacoop.events.datasets import DatasetVersionPublished
from datacoop.events.orders import OrderPaid, OrderPlaced, PaymentRefused
from datacoop.events.payouts import PaymentRefunded
from datacoop.kit import problems
from services.marketplace import domain
from services.marketplace.api import GrantBody, OrderBody, RegisterBody, build_router, order_view
from services.marketplace.grants import verify_grant
from services.marketplace.offers import Offers
from services.marketplace.service import MarketplaceService
from services.marketplace.settings import MarketplaceSettings

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
        grants_of=lambda _oid: [], spends_of=lambda _oid: [], version=lambda *_: None)
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


def _published(dataset_id: str, version: int, rows: int) -> DatasetVersionPublished:
    return DatasetVersionPublished(
        dataset_id=dataset_id, version=version, purpose="health-research", categories=["fitness"],
        location=f"file:///nowhere/{dataset_id}-v{version}.parquet", sha256="ab" * 32, rows=rows, suppressed_rows=0,
        k=2, l_diversity=1.0, privacy_model="k-anonymity", information_loss=0.1, epsilon=1.0,
        columns={"day": "VARCHAR", "workout": "VARCHAR", "steps": "BIGINT"},
        contributor_weights={"0x" + f"{i:040x}": 1 for i in range(1, rows + 1)}, published_at=T0)


def _market(versions: list[DatasetVersionPublished], orders: dict[str, domain.Order] | None = None
            ) -> tuple[TestClient, list[str]]:
    """The marketplace's routes over `versions` (group-by on `workout`, one row a member), with the service's
    own offer rules (MarketplaceService.version_offers); returns the client and the subjects written to."""
    written: list[str] = []
    orders = dict(orders or {})

    async def execute(subject: str, decide: Any, **_: Any) -> list[Any]:
        events = decide()
        written.append(subject)
        for e in events:
            orders[e.order_id] = domain.evolve(orders.get(e.order_id), e)
        return [SimpleNamespace(event=e) for e in events]

    by_key = {(v.dataset_id, v.version): v for v in versions}
    projection = SimpleNamespace(
        order=orders.get, researcher_by_key_hash=lambda _h: {"researcher_id": "r1", "wallet": CHECKSUMMED},
        version=lambda d, n: (by_key[(d, n)], False) if (d, n) in by_key else None,
        version_info=lambda d, n: domain.VersionInfo(d, n, False) if (d, n) in by_key else None,
        versions=lambda: [(v, False) for v in versions], groupable=lambda *_: ["workout"],
        row_bound=lambda *_: 1, short_payments=lambda _oid: [], orders_of=lambda _rid: list(orders.values()),
        grants_of=lambda _oid: [], spends_of=lambda _oid: [])
    ctx = SimpleNamespace(projection=projection, writer=SimpleNamespace(execute=execute), ready=True,
                          settings=MarketplaceSettings(), offers=Offers({"defaults": {
                              "order_ttl_s": 60, "download": {"price_units": 5},
                              "query": {"price_units": 3, "budget_epsilon": 1.0}, "compute": {"price_units": 2}}}),
                          clock=lambda: T0, payment_info=lambda: {})
    ctx.rows_per_member = functools.partial(MarketplaceService.rows_per_member, ctx)
    ctx.version_offers = functools.partial(MarketplaceService.version_offers, ctx)
    app = FastAPI()
    app.state.runtime = ctx
    app.include_router(build_router(ctx))
    app.add_exception_handler(problems.DomainError, problems.domain_error_handler)  # type: ignore[arg-type]
    return TestClient(app), written


def test_compute_on_a_version_too_small_for_any_analysis_is_neither_listed_nor_ordered() -> None:
    """3 rows, fewer than the 10 any job result must rest on: every job on it would be refused, so the
    catalog lists no compute offer and an order for it is refused (422, nothing written)."""
    client, written = _market([_published("fitness", 1, 3), _published("fitness", 2, 400)])
    auth = {"authorization": "Bearer dcr_x"}
    catalog = {v["version"]: v for v in client.get("/catalog").json()["versions"]}
    assert [o["offer"] for o in catalog[1]["offers"]] == ["download", "query"]
    assert [o["offer"] for o in catalog[2]["offers"]] == ["download", "query", "compute"]
    assert list(catalog[1]["not_sold"]) == ["compute"], "the catalog says why an offer is missing"
    assert "it has 3 rows, fewer than the 10" in catalog[1]["not_sold"]["compute"]
    assert catalog[2]["not_sold"] == {} and client.get("/catalog/fitness/1").json()["not_sold"] == \
        catalog[1]["not_sold"]
    refused = client.post("/orders", json={"dataset_id": "fitness", "version": 1, "offer": "compute"}, headers=auth)
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["type"].endswith("offer-unavailable")
    assert "it has 3 rows, fewer than the 10 any analysis result must rest on" in problem["detail"]
    assert "order download or query on it instead, or compute on a version with numeric columns and at least 10 " \
           "rows" in problem["detail"]
    assert written == [], "nothing is written for a refused order"
    placed = client.post("/orders", json={"dataset_id": "fitness", "version": 2, "offer": "compute"}, headers=auth)
    assert placed.status_code == 201 and placed.json()["price_units"] == 2, placed.text
    assert "note" not in placed.json() and "offer_note" not in placed.json()


def test_a_query_offer_too_small_for_group_by_cells_says_so_before_payment() -> None:
    client, _ = _market([_published("fitness", 1, 3), _published("fitness", 2, 400)])
    catalog = {v["version"]: v for v in client.get("/catalog").json()["versions"]}
    [small] = [o for o in catalog[1]["offers"] if o["offer"] == "query"]
    assert "the version has 3 rows in all" in small["note"] and "about 15 rows" in small["note"], small
    assert all("note" not in o for o in catalog[2]["offers"])
    assert client.get("/catalog/fitness/1").json()["offers"][1]["note"] == small["note"]
    placed = client.post("/orders", json={"dataset_id": "fitness", "version": 1, "offer": "query"},
                         headers={"authorization": "Bearer dcr_x"}).json()
    assert placed["offer_note"] == small["note"] and "note" not in placed, "told, and `datacoop buy` still pays it"


def test_orders_placed_before_the_rule_keep_their_state_and_say_what_they_buy() -> None:
    """A compute order on a too-small version placed before such orders were refused stays as its events
    left it; unpaid, it says not to pay it (`datacoop buy` refuses an order with a `note`); paid, it says
    why its jobs are refused."""
    placed = domain.evolve(None, OrderPlaced(order_id=OID, researcher_id="r1", buyer=CHECKSUMMED,
                                             dataset_id="fitness", version=1, offer="compute", price_units=2,
                                             placed_at=T0, expires_at=T0 + timedelta(hours=1)))
    assert placed is not None
    client, _ = _market([_published("fitness", 1, 3)], {OID: placed})
    auth = {"authorization": "Bearer dcr_x"}
    seen = client.get(f"/orders/{OID}", headers=auth).json()
    assert seen["status"] == "placed" and seen["note"].startswith(f"do not pay order {OID}: fitness v1: compute is "
                                                                  "not sold on this version: it has 3 rows")
    paid = domain.evolve(placed, OrderPaid(order_id=OID, payment_event_id="p1", amount_units=2,
                                           tx_hash="0x" + "22" * 32, paid_at=T0))
    client, _ = _market([_published("fitness", 1, 3)], {OID: paid})  # type: ignore[dict-item]
    seen = client.get(f"/orders/{OID}", headers=auth).json()
    assert seen["status"] == "paid" and "note" not in seen
    assert "it has 3 rows, fewer than the 10" in seen["offer_note"] and "ask the operator" in seen["offer_note"]


def test_a_refunded_order_says_so_opens_nothing_and_owes_nothing() -> None:
    """After the operator's refund lands (PaymentRefunded), the order is `refunded`: its refused payment is no
    longer `refund_due`, it says when and in which tx the money went back, and a grant is refused in those
    words."""
    placed = domain.evolve(None, OrderPlaced(order_id=OID, researcher_id="r1", buyer=CHECKSUMMED, dataset_id="adult",
                                             version=2, offer="download", price_units=1_000, placed_at=T0,
                                             expires_at=T0 + timedelta(hours=1)))
    refused = domain.evolve(placed, PaymentRefused(
        order_id=OID, payment_event_id="p1", amount_units=1_000, tx_hash="0x" + "11" * 32, reason="order-expired",
        detail="expired; to be refunded", refused_at=T0 + timedelta(hours=2)))
    refund_tx = "0x" + "44" * 32
    order = domain.evolve(refused, PaymentRefunded(
        order_id=OID, chain_order_id="0x" + "22" * 32, buyer=CHECKSUMMED, amount_units=1_000, tx_hash=refund_tx,
        block_number=9, log_index=0, refunded_at=T0 + timedelta(hours=3)))
    assert order is not None
    view = order_view(order)
    assert view["status"] == "refunded" and view["refund_tx_hash"] == refund_tx
    assert (view["refunded_at"], view["refunded_units"], view["refunded_to"]) == \
        (T0 + timedelta(hours=3), 1_000, CHECKSUMMED)
    [p] = view["refused_payments"]
    assert p["refund_due"] is False and p["refund_tx_hash"] == refund_tx and p["refunded_at"] == view["refunded_at"]
    assert f"was refunded to {CHECKSUMMED} in tx {refund_tx}" in view["note"]
    with pytest.raises(domain.OrderRefused) as refusal:
        domain.decide(domain.GrantAccess(OID, "r1", "adult", 2, 60, "g1"), order, T0)
    assert refusal.value.kind == "payment_required" and refund_tx in str(refusal.value)
    assert domain.decide(domain.ExpireDue(OID), order, T0 + timedelta(days=1)) == []
