"""Settings of the consent service (environment variables DATACOOP_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from datacoop.events.types import ADDRESS_PATTERN
from datacoop.kit.settings import ServiceSettings


class ConsentSettings(ServiceSettings):
    port: int = Field(8101, ge=0, le=65535)
    chain_id: int = Field(31337, ge=1, lt=2**256, description="EIP-712 domain chainId (a uint256, from 1)")
    market_address: str | None = Field(None, pattern=ADDRESS_PATTERN,
                                       description="EIP-712 verifyingContract: the market contract, once deployed")
    receipt_key_file: Path | None = Field(None, description="Ed25519 PEM key signing consent receipts; "
                                                            "default <data_dir>/consent-receipt-key.pem")
    sweep_interval_s: float = Field(5.0, gt=0, description="how often expired consents are looked for")
