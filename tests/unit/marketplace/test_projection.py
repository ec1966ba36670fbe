"""The marketplace projection: refused payments are listed as refundable and never paid, refunded ones
turn their order `refunded` and are owed no more, and the group-by columns of each version come from
the definition its build used; all rebuild from the log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

from datacoop.bus.consumer import Delivery
from datacoop.events.datasets import (
    DatasetDefined,
    DatasetVersionPublished,
    DatasetVersionSuperseded,
    VersionBuildStarted,
)
from datacoop.events.envelope import Envelope
from datacoop.events.orders import OrderExpired, OrderPlaced, PaymentRefused
from datacoop.events.payouts import PaymentConfirmed, PaymentRefunded
from datacoop.events.registry import Event
from datacoop.store import ProjectionStore
from services.marketplace.projection import SCHEMA_SQL, MarketProjection
from services.marketplace.service import decide_payment

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TX = "0x" + "11" * 32
REFUND_TX = "0x" + "33" * 32
_offsets = count()
COLUMNS = {"pseudonym": "VARCHAR", "age": "VARCHAR", "sex": "VARCHAR", "diagnosis": "VARCHAR",
           "note": "VARCHAR", "visit": "VARCHAR", "income": "BIGINT"}
DEFINITION: dict[str, Any] = {
    "name": "clinic", "version": 1, "purpose": "health-research", "data_categories": ["health"],
    "columns": {"age": {"type": "integer", "min": 0, "max": 99}, "sex": {"type": "categorical"},
                "diagnosis": {}, "note": {"type": "text"}, "visit": {"type": "date"},
                "income": {"type": "integer"}},
    "quasi_identifiers": {"age": {"numeric_bands": {"min": 0, "max": 99, "widths": [10]}}},
    "sensitive": ["diagnosis"], "privacy": {"k": 5, "l": 2}}


def delivery(ev: Event, subject: str, event_id: str | None = None) -> Delivery:
    env = Envelope(source="test", type=ev.type_name(), subject=subject, seq=1, data=ev.model_dump(mode="json"),
                   **({"id": event_id} if event_id else {}))
    return Delivery("t", 0, next(_offsets), env, ev)


def version(v: int) -> DatasetVersionPublished:
    return DatasetVersionPublished(
        dataset_id="clinic", version=v, purpose="health-research", categories=["health"],
        location=f"file:///v{v}.parquet", sha256="0" * 64, rows=10, suppressed_rows=0, k=5, l_diversity=2.0,
        privacy_model="distinct-l", information_loss=0.1, epsilon=1.0, columns=COLUMNS,
        contributor_weights={"0x" + "a" * 40: 10}, published_at=T0)


def order(oid: str) -> OrderPlaced:
    return OrderPlaced(order_id=oid, researcher_id="r1", buyer="0x" + "b" * 40, dataset_id="clinic", version=1,
                       offer="download", price_units=1_000, placed_at=T0, expires_at=T0 + timedelta(hours=1))


def payment(oid: str, paid_at: datetime | None = None, confirmed_at: datetime = T0) -> PaymentConfirmed:
    return PaymentConfirmed(order_id=oid, chain_order_id="0x" + "22" * 32, buyer="0x" + "b" * 40,
                            amount_units=1_000, tx_hash=TX, block_number=1, log_index=0, confirmed_at=confirmed_at,
                            paid_at=paid_at)


def project(deliveries: list[Delivery]) -> MarketProjection:
    store = ProjectionStore(":memory:", SCHEMA_SQL)
    proj = MarketProjection(store.conn)
    with store.transaction() as tx:
        proj.apply(tx, deliveries)
    return proj


def react(proj: MarketProjection, now: datetime) -> list[Delivery]:
    """What the payment reactor appends (service.react_to_payments_once, without the bus)."""
    return [delivery(ev, p.order_id) for p in proj.payments_to_apply() for ev in decide_payment(proj, p, now)]


def test_a_payment_for_a_superseded_version_is_refused_listed_refundable_and_rebuilt_the_same() -> None:
    oid = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a001"
    log = [delivery(version(1), "clinic"), delivery(order(oid), oid),
           delivery(DatasetVersionSuperseded(dataset_id="clinic", version=1, superseded_by=2, reason="erasure",
                                             superseded_at=T0), "clinic"),
           delivery(payment(oid), oid, event_id="0190a8c0-0000-7000-8000-000000000001")]
    proj = project(log)
    reactions = react(proj, T0)
    assert [type(d.event).__name__ for d in reactions] == ["PaymentRefused"]
    rebuilt = project(log + reactions)  # the projection deleted and rebuilt from the topics
    o = rebuilt.order(oid)
    assert o is not None and o.status == "refund-due" and o.refused_payments[0].reason == "version-superseded"
    assert rebuilt.payments_to_apply() == [], "a refused payment is decided once"
    [unmatched] = rebuilt.unmatched_payments()
    assert unmatched["refund_due"] and unmatched["reason"] == "version-superseded"
    assert "refunded" in unmatched["detail"] and unmatched["order_id"] == oid
    assert react(rebuilt, T0 + timedelta(days=1)) == []


def test_a_payment_past_bigint_is_kept_exactly_and_listed() -> None:
    """The contract takes up to 2^120 - 1 units a payment (anyone may pay for any order id): a BIGINT column
    failed the whole batch on one of 2^63 or more."""
    oid = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a00f"
    huge = 2**120 - 1
    proj = project([delivery(payment(oid).model_copy(update={"amount_units": huge}), oid)])
    [unmatched] = proj.unmatched_payments()
    assert unmatched["amount_units"] == huge and unmatched["reason"] == "unknown order"


def test_a_payment_for_a_current_version_pays() -> None:
    oid = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a002"
    proj = project([delivery(version(1), "clinic"), delivery(order(oid), oid), delivery(payment(oid), oid)])
    assert [type(d.event).__name__ for d in react(proj, T0)] == ["OrderPaid"]


def test_a_payment_made_before_the_expiry_but_confirmed_days_later_pays_the_swept_order() -> None:
    """Settlement was down past the order's expiry: the sweeper expired the order, then the payment
    arrived with its block's time, before the expiry. Stored with the payment, that time decides."""
    oid = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a003"
    expires = T0 + timedelta(hours=1)
    paid_at = expires - timedelta(seconds=30)
    later = expires + timedelta(days=2)
    log = [delivery(version(1), "clinic"), delivery(order(oid), oid),
           delivery(OrderExpired(order_id=oid, expired_at=expires), oid),
           delivery(payment(oid, paid_at=paid_at, confirmed_at=later), oid)]
    proj = project(log)
    [pending] = proj.payments_to_apply()
    assert pending.paid_at == paid_at and pending.paid_at.tzinfo == UTC
    [reaction] = react(proj, later)
    assert type(reaction.event).__name__ == "OrderPaid"
    rebuilt = project([*log, reaction])
    o = rebuilt.order(oid)
    assert o is not None and o.status == "paid"
    assert rebuilt.payments_to_apply() == [] and rebuilt.unmatched_payments() == []


