"""Settings of the vault service (environment variables DATACOOP_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from datacoop.events.types import ADDRESS_PATTERN
from datacoop.kit.settings import LOCAL_CHAIN_ID, ChainId, ServiceSettings

DEV_SERVICE_TOKEN = "datacoop-dev-vault-token"


class VaultSettings(ServiceSettings):
    port: int = Field(8102, ge=0, le=65535)
    vault_kek: str | None = Field(None, description="key-encryption key, base64 of 32 bytes (DATACOOP_VAULT_KEK); "
                                                    "unset = <data_dir>/vault-kek, generated on first start "
                                                    "(local development only)")
    vault_keys_file: Path | None = Field(None, description="DuckDB file of wrapped data keys; "
                                                           "default <data_dir>/vault-keys.duckdb")
    vault_service_token: str = Field(DEV_SERVICE_TOKEN, min_length=16,
                                     description="bearer token other services present to POST /internal/decrypt")
    chain_id: ChainId = Field(LOCAL_CHAIN_ID, description="EIP-712 domain chainId (the consent service's)")
    market_address: str | None = Field(None, pattern=ADDRESS_PATTERN,
                                       description="EIP-712 verifyingContract (the same as the consent service's)")
    vault_freshness_s: float = Field(300.0, gt=0, description="how far a ContributeRecords issuedAt may be from now")
    vault_max_rows: int = Field(100_000, ge=1, le=999_999, description="most rows in one upload")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body taken (an upload's "
                                                                       "JSON); a larger one is refused with 413")
    vault_shred_interval_s: float = Field(1.0, gt=0, description="how often erased members' keys are looked for")
