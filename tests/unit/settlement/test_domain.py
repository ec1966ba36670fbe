"""Settlement rules as tables: given what is known, when a fact arrives, then these events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from pydantic import ValidationError

from datacoop.bus.consumer import Delivery
from datacoop.events import Envelope
from datacoop.events.payouts import (
    EpochPrepared,
    JobFeeAllocated,
    PaymentConfirmed,
    PaymentFlagged,
    RevenueAllocated,
)
from datacoop.events.registry import Event
from services.settlement import domain
from services.settlement.merkle import StandardMerkleTree, verify
from services.settlement.projection import SCHEMA_SQL, SettlementProjection

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
COOP = "0x" + "c0" * 20
ANA, BEN, CY = ("0x" + c * 40 for c in "abc")
ORDER = uuid.UUID("0192f1d2-0000-7000-8000-000000000001")


def paid_log(order_id: bytes, amount: int = 1_000_000, log_index: int = 0) -> domain.PaidLog:
    return domain.PaidLog(order_id, ANA, amount, "0x" + "11" * 32, 7, log_index)


# -- payments --------------------------------------------------------------------------------------
def test_a_new_payment_is_confirmed_under_its_order_uuid() -> None:
    [ev] = domain.confirm_payment(paid_log(ORDER.bytes + bytes(16)), already_confirmed=False, now=NOW)
    assert isinstance(ev, PaymentConfirmed)
    assert ev.order_id == str(ORDER) and ev.amount_units == 1_000_000 and ev.block_number == 7


def test_a_confirmed_payment_is_paid_at_its_blocks_time_and_confirmed_now() -> None:
    block_time = NOW - timedelta(hours=6)  # settlement was down for hours, or confirmations took that long
    log = domain.PaidLog(ORDER.bytes + bytes(16), ANA, 1_000_000, "0x" + "11" * 32, 7, 0, paid_at=block_time)
    [ev] = domain.confirm_payment(log, already_confirmed=False, now=NOW)
    assert isinstance(ev, PaymentConfirmed) and (ev.paid_at, ev.confirmed_at) == (block_time, NOW)


def test_a_confirmation_logged_before_paid_at_was_recorded_still_reads() -> None:
    [ev] = domain.confirm_payment(paid_log(ORDER.bytes + bytes(16)), already_confirmed=False, now=NOW)
    logged = ev.model_dump(mode="json")
    del logged["paid_at"]
    assert PaymentConfirmed.model_validate(logged).paid_at is None


def test_a_payment_seen_again_after_a_restart_gives_nothing() -> None:
    assert domain.confirm_payment(paid_log(ORDER.bytes + bytes(16)), already_confirmed=True, now=NOW) == []


def test_a_payment_whose_id_is_not_a_uuid_is_confirmed_and_flagged_never_allocatable() -> None:
    confirmed, flag = domain.confirm_payment(paid_log(b"\x01" * 32), already_confirmed=False, now=NOW)
    assert isinstance(flag, PaymentFlagged)
    assert flag.reason == "not-an-order-id" and not flag.allocated
    assert confirmed.order_id == "0x" + "01" * 32  # type: ignore[attr-defined]


# -- allocation ------------------------------------------------------------------------------------
ORDER_ROW = domain.Order(str(ORDER), "health-survey", 1, 1_000_003)


@pytest.mark.parametrize(
    ("amount", "weights", "fee_bps", "members", "fee", "remainder", "flagged"),
    [
        (1_000_003, {ANA: 1, BEN: 2}, 250, {ANA: 325_001, BEN: 650_002}, 25_000, 0, False),
        (1_000_003, {ANA: 1, BEN: 1, CY: 1}, 0, {ANA: 333_334, BEN: 333_334, CY: 333_334}, 0, 1, False),
        (1_000_006, {ANA: 1, BEN: 1, CY: 1}, 0, {ANA: 333_335, BEN: 333_335, CY: 333_335}, 0, 1, True),
        (1_000_003, {ANA: 3}, 10_000, {ANA: 0}, 1_000_003, 0, False),
    ],
)
def test_an_order_is_split_exactly_with_remainders_to_the_cooperative(
    amount: int, weights: dict[str, int], fee_bps: int, members: dict[str, int], fee: int, remainder: int,
    flagged: bool,
) -> None:
    events = domain.allocate_order(domain.Payment(str(ORDER), amount, True), ORDER_ROW, weights, fee_bps, COOP,
                                   already_allocated=False)
    *flags, alloc = events
    assert isinstance(alloc, RevenueAllocated)
    assert alloc.allocations == members
    assert (alloc.fee_units, alloc.remainder_units) == (fee, remainder)
    assert sum(alloc.allocations.values()) + alloc.cooperative_units == amount
    assert [f.reason for f in flags] == (["amount-mismatch"] if flagged else [])  # type: ignore[attr-defined]


def test_an_overpayment_pays_the_order_and_is_flagged_allocated_on_the_whole_amount() -> None:
    flag, alloc = domain.allocate_order(domain.Payment(str(ORDER), 1_200_000, True), ORDER_ROW, {ANA: 1}, 250, COOP,
                                        already_allocated=False)
    assert isinstance(flag, PaymentFlagged) and (flag.reason, flag.allocated) == ("amount-mismatch", True)
    assert isinstance(alloc, RevenueAllocated) and alloc.amount_units == 1_200_000


def test_a_short_payment_is_never_allocated_only_flagged_once_and_held_for_a_refund() -> None:
    """The contract takes one payment per order id: a short one can't be topped up and opens nothing, so
    splitting it would pay members for nothing (and its refund would stop every later root)."""
    short = domain.Payment(str(ORDER), 1_000_002, True)
    assert domain.allocate_order(short, ORDER_ROW, {ANA: 1}, 250, COOP, already_allocated=False) == []
    [flag] = domain.hold_short_payment(short, ORDER_ROW, already_flagged=False, refunded=False)
    assert isinstance(flag, PaymentFlagged)
    assert (flag.reason, flag.allocated, flag.amount_units, flag.price_units) == \
        ("amount-mismatch", False, 1_000_002, 1_000_003)
    assert domain.hold_short_payment(short, ORDER_ROW, already_flagged=True, refunded=False) == []
    assert domain.hold_short_payment(short, ORDER_ROW, already_flagged=False, refunded=True) == []
    assert domain.hold_short_payment(domain.Payment(str(ORDER), 1_000_003, True), ORDER_ROW, False, False) == []


def test_an_order_is_allocated_once() -> None:
    payment = domain.Payment(str(ORDER), 1_000_003, True)
    assert domain.allocate_order(payment, ORDER_ROW, {ANA: 1}, 250, COOP, already_allocated=True) == []


def test_an_allocation_that_does_not_add_up_is_refused_by_its_contract() -> None:
    with pytest.raises(ValidationError, match="add up"):
        RevenueAllocated(order_id="o", dataset_id="health-survey", version=1, amount_units=100, fee_bps=0,
                         fee_units=0, remainder_units=0, cooperative=COOP, cooperative_units=0,
                         allocations={ANA: 99})


def test_a_version_without_records_goes_wholly_to_the_cooperative_and_is_flagged() -> None:
    flag, alloc = domain.allocate_order(domain.Payment(str(ORDER), 1_000_003, True), ORDER_ROW, {ANA: 0}, 250,
                                        COOP, False)
    assert isinstance(flag, PaymentFlagged) and flag.reason == "no-contributors"
    assert isinstance(alloc, RevenueAllocated)
    assert alloc.allocations == {} and alloc.cooperative_units == 1_000_003 and alloc.fee_units == 25_000


def test_a_job_fee_goes_wholly_to_its_provider_once() -> None:
    [ev] = domain.allocate_job_fee("job-1", CY, 42_000, already_allocated=False)
    assert isinstance(ev, JobFeeAllocated) and domain.credits(ev) == {CY: 42_000}
    assert domain.allocate_job_fee("job-1", CY, 42_000, already_allocated=True) == []


# -- epochs ----------------------------------------------------------------------------------------
SINCE = NOW - timedelta(seconds=10)


@pytest.mark.parametrize(
    ("state", "total", "interval_s", "threshold", "forced", "due"),
    [
        (domain.EpochState(), 100, 3600, 0, True, True),         # asked for, something to post
        (domain.EpochState(), 100, 3600, 0, False, False),       # not asked, interval not passed
        (domain.EpochState(), 100, 5, 0, False, True),           # interval passed
        (domain.EpochState(), 100, 3600, 100, False, True),      # threshold reached
        (domain.EpochState(), 99, 3600, 100, False, False),      # threshold not reached
        (domain.EpochState(1, True, 100), 100, 5, 0, True, False),   # nothing new since epoch 1
        (domain.EpochState(1, False, 50), 100, 5, 0, True, False),   # epoch 1 still in flight
    ],
)
def test_when_an_epoch_is_due(state: domain.EpochState, total: int, interval_s: float, threshold: int,
                              forced: bool, due: bool) -> None:
    assert domain.epoch_due(state, total, NOW, SINCE, interval_s, threshold, forced) is due


def test_an_epoch_is_the_tree_of_every_cumulative_balance() -> None:
    prepared, tree = domain.prepare_epoch(domain.EpochState(2, True, 10), {ANA: 7, BEN: 5, CY: 0}, NOW)
    assert prepared.epoch == 3 and prepared.total_units == 12 and prepared.accounts == 2
    assert prepared.root == tree.root_hex
    assert verify(tree.root, BEN, 5, tree.proof(BEN))
    assert prepared.leaves_hash == domain.leaves_hash({BEN: 5, ANA: 7})


def test_no_new_epoch_while_one_is_in_flight() -> None:
    with pytest.raises(domain.SettlementRefused, match="not posted"):
        domain.prepare_epoch(domain.EpochState(1, False, 10), {ANA: 20}, NOW)


# -- the projection: balances are credited once per allocation ---------------------------------------
def deliver(*events: Event) -> list[Delivery]:
    return [Delivery("t", 0, i, Envelope(source="test", type=e.type_name(), subject="s", seq=i + 1,
                                         data=e.model_dump(mode="json")), e) for i, e in enumerate(events)]


def test_projection_credits_each_allocation_once_and_tracks_epochs() -> None:
    conn = duckdb.connect()
    conn.execute(SCHEMA_SQL)
    projection = SettlementProjection(conn)
    [alloc] = domain.allocate_order(domain.Payment("o-1", 1_000_003, True),
                                    domain.Order("o-1", "health-survey", 1, 1_000_003), {ANA: 1, BEN: 2}, 250, COOP,
                                    False)
    [job] = domain.allocate_job_fee("job-1", CY, 42, False)
    projection.apply(conn, deliver(alloc, alloc, job))
    assert projection.balances() == {ANA: 325_001, BEN: 650_002, COOP: 25_000, CY: 42}
    prepared, _ = domain.prepare_epoch(projection.epoch_state(), projection.balances(), NOW)
    projection.apply(conn, deliver(prepared))
    state = projection.epoch_state()
    assert (state.last_epoch, state.last_posted) == (1, False)
    row = projection.epoch(1)
    assert row is not None and StandardMerkleTree.of(sorted(row["leaves"].items())).root_hex == prepared.root
    assert isinstance(prepared, EpochPrepared)
