"""A compute order whose payment the operator refunded buys no jobs: the jobs service reads settlement's
PaymentRefunded from datacoop.payouts, whichever of it and the marketplace's OrderPaid it reads first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

from datacoop.bus.consumer import Delivery
from datacoop.events.envelope import Envelope
from datacoop.events.orders import OrderPaid, OrderPlaced
from datacoop.events.payouts import PaymentRefunded
from datacoop.events.registry import Event
from datacoop.store import ProjectionStore
from datacoop.topics import PAYOUTS
from services.jobs.projection import SCHEMA_SQL, JobsProjection
from services.jobs.service import JobsService
from services.jobs.settings import JobsSettings

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TX = "0x" + "ab" * 32
_offsets = count()


def _delivery(ev: Event, subject: str) -> Delivery:
    env = Envelope(source="test", type=ev.type_name(), subject=subject, seq=1, data=ev.model_dump(mode="json"))
    return Delivery("t", 0, next(_offsets), env, ev)


def _placed(oid: str) -> OrderPlaced:
    return OrderPlaced(order_id=oid, researcher_id="r1", buyer="0x" + "b" * 40, dataset_id="clinic", version=1,
                       offer="compute", price_units=1_000, placed_at=T0, expires_at=T0 + timedelta(hours=1))


def _paid(oid: str) -> OrderPaid:
    return OrderPaid(order_id=oid, payment_event_id="p-" + oid, amount_units=1_000, tx_hash=TX, paid_at=T0)


def _refunded(oid: str) -> PaymentRefunded:
    return PaymentRefunded(order_id=oid, chain_order_id="0x" + "22" * 32, buyer="0x" + "b" * 40, amount_units=1_000,
                           tx_hash=TX, block_number=9, log_index=0, refunded_at=T0 + timedelta(minutes=5))


def _project(events: list[Event], store: ProjectionStore) -> JobsProjection:
    proj = JobsProjection(store)
    with store.transaction() as tx:
        proj.apply(tx, [_delivery(ev, ev.order_id) for ev in events])  # type: ignore[attr-defined]
    return proj


def test_a_refunded_compute_order_is_unpaid_for_good_in_either_order(tmp_path: Path) -> None:
    store = ProjectionStore(tmp_path / "jobs.duckdb", SCHEMA_SQL)
    proj = _project([_placed("o1"), _paid("o1"), _refunded("o1"), _placed("o2"), _refunded("o2"), _paid("o2"),
                     _placed("o3"), _paid("o3")], store)
    for oid in ("o1", "o2"):
        order = proj.order(oid)
        assert order is not None and order.refunded and not order.paid, order
    assert proj.order("o3") is not None and proj.order("o3").paid  # type: ignore[union-attr]
    store.close()
    reloaded = JobsProjection(ProjectionStore(tmp_path / "jobs.duckdb", SCHEMA_SQL))  # loaded back from the table
    assert reloaded.order("o1") is not None and reloaded.order("o1").refunded  # type: ignore[union-attr]


def test_the_jobs_service_reads_the_payouts_topic(tmp_path: Path) -> None:
    service = JobsService(JobsSettings(data_dir=tmp_path, log_json=False))
    assert PAYOUTS in service.runner.topics