def test_a_payment_confirmed_without_its_block_time_is_judged_when_processed() -> None:
    """A PaymentConfirmed written before settlement recorded paid_at still reads, and counts as made when
    the marketplace processes it."""
    oid = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a004"
    log = [delivery(version(1), "clinic"), delivery(order(oid), oid), delivery(payment(oid), oid)]
    proj = project(log)
    assert proj.payments_to_apply()[0].paid_at is None
    [reaction] = react(proj, T0 + timedelta(hours=2))
    assert isinstance(reaction.event, PaymentRefused) and reaction.event.reason == "order-expired"
    assert [u["reason"] for u in project([*log, reaction]).unmatched_payments()] == ["order-expired"]


def test_a_version_records_the_group_by_columns_of_the_definition_its_build_used() -> None:
    newer = {**DEFINITION, "version": 2, "sensitive": [], "columns": {**DEFINITION["columns"],
                                                                      "diagnosis": {"type": "text"}}}
    defined = [delivery(DatasetDefined(dataset_id="clinic", definition_version=n, purpose="health-research",
                                       categories=["health"], definition=d, source="file", defined_at=T0), "clinic")
               for n, d in ((1, DEFINITION), (2, newer))]
    started = delivery(VersionBuildStarted(dataset_id="clinic", build_id="b1", trigger="change",
                                           definition_version=1, inputs_sha256="0" * 64, members=1, records=10,
                                           started_at=T0), "clinic")
    proj = project([defined[0], started, defined[1], delivery(version(1), "clinic")])
    assert proj.groupable("clinic", 1) == ["age", "diagnosis", "sex"], "no pseudonym, free text, date or number"
    assert project([delivery(version(1), "clinic")]).groupable("clinic", 1) == [], "no definition: no group-by"


