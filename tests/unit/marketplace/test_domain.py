"""Order rules as tables: given events, when a command, then events or a refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import reduce

import pytest

from datacoop.events.orders import (
    AccessGranted,
    OrderExpired,
    OrderPaid,
    OrderPlaced,
    PaymentRefused,
    QueryAnswered,
)
from datacoop.events.registry import Event
from services.marketplace import domain

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BUYER = "0x" + "ab" * 20
OID = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a001"
TX = "0x" + "11" * 32


EXPIRES = T0 + timedelta(hours=1)


def placed(offer: str = "download", budget: int | None = None, expires_at: datetime = EXPIRES) -> OrderPlaced:
    return OrderPlaced(order_id=OID, researcher_id="r1", buyer=BUYER, dataset_id="adult", version=2, offer=offer,
                       price_units=1_000, placed_at=T0, expires_at=expires_at, query_budget_micro=budget)


def paid(amount: int = 1_000) -> OrderPaid:
    return OrderPaid(order_id=OID, payment_event_id="p1", amount_units=amount, tx_hash=TX, paid_at=T0)


def given(*events: Event) -> domain.Order | None:
    return reduce(domain.evolve, events, None)


def spend(micro: int, researcher: str = "r1") -> domain.SpendBudget:
    return domain.SpendBudget(OID, researcher, f"q{micro}", "count", None, (), 0, micro)


def test_an_order_is_placed_on_a_current_version_at_the_offer_price() -> None:
    cmd = domain.PlaceOrder("r1", BUYER, "query", 500, 60, budget_micro=1_000_000, order_id=OID)
    [ev] = domain.place(cmd, domain.VersionInfo("adult", 2, False), "adult", 2, T0)
    assert isinstance(ev, OrderPlaced)
    assert (ev.price_units, ev.query_budget_micro, ev.expires_at) == (500, 1_000_000, T0 + timedelta(seconds=60))


@pytest.mark.parametrize(("version", "kind"), [(None, "not_found"), (domain.VersionInfo("adult", 2, True), "gone")])
def test_an_order_on_an_unknown_or_superseded_version_is_refused(version: domain.VersionInfo | None,
                                                                 kind: str) -> None:
    with pytest.raises(domain.OrderRefused) as exc:
        domain.place(domain.PlaceOrder("r1", BUYER, "download", 500, 60), version, "adult", 2, T0)
    assert exc.value.kind == kind


def test_a_payment_of_the_price_pays_the_order_once() -> None:
    cmd = domain.ConfirmPayment(OID, "p1", 1_000, TX)
    [ev] = domain.decide(cmd, given(placed()), T0)
    assert isinstance(ev, OrderPaid)
    assert domain.decide(cmd, given(placed(), ev), T0) == []


def test_an_underpayment_does_not_pay() -> None:
    assert domain.decide(domain.ConfirmPayment(OID, "p1", 999, TX), given(placed()), T0) == []


def refused_payment(order: domain.Order | None, now: datetime = T0, superseded: bool = False) -> PaymentRefused:
    [ev] = domain.decide(domain.ConfirmPayment(OID, "p1", 1_000, TX, version_superseded=superseded), order, now)
    assert isinstance(ev, PaymentRefused), ev
    return ev


@pytest.mark.parametrize(("events", "now"), [
    ((placed(), OrderExpired(order_id=OID, expired_at=T0 + timedelta(hours=1))), T0 + timedelta(days=30)),
    ((placed(),), T0 + timedelta(hours=1)),  # past its expiry, before the sweeper got to it
])
def test_a_payment_after_the_order_expired_is_refused_and_opens_nothing(events: tuple[Event, ...],
                                                                       now: datetime) -> None:
    order = given(*events)
    ev = refused_payment(order, now, superseded=True)  # the reviewer's case: expired and superseded since
    assert (ev.reason, ev.amount_units, ev.tx_hash) == ("order-expired", 1_000, TX)
    assert "expired" in ev.detail and "refunded" in ev.detail and "datacoop order adult:download" in ev.detail
    after = domain.evolve(order, ev)
    assert after is not None and after.status == "refund-due" and after.refused_payments[0].reason == "order-expired"
    with pytest.raises(domain.OrderRefused, match="refunded") as exc:
        domain.decide(domain.GrantAccess(OID, "r1", "adult", 2, 60, "g1"), after, now)
    assert exc.value.kind == "payment_required"
    assert domain.decide(domain.ConfirmPayment(OID, "p1", 1_000, TX), after, now) == [], "decided once"
    assert domain.decide(domain.ExpireDue(OID), after, now) == []
    assert domain.evolve(after, ev) == after, "a replayed refusal changes nothing"


# -- late or not: by the block's time (PaymentConfirmed.paid_at), not by when the payment is processed ----------
def confirm(order: domain.Order | None, paid_at: datetime | None, now: datetime, superseded: bool = False,
            payment: str = "p1") -> Event:
    [ev] = domain.decide(domain.ConfirmPayment(OID, payment, 1_000, TX, version_superseded=superseded,
                                               paid_at=paid_at), order, now)
    return ev


@pytest.mark.parametrize("events", [
    (placed(),),  # past its expiry, before the sweeper got to it
    (placed(), OrderExpired(order_id=OID, expired_at=EXPIRES)),  # the sweeper expired it meanwhile
], ids=["unswept", "swept"])
def test_a_payment_made_before_the_expiry_pays_however_late_it_is_processed(events: tuple[Event, ...]) -> None:
    """Settlement was down, or the confirmations took long: the order expired by the marketplace's clock
    before the payment reached it, but the block holding the payment is stamped before the expiry."""
    processed = EXPIRES + timedelta(days=3)
    ev = confirm(given(*events), paid_at=EXPIRES - timedelta(seconds=1), now=processed)
    assert isinstance(ev, OrderPaid) and ev.paid_at == processed, "OrderPaid says when the marketplace decided"
    after = domain.evolve(given(*events), ev)
    assert after is not None and after.status == "paid" and after.refused_payments == ()
    [grant] = domain.decide(domain.GrantAccess(OID, "r1", "adult", 2, 60, "g1"), after, processed)
    assert isinstance(grant, AccessGranted)
    assert domain.decide(domain.ExpireDue(OID), after, processed) == []


@pytest.mark.parametrize("paid_at", [EXPIRES, EXPIRES + timedelta(minutes=5)], ids=["at-expiry", "after"])
@pytest.mark.parametrize("events", [(placed(),), (placed(), OrderExpired(order_id=OID, expired_at=EXPIRES))],
                         ids=["unswept", "swept"])
def test_a_payment_made_at_or_after_the_expiry_is_refused(events: tuple[Event, ...], paid_at: datetime) -> None:
    processed = EXPIRES + timedelta(minutes=10)
    ev = confirm(given(*events), paid_at=paid_at, now=processed)
    assert isinstance(ev, PaymentRefused) and ev.reason == "order-expired" and ev.refused_at == processed
    assert f"block stamped {paid_at.isoformat()}" in ev.detail and "refunded" in ev.detail
    after = domain.evolve(given(*events), ev)
    assert after is not None and after.status == "refund-due"


def test_block_times_are_whole_seconds_so_only_a_block_before_the_expirys_second_is_in_time() -> None:
    expires = EXPIRES + timedelta(milliseconds=400)
    order = given(placed(expires_at=expires))
    late = confirm(order, paid_at=EXPIRES, now=expires + timedelta(minutes=1))  # mined somewhere in [EXPIRES, +1s)
    assert isinstance(late, PaymentRefused) and late.reason == "order-expired"
    in_time = confirm(order, paid_at=EXPIRES - timedelta(seconds=1), now=expires + timedelta(minutes=1))
    assert isinstance(in_time, OrderPaid)


def test_a_chain_clock_ahead_of_the_marketplace_refuses_nothing_the_marketplace_clock_lets_through() -> None:
    ev = confirm(given(placed()), paid_at=EXPIRES + timedelta(minutes=2), now=EXPIRES - timedelta(minutes=1))
    assert isinstance(ev, OrderPaid)


def test_without_the_block_time_a_payment_is_judged_by_when_it_is_processed_as_before() -> None:
    """A PaymentConfirmed written before settlement recorded paid_at."""
    assert isinstance(confirm(given(placed()), paid_at=None, now=EXPIRES - timedelta(seconds=1)), OrderPaid)
    ev = confirm(given(placed()), paid_at=None, now=EXPIRES)
    assert isinstance(ev, PaymentRefused) and ev.reason == "order-expired" and "before its payment arrived" in ev.detail


def test_a_payment_made_in_time_for_a_version_superseded_since_is_still_refused() -> None:
    ev = confirm(given(placed()), paid_at=T0, now=EXPIRES + timedelta(days=1), superseded=True)
    assert isinstance(ev, PaymentRefused) and ev.reason == "version-superseded"


def test_a_payment_for_a_version_superseded_before_it_arrived_is_refused() -> None:
    for offer, budget in (("download", None), ("query", 1_000_000)):
        ev = refused_payment(given(placed(offer, budget)), superseded=True)
        assert ev.reason == "version-superseded"
        assert "adult v2 was superseded" in ev.detail and "refunded" in ev.detail and "current version" in ev.detail
        after = domain.evolve(given(placed(offer, budget)), ev)
        assert after is not None and after.status == "refund-due"
        cmd = domain.GrantAccess(OID, "r1", "adult", 2, 60, "g1") if offer == "download" else spend(1)
        with pytest.raises(domain.OrderRefused, match="superseded"):
            domain.decide(cmd, after, T0)
        again = domain.decide(domain.ConfirmPayment(OID, "p2", 1_000, TX), after, T0)  # a second payment
        assert [e.reason for e in again] == ["version-superseded"], "not 'expired' for an order still open"


def test_an_order_paid_before_its_version_was_superseded_keeps_its_access() -> None:
    order = given(placed(), paid())
    assert domain.decide(domain.ConfirmPayment(OID, "p2", 1_000, TX, version_superseded=True), order, T0) == []
    [ev] = domain.decide(domain.GrantAccess(OID, "r1", "adult", 2, 60, "g1"), order, T0 + timedelta(days=30))
    assert isinstance(ev, AccessGranted)


def test_only_an_unpaid_order_past_its_expiry_expires() -> None:
    later = T0 + timedelta(hours=2)
    assert domain.decide(domain.ExpireDue(OID), given(placed()), T0) == []
    [ev] = domain.decide(domain.ExpireDue(OID), given(placed()), later)
    assert isinstance(ev, OrderExpired)
    assert domain.decide(domain.ExpireDue(OID), given(placed(), paid()), later) == []


def test_a_grant_needs_a_paid_download_order_of_the_researcher_for_that_version() -> None:
    def grant(order: domain.Order | None, researcher: str = "r1", version: int = 2) -> list[Event]:
        return domain.decide(domain.GrantAccess(OID, researcher, "adult", version, 60, "g1"), order, T0)

    with pytest.raises(domain.OrderRefused, match="not paid") as exc:
        grant(given(placed()))
    assert exc.value.kind == "payment_required"
    with pytest.raises(domain.OrderRefused, match="another researcher"):
        grant(given(placed(), paid()), researcher="r2")
    with pytest.raises(domain.OrderRefused, match="not adult v3"):
        grant(given(placed(), paid()), version=3)
    with pytest.raises(domain.OrderRefused, match="query order"):
        grant(given(placed("query", 1_000_000), paid()))
    [ev] = grant(given(placed(), paid()))
    assert isinstance(ev, AccessGranted) and ev.expires_at == T0 + timedelta(seconds=60)


def test_queries_spend_the_budget_exactly_to_the_last_unit() -> None:
    order = given(placed("query", 1_000_000), paid())
    for _ in range(10):
        [ev] = domain.decide(spend(100_000), order, T0)
        assert isinstance(ev, QueryAnswered)
        order = domain.evolve(order, ev)
    assert order is not None and order.spent_micro == 1_000_000 and order.remaining_micro == 0
    with pytest.raises(domain.OrderRefused, match="has 0 left of 1") as exc:
        domain.decide(spend(1), order, T0)
    assert exc.value.kind == "forbidden"


def test_a_query_beyond_what_is_left_is_refused_whole() -> None:
    order = given(placed("query", 1_000_000), paid())
    [ev] = domain.decide(spend(700_000), order, T0)
    order = domain.evolve(order, ev)
    with pytest.raises(domain.OrderRefused, match="asks epsilon 0.4"):
        domain.decide(spend(400_000), order, T0)
    [ev2] = domain.decide(spend(300_000), order, T0)
    assert isinstance(ev2, QueryAnswered) and ev2.spent_micro == 1_000_000


@pytest.mark.parametrize("micro", [0, -5])
def test_a_non_positive_spend_is_refused(micro: int) -> None:
    with pytest.raises(domain.OrderRefused) as exc:
        domain.decide(spend(micro), given(placed("query", 1_000_000), paid()), T0)
    assert exc.value.kind == "unprocessable"


def test_queries_need_a_paid_query_order_of_the_researcher() -> None:
    with pytest.raises(domain.OrderRefused) as exc:
        domain.decide(spend(1), given(placed("query", 1_000_000)), T0)
    assert exc.value.kind == "payment_required"
    with pytest.raises(domain.OrderRefused, match="download order"):
        domain.decide(spend(1), given(placed(), paid()), T0)
    with pytest.raises(domain.OrderRefused, match="another researcher"):
        domain.decide(spend(1, "r2"), given(placed("query", 1_000_000), paid()), T0)
    with pytest.raises(domain.OrderRefused) as exc:
        domain.decide(spend(1), None, T0)
    assert exc.value.kind == "not_found"
