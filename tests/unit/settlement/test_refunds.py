"""Refunds on the payouts topic: an OrderRefunded log gives one PaymentRefunded (the same id when read
again), and settlement's projection never allocates a refunded payment nor lists it as waiting; a payment
short of its order's price is held for such a refund, never allocated."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import duckdb

from datacoop.bus.consumer import Delivery
from datacoop.events import Envelope, derived_event_id
from datacoop.events.datasets import DatasetVersionPublished
from datacoop.events.orders import OrderPaid, OrderPlaced, PaymentRefused
from datacoop.events.payouts import PaymentConfirmed, PaymentFlagged, PaymentRefunded
from datacoop.events.registry import Event
from services.settlement import domain
from services.settlement.projection import SCHEMA_SQL, SettlementProjection
from services.settlement.service import _derived

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ANA, BEN = "0x" + "a" * 40, "0x" + "b" * 40
ORDER = uuid.UUID("0192f1d2-0000-7000-8000-000000000001")
CHAIN_ID = ORDER.bytes + bytes(16)
REFUND_TX = "0x" + "ab" * 32


def refund_log(chain_order_id: bytes = CHAIN_ID, amount: int = 1_000_000) -> domain.RefundedLog:
    return domain.RefundedLog(chain_order_id, BEN, amount, "0x" + "AB" * 32, 9, 3,
                              NOW - timedelta(minutes=5))


def deliver(*events: Event) -> list[Delivery]:
    return [Delivery("t", 0, i, Envelope(source="test", type=e.type_name(), subject="s", seq=i + 1,
                                         data=e.model_dump(mode="json")), e) for i, e in enumerate(events)]


def test_a_refund_log_is_recorded_under_its_order_with_its_blocks_time() -> None:
    [ev] = domain.record_refund(refund_log(), already_recorded=False)
    assert isinstance(ev, PaymentRefunded)
    assert (ev.order_id, ev.buyer, ev.amount_units, ev.tx_hash, ev.block_number, ev.log_index) == \
        (str(ORDER), BEN, 1_000_000, REFUND_TX, 9, 3)
    assert ev.refunded_at == NOW - timedelta(minutes=5) and ev.chain_order_id == "0x" + CHAIN_ID.hex()


def test_a_refund_read_again_after_a_crash_gives_nothing_or_the_same_id() -> None:
    assert domain.record_refund(refund_log(), already_recorded=True) == []
    [ev] = domain.record_refund(refund_log(), already_recorded=False)
    cause = f"refund:{REFUND_TX}:3"
    assert _derived(cause)(ev) == derived_event_id(cause, PaymentRefunded.type_name()) == _derived(cause)(ev)


def _projection() -> tuple[duckdb.DuckDBPyConnection, SettlementProjection]:
    conn = duckdb.connect()
    conn.execute(SCHEMA_SQL)
    return conn, SettlementProjection(conn)


def _paid_and_refused() -> list[Event]:
    oid = str(ORDER)
    return [
        DatasetVersionPublished(dataset_id="ds", version=1, purpose="health-research", categories=["health"], location="file:///x",
                                sha256="0" * 64, rows=10, suppressed_rows=0, k=5, l_diversity=2.0,
                                privacy_model="distinct-l", information_loss=0.1, epsilon=1.0, columns={"a": "VARCHAR"},
                                contributor_weights={ANA: 1}, published_at=NOW),
        OrderPlaced(order_id=oid, researcher_id="r", buyer=BEN, dataset_id="ds", version=1, offer="download",
                    price_units=1_000_000, placed_at=NOW, expires_at=NOW + timedelta(hours=1)),
        PaymentConfirmed(order_id=oid, chain_order_id="0x" + CHAIN_ID.hex(), buyer=BEN, amount_units=1_000_000,
                         tx_hash="0x" + "11" * 32, block_number=7, log_index=0, confirmed_at=NOW, paid_at=NOW),
    ]


def test_a_refunded_payment_no_longer_waits_and_is_never_allocated() -> None:
    conn, projection = _projection()
    projection.apply(conn, deliver(*_paid_and_refused(), PaymentRefused(
        order_id=str(ORDER), payment_event_id="p-1", amount_units=1_000_000, tx_hash="0x" + "11" * 32,
        reason="order-expired", detail="expired; to be refunded", refused_at=NOW)))
    assert [p["order_id"] for p in projection.waiting_payments()] == [str(ORDER)]
    [refund] = domain.record_refund(refund_log(), already_recorded=False)
    projection.apply(conn, deliver(refund, refund))
    assert projection.payment_refunded(str(ORDER))
    assert projection.waiting_payments() == []
    view = projection.order_view(str(ORDER))
    assert view is not None and view["refund"]["tx_hash"] == REFUND_TX and view["refund"]["amount_units"] == 1_000_000


def test_a_short_payment_is_held_for_a_refund_never_allocated_and_leaves_waiting_once_refunded() -> None:
    """A short payment pays no order and can't be topped up (one payment per order id): it is flagged
    allocated=false and held like a refused one, so its refund never finds an allocated order (which
    would stop every later root). Even an OrderPaid for it would not release it."""
    conn, projection = _projection()
    events = _paid_and_refused()
    short = events[2].model_copy(update={"amount_units": 400_000})
    projection.apply(conn, deliver(*events[:2], short))
    assert projection.ready_to_allocate() == []
    [(payment, order)] = projection.short_payments()
    assert domain.allocate_order(payment, order, {ANA: 1}, 250, ANA, already_allocated=False) == []
    [flag] = domain.hold_short_payment(payment, order, already_flagged=False, refunded=False)
    assert isinstance(flag, PaymentFlagged)
    assert (flag.reason, flag.allocated, flag.amount_units, flag.price_units) == \
        ("amount-mismatch", False, 400_000, 1_000_000)
    assert "refund" in flag.detail.lower()
    projection.apply(conn, deliver(flag, OrderPaid(order_id=str(ORDER), payment_event_id="p-1", amount_units=400_000,
                                                   tx_hash="0x" + "11" * 32, paid_at=NOW)))
    assert projection.flagged(str(ORDER), "amount-mismatch") and projection.short_payments() == []
    assert projection.ready_to_allocate() == [] and projection.balances() == {}
    [waiting] = projection.waiting_payments()
    assert waiting["order_id"] == str(ORDER) and waiting["amount_units"] == 400_000
    assert "short of the price" in waiting["marketplace"] and "held for a refund" in waiting["marketplace"]
    view = projection.order_view(str(ORDER))
    assert view is not None and view["allocation"] is None and "short of the price" in view["marketplace"]

    [refund] = domain.record_refund(refund_log(amount=400_000), already_recorded=False)
    projection.apply(conn, deliver(refund))
    assert projection.waiting_payments() == [] and projection.ready_to_allocate() == []
    assert projection.allocated_orders_paid_since(0) == [], "nothing for the epoch's refund check to refuse"


def test_a_short_payment_refunded_before_it_was_flagged_is_neither_flagged_nor_allocated() -> None:
    conn, projection = _projection()
    events = _paid_and_refused()
    short = events[2].model_copy(update={"amount_units": 400_000})
    [refund] = domain.record_refund(refund_log(amount=400_000), already_recorded=False)
    projection.apply(conn, deliver(*events[:2], short, refund))
    assert projection.short_payments() == [] and projection.ready_to_allocate() == []
    assert projection.waiting_payments() == []


def test_a_short_payment_an_earlier_release_allocated_is_not_called_held_for_a_refund() -> None:
    """Releases before 9b7d9a8 split short payments: for such an order the operator's view must not say it is held
    for a refund (refunding an allocated order stops every later root)."""
    conn, proj = _projection()
    paid_and_refused = _paid_and_refused()
    short = paid_and_refused[2].model_copy(update={"amount_units": 400_000})
    proj.apply(conn, deliver(*paid_and_refused[:2], short))
    held = proj.order_view(str(ORDER))
    assert held is not None and "held for a refund" in held["marketplace"]
    split = domain.allocate_order(domain.Payment(str(ORDER), 400_000, True),
                                  domain.Order(str(ORDER), "ds", 1, 400_000, "download"), {ANA: 1}, 500, ANA, False)
    legacy_flag = PaymentFlagged(order_id=str(ORDER), reason="amount-mismatch", amount_units=400_000,
                                 price_units=1_000_000, allocated=True, detail="the amount paid is allocated")
    proj.apply(conn, deliver(legacy_flag, *split))
    view = proj.order_view(str(ORDER))
    assert view is not None and view["allocation"] is not None
    assert "held for a refund" not in view["marketplace"] and "must not be refunded" in view["marketplace"]
