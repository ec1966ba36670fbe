"""Settings of the settlement service (environment variables DATACOOP_*)."""

from __future__ import annotations

from pydantic import Field

from datacoop.events.types import ADDRESS_PATTERN
from datacoop.kit.settings import DEV_OPERATOR_TOKEN, ServiceSettings


class SettlementSettings(ServiceSettings):
    port: int = Field(8105, ge=0, le=65535)
    chain_url: str = Field("http://127.0.0.1:8545", description="JSON-RPC of the chain")
    market_address: str = Field(pattern=ADDRESS_PATTERN, description="DatacoopMarket")
    token_address: str = Field(pattern=ADDRESS_PATTERN, description="the stablecoin")
    settler_key: str = Field(min_length=64, repr=False, description="private key holding SETTLER_ROLE")
    coop_address: str = Field(pattern=ADDRESS_PATTERN,
                              description="the cooperative's payout account (fees, remainders)")
    fee_bps: int = Field(500, ge=0, le=10_000, description="cooperative fee in basis points of each order")
    compute_reserve_bps: int = Field(5_000, ge=0, le=10_000,
                                     description="share of a compute order held in escrow for its jobs' providers")
    confirmations: int = Field(2, ge=0, description="blocks a payment must be under before it counts")
    start_block: int = Field(0, ge=0, description="first block to read OrderPaid logs from")
    epoch_interval_s: float = Field(3600.0, gt=0, description="post a new root at most this often")
    epoch_threshold_units: int = Field(0, ge=0, description="post early once this many units are unposted "
                                                            "(0 = interval only)")
    poll_interval_s: float = Field(1.0, gt=0, description="how often the chain and pending work are checked")
    max_blocks_per_poll: int = Field(2000, ge=1, description="largest block range read at once")
    settlement_operator_token: str = Field(DEV_OPERATOR_TOKEN, min_length=16, repr=False,
                                           description="bearer token of POST /epochs (posting a root on demand)")
