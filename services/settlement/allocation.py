"""Revenue split in integer base units: who earns what from one order or one job.

Rules (ARCHITECTURE.md, "Money"):
- an order's price, less the cooperative's fee, goes to the members whose records are in the version
  sold, pro rata to their record counts; each member gets the floor of their exact share, so nobody
  is paid more than their share and nobody less than their share minus one unit;
- the cooperative gets the fee plus every rounding remainder, so the parts add up to the price exactly;
- a job's fee goes wholly to the provider that ran it.

No floats anywhere: a float in money is refused with TypeError, a negative or out-of-range number
with ValueError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

BPS_DENOMINATOR = 10_000


@dataclass(frozen=True)
class Allocation:
    """Units per payee plus the cooperative's units; `total_units` equals what was split."""

    payee_units: Mapping[str, int]
    cooperative_units: int

    @property
    def total_units(self) -> int:
        return self.cooperative_units + sum(self.payee_units.values())


def _require_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in base units, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def split_order_revenue(price_units: int, fee_bps: int, contributor_weights: Mapping[str, int]) -> Allocation:
    """Split an order's price between its contributors (pro rata to records) and the cooperative.

    `contributor_weights` maps member id -> number of their records in the version sold (>= 0, at least
    one positive). The cooperative's fee is floor(price * fee_bps / 10_000).
    """
    _require_int("price_units", price_units)
    _require_int("fee_bps", fee_bps)
    if fee_bps > BPS_DENOMINATOR:
        raise ValueError(f"fee_bps must be at most {BPS_DENOMINATOR} (100 %), got {fee_bps}")
    for member, records in contributor_weights.items():
        _require_int(f"records of member {member!r}", records)
    total_records = sum(contributor_weights.values())
    if total_records == 0:
        raise ValueError("no contributor records in the version sold; there is nobody to pay pro rata")
    fee_units = price_units * fee_bps // BPS_DENOMINATOR
    pool_units = price_units - fee_units
    payee_units = {
        member: pool_units * records // total_records for member, records in contributor_weights.items()
    }
    return Allocation(payee_units, price_units - sum(payee_units.values()))


def split_job_fee(fee_units: int, provider: str) -> Allocation:
    """A job's fee goes wholly to the provider that ran it; the cooperative takes nothing of it."""
    _require_int("fee_units", fee_units)
    if not provider:
        raise ValueError("a job fee needs the provider that ran the job")
    return Allocation({provider: fee_units}, 0)