def test_a_versions_row_bound_is_its_definitions_not_the_datas() -> None:
    """DP sensitivity must not depend on the data: the bound comes from the definition the build used."""
    bounded = {**DEFINITION, "privacy": {**(DEFINITION.get("privacy") or {}), "max_rows_per_member": 4}}
    defined = delivery(DatasetDefined(dataset_id="clinic", definition_version=1, purpose="health-research",
                                      categories=["health"], definition=bounded, source="file", defined_at=T0),
                       "clinic")
    proj = project([defined, delivery(version(1), "clinic")])  # the version's largest weight is 10
    assert proj.row_bound("clinic", 1) == 4
    plain = {**DEFINITION, "privacy": {k: v for k, v in (DEFINITION.get("privacy") or {}).items()
                                       if k != "max_rows_per_member"}}
    default = project([delivery(DatasetDefined(dataset_id="clinic", definition_version=1, purpose="health-research",
                                               categories=["health"], definition=plain, source="file",
                                               defined_at=T0), "clinic"), delivery(version(1), "clinic")])
    assert default.row_bound("clinic", 1) == 1
    assert project([delivery(version(1), "clinic")]).row_bound("clinic", 1) is None


def test_a_payment_short_of_the_price_is_listed_on_its_order_until_it_is_paid() -> None:
    oid = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a0aa"
    short = payment(oid).model_copy(update={"amount_units": 999})
    proj = project([delivery(version(1), "clinic"), delivery(order(oid), oid), delivery(short, oid)])
    assert proj.payments_to_apply() == []
    [listed] = proj.short_payments(oid)
    assert (listed["amount_units"], listed["tx_hash"]) == (999, TX)
    assert proj.short_payments("0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a0ab") == []


def refunded(oid: str, amount_units: int = 1_000) -> PaymentRefunded:
    return PaymentRefunded(order_id=oid, chain_order_id="0x" + "22" * 32, buyer="0x" + "b" * 40,
                           amount_units=amount_units, tx_hash=REFUND_TX, block_number=5, log_index=1,
                           refunded_at=T0 + timedelta(hours=3))


def test_a_refused_payment_refunded_on_chain_turns_the_order_refunded_and_is_no_longer_owed() -> None:
    oid = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a0c1"
    log = [delivery(version(1), "clinic"), delivery(order(oid), oid), delivery(payment(oid), oid)]
    log += react(project(log), T0 + timedelta(hours=2))  # refused: the order had expired
    log.append(delivery(refunded(oid), oid))
    proj = project(log)
    o = proj.order(oid)
    assert o is not None and o.status == "refunded" and o.refunded_at == T0 + timedelta(hours=3)
    assert (o.refund_tx_hash, o.refunded_units, o.refunded_to) == (REFUND_TX, 1_000, "0x" + "b" * 40)
    assert o.refused_payments[0].reason == "order-expired", "the refusal stays in the order's history"
    [listed] = proj.unmatched_payments()
    assert (listed["refund_due"], listed["refunded"], listed["refund_tx_hash"]) == (False, True, REFUND_TX)
    assert listed["refunded_at"] == T0 + timedelta(hours=3) and listed["reason"] == "order-expired"
    assert proj.payments_to_apply() == [] and react(proj, T0 + timedelta(days=1)) == []
    assert project(log).order(oid) == o, "rebuilt from the topics, the same"


