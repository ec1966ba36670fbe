"""Revenue split: exact integer sums, remainders to the cooperative, pro rata within one unit."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.settlement.allocation import split_job_fee, split_order_revenue

prices = st.integers(min_value=0, max_value=10**15)
fees_bps = st.integers(min_value=0, max_value=10_000)
weights = st.dictionaries(st.text(min_size=1, max_size=8), st.integers(min_value=0, max_value=10**6),
                          min_size=1, max_size=30).filter(lambda w: sum(w.values()) > 0)


@given(prices, fees_bps, weights)
def test_parts_add_up_exactly_to_the_price(price: int, fee_bps: int, records: dict[str, int]) -> None:
    split = split_order_revenue(price, fee_bps, records)
    assert split.total_units == price
    assert set(split.payee_units) == set(records)
    assert all(isinstance(u, int) and u >= 0 for u in split.payee_units.values())


@given(prices, fees_bps, weights)
def test_each_member_gets_their_pro_rata_share_within_one_unit(
    price: int, fee_bps: int, records: dict[str, int]
) -> None:
    split = split_order_revenue(price, fee_bps, records)
    pool = price - price * fee_bps // 10_000
    total = sum(records.values())
    for member, units in split.payee_units.items():
        exact = Fraction(pool * records[member], total)
        assert exact - 1 < units <= exact


@given(prices, fees_bps, weights)
def test_cooperative_gets_the_fee_plus_every_remainder(
    price: int, fee_bps: int, records: dict[str, int]
) -> None:
    split = split_order_revenue(price, fee_bps, records)
    fee = price * fee_bps // 10_000
    remainder = split.cooperative_units - fee
    assert 0 <= remainder < len(records)


def test_a_worked_example() -> None:
    split = split_order_revenue(1_000_003, 250, {"ana": 1, "ben": 2, "cy": 0})
    # fee 25_000; pool 975_003 split 1:2 -> 325_001 and 650_002, remainder 0
    assert split.payee_units == {"ana": 325_001, "ben": 650_002, "cy": 0}
    assert split.cooperative_units == 25_000


def test_indivisible_price_leaves_the_remainder_to_the_cooperative() -> None:
    split = split_order_revenue(10, 0, {"a": 1, "b": 1, "c": 1})
    assert split.payee_units == {"a": 3, "b": 3, "c": 3}
    assert split.cooperative_units == 1


def test_a_job_fee_goes_wholly_to_its_provider() -> None:
    split = split_job_fee(123_456, "gpu-node-7")
    assert split.payee_units == {"gpu-node-7": 123_456}
    assert split.cooperative_units == 0


@given(st.integers(min_value=0, max_value=10**15))
def test_a_job_fee_is_never_split(fee: int) -> None:
    assert split_job_fee(fee, "p").total_units == fee


@pytest.mark.parametrize(
    ("price", "fee_bps", "records", "error"),
    [
        (-1, 100, {"a": 1}, ValueError),
        (100, -1, {"a": 1}, ValueError),
        (100, 10_001, {"a": 1}, ValueError),
        (100, 100, {"a": -1, "b": 2}, ValueError),
        (100, 100, {}, ValueError),
        (100, 100, {"a": 0}, ValueError),
        (100.0, 100, {"a": 1}, TypeError),
        (100, 1.5, {"a": 1}, TypeError),
        (100, 100, {"a": 0.5}, TypeError),
        (True, 100, {"a": 1}, TypeError),
    ],
    ids=["negative-price", "negative-fee", "fee-over-100pct", "negative-records", "no-members",
         "no-records", "float-price", "float-fee", "float-records", "bool-price"],
)
def test_bad_input_is_refused(price: object, fee_bps: object, records: dict[str, object],
                              error: type[Exception]) -> None:
    with pytest.raises(error):
        split_order_revenue(price, fee_bps, records)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fee", "provider", "error"), [(-5, "p", ValueError), (5, "", ValueError),
                                                         (5.0, "p", TypeError)])
def test_bad_job_fee_is_refused(fee: object, provider: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        split_job_fee(fee, provider)  # type: ignore[arg-type]
