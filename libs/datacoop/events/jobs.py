"""Events of the jobs and workers topics (writer: the jobs service, of both).

Workers never write to Kafka: they call the jobs service's HTTP API (register, heartbeat, lease,
progress, result), and the jobs service appends the facts. That keeps one writer per aggregate.
Heartbeats are not events: the jobs service keeps them in memory and writes only what they decide,
a lease that expired (`JobLeaseExpired`).

Subjects: a job's events use the job id; a worker's registration the worker id. Results are
aggregates (never rows), so the accepted result JSON travels in `JobResultReported`; the plot, when
there is one, as base64. Money (`fee_units`) is int base units of the stablecoin.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from datacoop.events.registry import Event, event
from datacoop.events.types import Address, HexSignature, JsonObject, Sha256, Slug, UtcTime
from datacoop.topics import JOBS, WORKERS

WorkerId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


@event("datacoop.jobs.worker_registered", 1, topic=WORKERS)
class WorkerRegistered(Event):
    """A worker joined, signed (EIP-712 RegisterWorker) by its provider's payout key."""

    worker_id: WorkerId
    provider: Address
    backend: Literal["numpy", "cupy"]
    cpu_cores: int = Field(ge=1)
    memory_bytes: int = Field(ge=0)
    gpus: list[JsonObject] = Field(default_factory=list, description="index, name, memory_bytes, "
                                                                         "compute_capability")
    issued_at: int = Field(ge=0, description="unix seconds, signed")
    signature: HexSignature
    registered_at: UtcTime


@event("datacoop.jobs.submitted", 1, topic=JOBS)
class JobSubmitted(Event):
    """A researcher's job on the version its paid `compute` order bought; parameters already validated."""

    job_id: str = Field(min_length=1, max_length=64)
    order_id: str = Field(min_length=1)
    researcher_id: str = Field(min_length=1)
    dataset_id: Slug
    version: int = Field(ge=1)
    analysis: str = Field(min_length=1)
    params: JsonObject
    redundancy: int = Field(ge=1, le=2, description="workers whose results must agree")
    fee_units: int = Field(ge=0, description="what the provider is paid when the job completes")
    submitted_at: UtcTime


@event("datacoop.jobs.leased", 1, topic=JOBS)
class JobLeased(Event):
    worker_id: WorkerId
    lease_id: str = Field(min_length=1, max_length=64)
    leased_at: UtcTime
    expires_at: UtcTime = Field(description="if no heartbeat comes before; each heartbeat extends it")
    provider: Address | None = Field(None, description="the worker's provider: a job's runs go to distinct "
                                                       "providers (absent in events written before it)")


@event("datacoop.jobs.lease_expired", 1, topic=JOBS)
class JobLeaseExpired(Event):
    """The lease ended without a result: the job goes back to the queue; its late result is ignored."""

    worker_id: WorkerId
    lease_id: str = Field(min_length=1, max_length=64)
    expired_at: UtcTime
    reason: str | None = Field(None, max_length=64, description="silent (heartbeats stopped), given-back, "
                                                                "re-registered, not-held (heartbeats stopped "
                                                                "naming it) or too-long; absent in older events")


@event("datacoop.jobs.progressed", 1, topic=JOBS)
class JobProgressed(Event):
    worker_id: WorkerId
    lease_id: str = Field(min_length=1, max_length=64)
    fraction: float = Field(ge=0, le=1)
    at: UtcTime


@event("datacoop.jobs.result_reported", 1, topic=JOBS)
class JobResultReported(Event):
    """A signed result from a live lease. `result_sha256` = sha256 of the canonical JSON of
    {"result": ..., "plot_sha256": ...}; `signature` is the worker provider's EIP-712 JobResult."""

    worker_id: WorkerId
    lease_id: str = Field(min_length=1, max_length=64)
    provider: Address
    result: JsonObject
    plot_png_b64: str | None = None
    result_sha256: Sha256
    signature: HexSignature
    compute_ms: int = Field(ge=0)
    reported_at: UtcTime


@event("datacoop.jobs.run_failed", 1, topic=JOBS)
class JobRunFailed(Event):
    """One run found the job can't run on its data (its parameters or data, not the worker). It counts as
    one run: the job fails once enough runs agree on failing (redundancy 1: this one), and with
    redundancy 2 a run that failed where another returned a result is a disagreement."""

    worker_id: WorkerId
    lease_id: str = Field(min_length=1, max_length=64)
    provider: Address | None = None
    detail: str = Field(max_length=2000)
    failed_at: UtcTime


@event("datacoop.jobs.completed", 1, topic=JOBS)
class JobCompleted(Event):
    """The accepted result. Settlement pays `fee_units` to `provider` (the first worker of the
    agreeing majority) once per job: this is the job's fee event."""

    job_id: str = Field(min_length=1)
    order_id: str = Field(min_length=1)
    result_sha256: Sha256
    workers: list[str] = Field(min_length=1, description="workers whose results agreed")
    provider: Address
    fee_units: int = Field(ge=0)
    completed_at: UtcTime


@event("datacoop.jobs.failed", 1, topic=JOBS)
class JobFailed(Event):
    job_id: str = Field(min_length=1)
    reason: Literal["analysis-failed", "no-agreement"]
    detail: str
    failed_at: UtcTime


@event("datacoop.jobs.worker_marked", 1, topic=JOBS)
class WorkerMarked(Event):
    """A worker whose result the majority contradicted on this job: it loses reputation."""

    worker_id: WorkerId
    job_id: str = Field(min_length=1)
    result_sha256: Sha256
    accepted_sha256: Sha256
    marked_at: UtcTime