def test_a_payment_refunded_before_the_marketplace_decided_it_pays_nothing() -> None:
    """The operator may refund before the reactor gets to a payment (or its OrderPaid may land after the
    refund): the order stays refunded, and no decision is taken on a refunded payment."""
    oid = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a0c2"
    log = [delivery(version(1), "clinic"), delivery(order(oid), oid), delivery(payment(oid), oid)]
    decided = react(project(log), T0)
    assert [type(d.event).__name__ for d in decided] == ["OrderPaid"]
    refund_first = project([*log, delivery(refunded(oid), oid)])
    assert refund_first.payments_to_apply() == []
    late_paid = project([*log, delivery(refunded(oid), oid), *decided])
    o = late_paid.order(oid)
    assert o is not None and o.status == "refunded" and o.paid_units == 1_000
    paid_then_refunded = project([*log, *decided, delivery(refunded(oid), oid)]).order(oid)
    assert paid_then_refunded == o, "the same state whichever of the refund and the OrderPaid is read first"


def test_a_paid_then_refunded_order_rebuilds_the_same_however_the_topics_interleave() -> None:
    """PaymentRefunded (datacoop.payouts) and the order's events (datacoop.orders) come on two topics: a rebuild
    may read them in any interleaving and cut its batches anywhere."""
    oid = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a0d1"
    log = [delivery(version(1), "clinic"), delivery(order(oid), oid), delivery(payment(oid), oid)]
    [paid] = react(project(log), T0 + timedelta(minutes=1))
    refund = delivery(refunded(oid), oid)

    def state(*batches: list[Delivery]) -> Any:
        store = ProjectionStore(":memory:", SCHEMA_SQL)
        proj = MarketProjection(store.conn)
        for batch in batches:
            with store.transaction() as tx:
                proj.apply(tx, batch)
        return proj.order(oid)

    live = state(log, [paid], [refund])
    assert live is not None and live.status == "refunded" and live.paid_at is not None
    for batches in ([[refund, *log, paid]], [[refund], log, [paid]], [log, [refund], [paid]], [[*log, refund, paid]]):
        assert state(*batches) == live, batches


def test_a_short_payment_refunded_is_no_longer_short_on_its_order() -> None:
    oid = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a0c3"
    short = payment(oid).model_copy(update={"amount_units": 999})
    proj = project([delivery(version(1), "clinic"), delivery(order(oid), oid), delivery(short, oid),
                    delivery(refunded(oid, 999), oid)])
    assert proj.short_payments(oid) == []
    [listed] = proj.unmatched_payments()
    assert listed["refunded"] and not listed["refund_due"] and listed["reason"] == "short of the price 1000"


def test_a_refund_read_before_its_order_still_turns_it_refunded() -> None:
    """The refund comes on datacoop.payouts, the order on datacoop.orders: a rebuild may read the refund first."""
    oid = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a0c4"
    store = ProjectionStore(":memory:", SCHEMA_SQL)
    proj = MarketProjection(store.conn)
    for batch in ([delivery(version(1), "clinic"), delivery(payment(oid), oid), delivery(refunded(oid), oid)],
                  [delivery(order(oid), oid), delivery(OrderExpired(order_id=oid, expired_at=T0), oid)]):
        with store.transaction() as tx:
            proj.apply(tx, batch)
    o = proj.order(oid)
    assert o is not None and o.status == "refunded" and o.refund_tx_hash == REFUND_TX
    assert o.refunded_at == T0 + timedelta(hours=3) and proj.payments_to_apply() == []
