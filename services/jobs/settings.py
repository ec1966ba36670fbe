"""Settings of the jobs service (environment variables DATACOOP_*, service ones DATACOOP_JOBS_*)."""

from __future__ import annotations

from pydantic import Field

from datacoop.events.types import ADDRESS_PATTERN
from datacoop.kit.settings import LOCAL_CHAIN_ID, ChainId, ServiceSettings


class JobsSettings(ServiceSettings):
    port: int = Field(8106, ge=0, le=65535)
    chain_id: ChainId = Field(LOCAL_CHAIN_ID, description="EIP-712 domain chainId (registrations, results)")
    market_address: str | None = Field(None, pattern=ADDRESS_PATTERN,
                                       description="EIP-712 verifyingContract, as the consent service uses")
    jobs_fee_units: int = Field(1_000_000, ge=0, description="what a completed job pays its provider, "
                                                              "stablecoin base units (1_000_000 = 1.00)")
    jobs_default_redundancy: int = Field(1, ge=1, le=2, description="workers per job when the job doesn't say")
    jobs_lease_ttl_s: float = Field(10.0, gt=0, description="a lease expires this long after the worker's "
                                                           "last heartbeat")
    jobs_max_lease_s: float = Field(3600.0, gt=0, description="the longest a lease may run, heartbeats or not: "
                                                              "past it the lease expires and the job goes to "
                                                              "another worker")
    jobs_sweep_interval_s: float = Field(0.5, gt=0, description="how often expired leases are looked for")
    jobs_max_marks: int = Field(1, ge=1, description="a worker marked this many times gets no more jobs")
    jobs_registration_window_s: int = Field(300, ge=1, description="how old a signed registration may be")
    jobs_max_wait_s: float = Field(30.0, gt=0, description="longest long-poll a worker or researcher may ask")
