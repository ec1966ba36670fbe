"""Settings of the consent service (environment variables DATACOOP_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from datacoop.events.types import ADDRESS_PATTERN
from datacoop.kit.settings import LOCAL_CHAIN_ID, ChainId, ServiceSettings


class ConsentSettings(ServiceSettings):
    port: int = Field(8101, ge=0, le=65535)
    chain_id: ChainId = Field(LOCAL_CHAIN_ID, description="EIP-712 domain chainId")
    market_address: str | None = Field(None, pattern=ADDRESS_PATTERN,
                                       description="EIP-712 verifyingContract: the market contract, once deployed")
    receipt_key_file: Path | None = Field(None, description="Ed25519 PEM key signing consent receipts; "
                                                            "default <data_dir>/consent-receipt-key.pem")
    sweep_interval_s: float = Field(5.0, gt=0, description="how often expired consents are looked for")
