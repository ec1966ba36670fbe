"""Settings of the marketplace service (environment variables DATACOOP_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from datacoop.events.types import ADDRESS_PATTERN
from datacoop.kit.settings import LOCAL_CHAIN_ID, ChainId, ServiceSettings
from services.worker.column_types import DEFAULT_MIN_GROUP_SIZE


class MarketplaceSettings(ServiceSettings):
    port: int = Field(8104, ge=0, le=65535)
    offers_file: Path | None = Field(None, description="prices, budgets, order TTL; default: offers.yaml of "
                                                       "the service")
    object_store_dir: Path = Field(Path("var/objects"), description="where relative or file:// locations of "
                                                                    "versions resolve")
    grant_key_file: Path | None = Field(None, description="Ed25519 PEM key signing grants and receipts; "
                                                          "default <data_dir>/marketplace-grant-key.pem")
    grant_ttl_s: float = Field(900.0, gt=0, description="longest a download grant may live")
    sweep_interval_s: float = Field(5.0, gt=0, description="how often unpaid orders are expired")
    payment_poll_s: float = Field(0.2, gt=0, description="how often confirmed payments are turned into paid "
                                                         "orders")
    chain_id: ChainId = Field(LOCAL_CHAIN_ID, description="where orders are paid (shown in the catalog)")
    chain_url: str = Field("http://127.0.0.1:8545", description="JSON-RPC the CLI pays through")
    market_address: str | None = Field(None, pattern=ADDRESS_PATTERN, description="DatacoopMarket")
    token_address: str | None = Field(None, pattern=ADDRESS_PATTERN, description="the stablecoin")
    query_memory_limit: str = Field("2GB", description="DuckDB memory for loaded versions")
    query_delta: float = Field(1e-6, gt=0, lt=1, description="delta of an order's whole query budget: each grouped "
                                                             "answer spends delta * its epsilon / the budget")
    compute_min_rows: int = Field(DEFAULT_MIN_GROUP_SIZE, ge=1,
                                  description="fewest rows a version needs for compute to be sold on it: keep it at "
                                              "least the workers' DATACOOP_WORKER_MIN_GROUP_SIZE (default 10), below "
                                              "which every job is refused")
