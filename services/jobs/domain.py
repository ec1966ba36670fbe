"""Analytics jobs and their leases: the rules, pure (decide / evolve), no I/O.

A job needs `redundancy` agreeing outcomes (1 or 2). Each run is a lease to one worker, and the runs
of one job go to distinct providers (the signing address: one provider's several worker ids must not
check each other). A lease ends reported (a signed result, or a failure: the job can't run on its
data), or expired: the worker's heartbeats stopped (or stopped naming the lease), the worker
registered again (it restarted and dropped what it ran), the lease ran past its maximum length, or
the worker gave the lease back because it can't run the job itself (its own fault: the file
unreadable from there, no memory...). Either way the job is open again for another worker and a late
result of that lease is refused; once MAX_ABANDONED leases have ended without a result the job fails
instead (no worker could run it: waiting for more would be forever).

Outcomes: results are grouped by agreement, failures form one group. Redundancy 1: the one outcome
decides. Redundancy 2: two outcomes from distinct providers that agree decide (two results: completed;
two failures: failed); a result and a failure, or two different results, call for a third run and
the first group of two wins. Workers whose results the accepted result contradicts are marked
(a failure carries no signed result to hold against its worker, so it is not marked).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from datacoop.errors import Refused
from datacoop.events.jobs import (
    JobCompleted,
    JobFailed,
    JobLeased,
    JobLeaseExpired,
    JobProgressed,
    JobResultReported,
    JobRunFailed,
    JobSubmitted,
    WorkerMarked,
    WorkerRegistered,
)
from datacoop.events.registry import Event

JobStatus = Literal["queued", "running", "completed", "failed"]
MAX_RUNS = 3
MAX_ABANDONED = 3  # leases that ended without a result (expired or given back) before the job fails
REL_TOLERANCE = 1e-6
ABS_TOLERANCE = 1e-9


class JobRefusal(Refused):
    """A command the job rules refuse; `kind` maps to the API status, the message says what to do."""


@dataclass(frozen=True)
class Lease:
    lease_id: str
    worker_id: str
    leased_at: datetime
    expires_at: datetime
    state: Literal["active", "expired", "reported"] = "active"
    provider: str = ""  # empty in leases granted before providers were recorded


@dataclass(frozen=True)
class FailedRun:
    """A run that found the job can't run on its data (`JobRunFailed`)."""

    worker_id: str
    lease_id: str
    provider: str
    detail: str


@dataclass(frozen=True)
class Report:
    worker_id: str
    lease_id: str
    provider: str
    result_sha256: str
    signature: str
    compute_ms: int
    result: dict[str, Any]
    plot_png_b64: str | None = None


@dataclass(frozen=True)
class Job:
    job_id: str
    submitted: bool = False
    order_id: str = ""
    researcher_id: str = ""
    dataset_id: str = ""
    version: int = 0
    analysis: str = ""
    params: dict[str, Any] | None = None
    redundancy: int = 1
    fee_units: int = 0
    submitted_at: datetime | None = None
    status: JobStatus = "queued"
    leases: tuple[Lease, ...] = ()
    reports: tuple[Report, ...] = ()
    failures: tuple[FailedRun, ...] = ()
    progress: float = 0.0
    accepted_sha256: str | None = None
    accepted_workers: tuple[str, ...] = ()
    provider: str | None = None
    finished_at: datetime | None = None
    failure: str | None = None

    @property
    def active_leases(self) -> list[Lease]:
        return [lease for lease in self.leases if lease.state == "active"]

    def lease(self, lease_id: str) -> Lease | None:
        return next((lease for lease in self.leases if lease.lease_id == lease_id), None)

    @property
    def runs_needed(self) -> int:
        """Runs this job wants in total: `redundancy`, one more once two outcomes disagree."""
        if self.redundancy == 1:
            return 1
        return MAX_RUNS if _disagreement(self.reports, self.failures) else self.redundancy

    @property
    def open_slots(self) -> int:
        if self.status in ("completed", "failed"):
            return 0
        return max(0, self.runs_needed - len(self.reports) - len(self.failures) - len(self.active_leases))

    @property
    def abandoned(self) -> int:
        """Leases that ended without a result: the worker went silent or gave the job back."""
        return sum(1 for lease in self.leases if lease.state == "expired")

    @property
    def providers(self) -> set[str]:
        """Providers (lower-cased) holding a live lease or an outcome of this job."""
        held = {lease.provider for lease in self.leases if lease.state != "expired"}
        return {p.lower() for p in held | {r.provider for r in self.reports} | {f.provider for f in self.failures}
                if p}

    def may_lease_to(self, worker_id: str, provider: str = "") -> bool:
        """A worker runs a job at most once, and so does a provider (its worker ids are one party: the
        runs that check each other must come from distinct providers)."""
        busy = {lease.worker_id for lease in self.leases if lease.state != "expired"}
        return self.open_slots > 0 and worker_id not in busy and provider.lower() not in self.providers


