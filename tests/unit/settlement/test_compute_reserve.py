"""Compute orders hold a reserve for their jobs' providers; job fees never exceed it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from datacoop.events.payouts import JobFeeAllocated, RevenueAllocated
from services.settlement import domain

COOP = "0x" + "c0" * 20
A, B = "0x" + "0a" * 20, "0x" + "0b" * 20


@given(amount=st.integers(1, 10**15), reserve_bps=st.integers(0, 10_000), fee_bps=st.integers(0, 10_000),
       wa=st.integers(1, 1000), wb=st.integers(0, 1000))
def test_compute_order_split_plus_reserve_is_exactly_what_was_paid(amount: int, reserve_bps: int, fee_bps: int,
                                                                  wa: int, wb: int) -> None:
    order = domain.Order("o-1", "ds", 1, amount, "compute")
    [event] = [e for e in domain.allocate_order(domain.Payment("o-1", amount, True), order, {A: wa, B: wb},
                                                fee_bps, COOP, False, reserve_bps)
               if isinstance(e, RevenueAllocated)]
    assert event.compute_reserve_units == amount * reserve_bps // 10_000
    assert sum(event.allocations.values()) + event.cooperative_units + event.compute_reserve_units == amount


def test_download_orders_hold_no_reserve() -> None:
    order = domain.Order("o-2", "ds", 1, 1000, "download")
    [event] = domain.allocate_order(domain.Payment("o-2", 1000, True), order, {A: 1}, 500, COOP, False, 5000)
    assert isinstance(event, RevenueAllocated) and event.compute_reserve_units == 0


def test_job_fee_is_capped_by_the_reserve_left_and_nothing_is_paid_from_an_empty_one() -> None:
    [fee] = domain.allocate_job_fee("j-1", A, 700, False, "o-1", reserve_left_units=500)
    assert isinstance(fee, JobFeeAllocated) and fee.fee_units == 500
    assert domain.allocate_job_fee("j-2", A, 700, False, "o-1", reserve_left_units=0) == []
    assert domain.allocate_job_fee("j-1", A, 700, True, "o-1", reserve_left_units=500) == []