# -- results ---------------------------------------------------------------------------------------
def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def result_hash(result: dict[str, Any], plot_png: bytes | None) -> str:
    """What the worker signs: sha256 of {"result", "plot_sha256"} as canonical JSON."""
    plot_sha = hashlib.sha256(plot_png).hexdigest() if plot_png is not None else None
    return hashlib.sha256(canonical_json({"result": result, "plot_sha256": plot_sha})).hexdigest()


def agree(a: Any, b: Any, rel: float = REL_TOLERANCE, abs_tol: float = ABS_TOLERANCE) -> bool:
    """Two results agree: the same structure, equal non-numbers, numbers within tolerance.
    (The plot is not compared: it is drawn from the result and a sample.)"""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_tol)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(agree(a[k], b[k], rel, abs_tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(agree(x, y, rel, abs_tol) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _groups(reports: tuple[Report, ...]) -> list[list[Report]]:
    """Reports grouped by agreement with each group's first member, in report order."""
    groups: list[list[Report]] = []
    for report in reports:
        for group in groups:
            if agree(group[0].result, report.result):
                group.append(report)
                break
        else:
            groups.append([report])
    return groups


def _disagreement(reports: tuple[Report, ...], failures: tuple[FailedRun, ...] = ()) -> bool:
    return len(_groups(reports)) + (1 if failures else 0) > 1


def _providers(runs: Iterable[Report | FailedRun]) -> int:
    return len({run.provider.lower() for run in runs})


# -- commands ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Submit:
    job_id: str
    order_id: str
    researcher_id: str
    dataset_id: str
    version: int
    analysis: str
    params: dict[str, Any]
    redundancy: int
    fee_units: int


@dataclass(frozen=True)
class GrantLease:
    worker_id: str
    lease_id: str
    ttl_s: float
    provider: str = ""


LeaseEnd = Literal["silent", "given-back", "re-registered", "not-held", "too-long"]
_ENDED = {"silent": "its worker went silent", "given-back": "its worker gave it back",
          "re-registered": "its worker registered again (restarted)",
          "not-held": "its worker's heartbeats stopped naming it", "too-long": "it ran past the longest lease"}


@dataclass(frozen=True)
class ExpireLease:
    lease_id: str
    reason: LeaseEnd = "silent"


@dataclass(frozen=True)
class ReportProgress:
    worker_id: str
    lease_id: str
    fraction: float


@dataclass(frozen=True)
class ReportResult:
    worker_id: str
    lease_id: str
    provider: str
    result: dict[str, Any]
    plot_png_b64: str | None
    result_sha256: str
    signature: str
    compute_ms: int


@dataclass(frozen=True)
class ReportFailure:
    """The job can't run on its data (its parameters or data, not the worker): one failed run; the job
    fails once enough runs agree on failing (see the module doc)."""

    worker_id: str
    lease_id: str
    detail: str


@dataclass(frozen=True)
class ReleaseLease:
    """The worker can't run the job (its own fault): the lease ends now and the job goes elsewhere."""

    worker_id: str
    lease_id: str
    detail: str


Command = Submit | GrantLease | ExpireLease | ReportProgress | ReportResult | ReportFailure | ReleaseLease


def _live_lease(job: Job, worker_id: str, lease_id: str) -> Lease:
    if job.status in ("completed", "failed"):
        raise JobRefusal("gone", f"job {job.job_id} is already {job.status}; this report is ignored")
    lease = job.lease(lease_id)
    if lease is None or lease.worker_id != worker_id:
        raise JobRefusal("not_found", f"job {job.job_id} has no lease {lease_id} for worker {worker_id}")
    if lease.state == "expired":
        raise JobRefusal("gone", f"lease {lease_id} on job {job.job_id} expired (heartbeats stopped, the "
                                 "worker registered again, or it was given back); the job went to another "
                                 "worker and this report is ignored")
    if lease.state == "reported":
        raise JobRefusal("conflict", f"lease {lease_id} already reported its result")
    return lease


def decide(cmd: Command, job: Job, now: datetime) -> list[Event]:
    """The events `cmd` causes on `job`, or JobRefusal saying why not. [] means nothing to do."""
    if isinstance(cmd, Submit):
        if job.submitted:
            raise JobRefusal("conflict", f"job {cmd.job_id} already exists; use a new job id")
        return [JobSubmitted(job_id=cmd.job_id, order_id=cmd.order_id, researcher_id=cmd.researcher_id,
                             dataset_id=cmd.dataset_id, version=cmd.version, analysis=cmd.analysis,
                             params=cmd.params, redundancy=cmd.redundancy, fee_units=cmd.fee_units,
                             submitted_at=now)]
    if not job.submitted:
        raise JobRefusal("not_found", f"job {job.job_id} does not exist")
    if isinstance(cmd, GrantLease):
        if not job.may_lease_to(cmd.worker_id, cmd.provider):
            return []
        return [JobLeased(worker_id=cmd.worker_id, lease_id=cmd.lease_id, leased_at=now,
                          expires_at=now + timedelta(seconds=cmd.ttl_s), provider=cmd.provider or None)]
    if isinstance(cmd, ExpireLease):
        lease = job.lease(cmd.lease_id)
        if lease is None or lease.state != "active":
            return []
        if job.status in ("completed", "failed"):
            return [JobLeaseExpired(worker_id=lease.worker_id, lease_id=lease.lease_id, expired_at=now,
                                    reason=cmd.reason)]
        return _end_lease(job, lease, cmd.reason, _ENDED[cmd.reason], now)
    if isinstance(cmd, ReleaseLease):
        lease = _live_lease(job, cmd.worker_id, cmd.lease_id)
        return _end_lease(job, lease, "given-back", f"the last worker said: {cmd.detail[:1000]}", now)
    if isinstance(cmd, ReportProgress):
        _live_lease(job, cmd.worker_id, cmd.lease_id)
        return [JobProgressed(worker_id=cmd.worker_id, lease_id=cmd.lease_id, fraction=cmd.fraction, at=now)]
    if isinstance(cmd, ReportFailure):
        lease = _live_lease(job, cmd.worker_id, cmd.lease_id)
        run_failed = JobRunFailed(worker_id=cmd.worker_id, lease_id=cmd.lease_id, provider=lease.provider or None,
                                  detail=cmd.detail[:2000], failed_at=now)
        return [run_failed, *verdict(evolve(job, run_failed), now)]
    if isinstance(cmd, ReportResult):
        _live_lease(job, cmd.worker_id, cmd.lease_id)
        if job.redundancy > 1 and cmd.provider.lower() in {r.provider.lower() for r in job.reports}:
            raise JobRefusal("conflict", f"provider {cmd.provider} already returned a result for job {job.job_id}; "
                                         "a job's runs must come from distinct providers: give this lease back")
        reported = JobResultReported(worker_id=cmd.worker_id, lease_id=cmd.lease_id, provider=cmd.provider,
                                     result=cmd.result, plot_png_b64=cmd.plot_png_b64,
                                     result_sha256=cmd.result_sha256, signature=cmd.signature,
                                     compute_ms=cmd.compute_ms, reported_at=now)
        after = evolve(job, reported)
        return [reported, *verdict(after, now)]
    raise TypeError(f"unknown command {cmd!r}")


def _end_lease(job: Job, lease: Lease, reason: LeaseEnd, detail: str, now: datetime) -> list[Event]:
    """End `lease` without a result (`JobLeaseExpired`: the job is open again), or fail the job once
    MAX_ABANDONED leases have ended so (expired or given back alike): a job no worker can run, or that
    every worker drops, must not wait forever."""
    ended = JobLeaseExpired(worker_id=lease.worker_id, lease_id=lease.lease_id, expired_at=now, reason=reason)
    after = evolve(job, ended)
    if after.abandoned < MAX_ABANDONED:
        return [ended]
    return [ended, JobFailed(job_id=job.job_id, reason="analysis-failed",
                             detail=f"no worker could run this job: {after.abandoned} leases ended without a "
                                    f"result (the last one ended because {detail}); submit it again later, or "
                                    "ask the operator", failed_at=now)]


def verdict(job: Job, now: datetime) -> list[Event]:
    """Once enough outcomes are in: the accepted result (and the marked minority), the job's failure
    when enough runs agree on failing, or no-agreement after MAX_RUNS runs. Agreeing runs count once
    per provider."""
    needed = min(job.redundancy, 2)
    groups = _groups(job.reports)
    winner = next((g for g in groups if _providers(g) >= needed), None)
    if winner is not None:
        first = winner[0]
        marks = [WorkerMarked(worker_id=r.worker_id, job_id=job.job_id, result_sha256=r.result_sha256,
                              accepted_sha256=first.result_sha256, marked_at=now)
                 for g in groups if g is not winner for r in g]
        return [JobCompleted(job_id=job.job_id, order_id=job.order_id, result_sha256=first.result_sha256,
                             workers=[r.worker_id for r in winner], provider=first.provider,
                             fee_units=job.fee_units, completed_at=now), *marks]
    if job.failures and _providers(job.failures) >= needed:
        return [JobFailed(job_id=job.job_id, reason="analysis-failed", detail=job.failures[0].detail,
                          failed_at=now)]
    if len(job.reports) + len(job.failures) >= MAX_RUNS:
        failed = f" and {len(job.failures)} found it can't run" if job.failures else ""
        return [JobFailed(job_id=job.job_id, reason="no-agreement",
                          detail=f"{len(job.reports)} workers returned {len(groups)} different results{failed}",
                          failed_at=now)]
    return []


def _with_lease(job: Job, lease_id: str, state: Literal["active", "expired", "reported"]) -> Job:
    leases = tuple(replace(lease, state=state) if lease.lease_id == lease_id else lease for lease in job.leases)
    return replace(job, leases=leases)


def evolve(job: Job, event: Event) -> Job:
    """The job after `event`. Total: an event that doesn't apply leaves the job as it is."""
    if isinstance(event, JobSubmitted):
        return replace(job, submitted=True, order_id=event.order_id, researcher_id=event.researcher_id,
                       dataset_id=event.dataset_id, version=event.version, analysis=event.analysis,
                       params=dict(event.params), redundancy=event.redundancy, fee_units=event.fee_units,
                       submitted_at=event.submitted_at)
    if isinstance(event, JobLeased):
        lease = Lease(event.lease_id, event.worker_id, event.leased_at, event.expires_at,
                      provider=event.provider or "")
        status: JobStatus = "running" if job.status == "queued" else job.status
        return replace(job, leases=(*job.leases, lease), status=status)
    if isinstance(event, JobLeaseExpired):
        job = _with_lease(job, event.lease_id, "expired")
        if job.status == "running" and not job.active_leases and not job.reports and not job.failures:
            job = replace(job, status="queued", progress=0.0)
        return job
    if isinstance(event, JobProgressed):
        return replace(job, progress=max(job.progress, event.fraction)) if job.status == "running" else job
    if isinstance(event, JobRunFailed):
        run = FailedRun(event.worker_id, event.lease_id, event.provider or "", event.detail)
        return replace(_with_lease(job, event.lease_id, "reported"), failures=(*job.failures, run))
    if isinstance(event, JobResultReported):
        report = Report(event.worker_id, event.lease_id, event.provider, event.result_sha256, event.signature,
                        event.compute_ms, dict(event.result), event.plot_png_b64)
        return replace(_with_lease(job, event.lease_id, "reported"), reports=(*job.reports, report))
    if isinstance(event, JobCompleted):
        return replace(job, status="completed", progress=1.0, accepted_sha256=event.result_sha256,
                       accepted_workers=tuple(event.workers), provider=event.provider,
                       finished_at=event.completed_at)
    if isinstance(event, JobFailed):
        return replace(job, status="failed", failure=f"{event.reason}: {event.detail}", finished_at=event.failed_at)
    return job


def accepted_report(job: Job) -> Report | None:
    return next((r for r in job.reports if r.result_sha256 == job.accepted_sha256), None)


# -- workers -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Worker:
    """A registered worker and its record: results accepted, results the majority contradicted."""

    worker_id: str
    provider: str = ""
    registered: bool = False
    backend: str = "numpy"
    cpu_cores: int = 1
    memory_bytes: int = 0
    gpus: tuple[dict[str, Any], ...] = ()
    issued_at: int = 0
    accepted: int = 0
    marks: int = 0

    @property
    def reputation(self) -> float:
        """1.0 for a new or honest worker; each mark costs more than many accepted results earn back."""
        return round((self.accepted + 1) / (self.accepted + 1 + 10 * self.marks), 4)

    def eligible(self, max_marks: int, provider_marks: int | None = None) -> bool:
        """Registered, and its provider (all its worker ids together: `provider_marks`, this worker's own
        marks when not given) has fewer than `max_marks` marks."""
        marks = self.marks if provider_marks is None else max(provider_marks, self.marks)
        return self.registered and marks < max_marks


def provider_marks(workers: Iterable[Worker], provider: str) -> int:
    """Marks of every worker id of `provider`: marks and exclusion apply to the provider, so a marked
    provider gains nothing by registering a new worker id."""
    return sum(w.marks for w in workers if w.provider.lower() == provider.lower())


def decide_register(worker: Worker, event: WorkerRegistered) -> list[Event]:
    """Register a worker once; the same provider may sign again (a restart) without a new event."""
    if worker.registered:
        if worker.provider.lower() != event.provider.lower():
            raise JobRefusal("conflict", f"worker id {worker.worker_id} belongs to provider {worker.provider}; "
                                         "choose another worker id")
        if event.issued_at <= worker.issued_at:
            raise JobRefusal("conflict", "this registration was already used (issuedAt not newer); sign a new one")
        return []
    return [event]


def evolve_worker(worker: Worker, event: Event) -> Worker:
    if isinstance(event, WorkerRegistered):
        return replace(worker, provider=event.provider, registered=True, backend=event.backend,
                       cpu_cores=event.cpu_cores, memory_bytes=event.memory_bytes, gpus=tuple(event.gpus),
                       issued_at=max(worker.issued_at, event.issued_at))
    if isinstance(event, JobCompleted) and worker.worker_id in event.workers:
        return replace(worker, accepted=worker.accepted + 1)
    if isinstance(event, WorkerMarked) and event.worker_id == worker.worker_id:
        return replace(worker, marks=worker.marks + 1)
    return worker
