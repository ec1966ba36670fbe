"""Bootstrap of the jobs service: settings, store, bus, the second writer (workers topic), in-memory
heartbeats and worker sessions, the lease-expiry sweeper, the app; `main()`.

Heartbeats live in memory only: a restarted service gives every active lease a full TTL from its
start before expiring it, and workers re-register (their session tokens are in memory too).
Liveness is per lease: a worker whose heartbeats name its leases (`{"leases": [...]}`) keeps those
alive and no other; one whose heartbeats name none (older workers) keeps all its leases alive. A
worker that registers again ends its active leases but those it names as still held, and no lease
runs longer than DATACOOP_JOBS_MAX_LEASE_S: a live worker that dropped a job doesn't keep it forever.

Shutdown: uvicorn waits for open requests before it stops, then cancels what is left (a traceback
per request in the log). Long-polls (a worker's lease, a researcher's job wait) would be left, so
the SIGINT/SIGTERM that starts a shutdown also ends every long-poll at once: a lease poll answers
204 (no job), a job wait the job as it is.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from fastapi import FastAPI

from datacoop.bus.consumer import Delivery
from datacoop.command import Writer
from datacoop.events.envelope import derived_event_id
from datacoop.events.jobs import WorkerRegistered
from datacoop.events.registry import Event
from datacoop.kit import ServiceRuntime, create_app, serve
from datacoop.kit.logs import correlation_id
from datacoop.kit.problems import DomainError, Unauthorized, secret_sha256
from datacoop.topics import DATASETS, JOBS, ORDERS, PAYOUTS, WORKERS
from services.consent import eip712
from services.jobs import domain
from services.jobs.api import build_router
from services.jobs.projection import SCHEMA_SQL, JobsProjection
from services.jobs.settings import JobsSettings

log = logging.getLogger("datacoop.jobs")


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobsService(ServiceRuntime[JobsProjection]):
    """`end_polls_on_signals`: the process's SIGINT/SIGTERM (caught by uvicorn) also ends every long-poll
    (set by `main()`; an app built in a test process leaves that process's signals alone)."""

    def __init__(self, settings: JobsSettings, clock: Callable[[], datetime] = utcnow, *,
                 end_polls_on_signals: bool = False) -> None:
        super().__init__("jobs", settings, JobsProjection, reads=[ORDERS, DATASETS, WORKERS, PAYOUTS], writes=JOBS,
                         schema_sql=SCHEMA_SQL)
        self.settings: JobsSettings = settings
        self.clock = clock
        self.domain_sep = eip712.Domain(chain_id=settings.chain_id, verifying_contract=settings.market_address)
        self.workers_writer = self.add_writer(WORKERS)
        assert self.writer is not None
        self.jobs_writer: Writer = self.writer
        self.runner.add_listener(self._on_applied)
        self.heartbeats: dict[str, float] = {}  # worker id -> time.monotonic() of its last sign of life
        self.heartbeat_at: dict[str, datetime] = {}  # the same, by the service's clock (shown in GET /workers)
        self.lease_seen: dict[str, float] = {}  # lease id -> last sign of it (granted, named, progress)
        self.names_leases: set[str] = set()  # workers whose heartbeats name the leases they hold
        self.tokens: dict[str, str] = {}
        self.gave_back: dict[str, set[str]] = {}  # job id -> workers that could not run it (asked last)
        self._started_m = time.monotonic()
        self._changed = asyncio.Event()
        self.stopping = False
        self.end_polls_on_signals = end_polls_on_signals
        self.add_background(self.sweep_forever)

    async def start(self) -> None:
        await super().start()
        if self.end_polls_on_signals:
            self._end_polls_on_shutdown_signals()

    def begin_shutdown(self) -> None:
        """The server is going down: every long-poll answers now, and new ones at once."""
        if not self.stopping:
            log.info("shutting down: ending long-polls")
        self.stopping = True
        self.notify()

    def _end_polls_on_shutdown_signals(self) -> None:
        """Chain `begin_shutdown` before the server's own SIGINT/SIGTERM handlers (uvicorn installs them
        before the app starts and puts back what was there before it when it exits)."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            server_handler = signal.getsignal(sig)
            if not callable(server_handler):
                continue  # no server is catching it: leave the default (the process just ends)

            def handler(signum: int, frame: FrameType | None,
                        server_handler: Callable[[int, FrameType | None], Any] = server_handler) -> None:
                loop.call_soon_threadsafe(self.begin_shutdown)
                server_handler(signum, frame)

            signal.signal(sig, handler)

    # -- plumbing the API uses -----------------------------------------------------------------
    def _on_applied(self, deliveries: list[Delivery]) -> None:
        self.notify()

    def notify(self) -> None:
        """Wake every long-poll: something changed (a job, a lease, a version)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, done: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            changed = self._changed
            remaining = deadline - time.monotonic()
            if done() or remaining <= 0 or self.stopping:
                return
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return

    def new_id(self) -> str:
        return str(uuid.uuid4())

    def new_token(self, worker_id: str) -> str:
        token = "dcw_" + secrets.token_urlsafe(24)
        self.tokens[worker_id] = secret_sha256(token)
        self.heartbeat(worker_id)
        return token

    def heartbeat(self, worker_id: str, leases: list[str] | None = None) -> None:
        """The worker is alive; `leases`, when given, are the leases it still runs (only those stay live
        from then on: a lease it no longer names expires after the TTL)."""
        now_m = time.monotonic()
        self.heartbeats[worker_id] = now_m
        self.heartbeat_at[worker_id] = self.clock()
        if leases is not None:
            self.names_leases.add(worker_id)
            for lease_id in leases:
                self.touch_lease(lease_id, now_m)

    def liveness(self, worker_id: str) -> tuple[datetime | None, bool]:
        """When the worker was last heard from (a heartbeat, its registration, a lease poll) by this process,
        and whether that is within the lease TTL: a worker silent longer (stopped, crashed, cut off), or not
        heard from since this service started, is not live. In memory, as heartbeats are: never events."""
        seen = self.heartbeats.get(worker_id)
        live = seen is not None and time.monotonic() - seen <= self.settings.jobs_lease_ttl_s
        return self.heartbeat_at.get(worker_id), live

    def touch_lease(self, lease_id: str, now_m: float | None = None) -> None:
        self.lease_seen[lease_id] = time.monotonic() if now_m is None else now_m

    def lease_live(self, lease: domain.Lease, now_m: float) -> bool:
        ttl = self.settings.jobs_lease_ttl_s
        if lease.worker_id in self.names_leases:
            return now_m - self.lease_seen.get(lease.lease_id, self._started_m) <= ttl
        return now_m - self.heartbeats.get(lease.worker_id, self._started_m) <= ttl

    def recover(self, primary_type: str, message: dict[str, Any], signature: str) -> str:
        try:
            return eip712.recover(eip712.digest(self.domain_sep, primary_type, message), signature)
        except eip712.SignatureInvalid as exc:
            raise Unauthorized(f"bad signature: {exc}; sign the {primary_type} typed data (GET /eip712)",
                               slug="bad-signature") from exc
        except ValueError as exc:  # a value the typed data cannot carry (a uint256 out of range)
            raise DomainError(f"cannot hash {primary_type}: {exc}", status=422, slug="invalid-request") from exc

    async def execute(self, job_id: str, cmd: domain.Command, **kw: Any) -> list[Delivery]:
        def decide() -> list[Event]:
            return domain.decide(cmd, self.projection.job(job_id), self.clock())

        deliveries = await self.jobs_writer.execute(job_id, decide, correlation_id=correlation_id.get(), **kw)
        if deliveries:
            self.notify()
        return deliveries

    async def release(self, job_id: str, cmd: domain.ReleaseLease) -> None:
        """A worker gives a lease back (it can't run the job itself): the job is open again, and this
        worker is not offered it again (remembered in memory, as heartbeats are: after a restart it may
        be offered once more, and gives it back again)."""
        await self.execute(job_id, cmd)
        self.gave_back.setdefault(job_id, set()).add(cmd.worker_id)
        log.info("worker %s gave back job %s: %s", cmd.worker_id, job_id, cmd.detail)

    async def register_worker(self, event: WorkerRegistered, held: list[str] | None = None) -> int:
        """Register the worker; a worker registering again restarted (or lost its session), so its active
        leases end now, except those in `held` (it still runs them): the jobs go back to the queue at
        once instead of waiting on a lease nobody runs. Returns how many leases ended."""
        def decide() -> list[Event]:
            return domain.decide_register(self.projection.worker(event.worker_id), event)

        await self.workers_writer.execute(event.worker_id, decide, correlation_id=correlation_id.get())
        self.names_leases.discard(event.worker_id)
        keep = set(held or ())
        ended = 0
        for job in self.projection.running_jobs():
            for lease in job.active_leases:
                if lease.worker_id != event.worker_id:
                    continue
                if lease.lease_id in keep:
                    self.touch_lease(lease.lease_id)
                    continue
                ended += await self._expire(job.job_id, lease, "re-registered")
        return ended

    async def _expire(self, job_id: str, lease: domain.Lease, reason: domain.LeaseEnd) -> int:
        cause = f"lease-expired:{lease.lease_id}"
        ended = len(await self.execute(job_id, domain.ExpireLease(lease.lease_id, reason), causation_id=cause,
                                       id_for=lambda ev, c=cause: derived_event_id(c, ev.type_name())))
        self.lease_seen.pop(lease.lease_id, None)
        log.info("lease %s of job %s expired (%s, worker %s)", lease.lease_id, job_id, reason, lease.worker_id)
        return ended

    async def take_lease(self, worker_id: str, wait_s: float,
                         gone: Callable[[], Awaitable[bool]] | None = None) -> dict[str, Any] | None:
        """The first open job this worker may run, leased to it; None when none came within `wait_s`, when
        `gone()` says the worker hung up meanwhile (a stopped worker's poll must not take a job, nor count
        as its heartbeat), or when the service is shutting down."""
        deadline = time.monotonic() + wait_s
        while True:
            changed = self._changed
            if self.stopping or (gone is not None and await gone()):
                return None
            self.heartbeat(worker_id)
            provider = self.projection.worker(worker_id).provider
            for job in self.projection.open_jobs():
                if not job.may_lease_to(worker_id, provider) or self._passed_over(job, worker_id):
                    continue
                lease_id = uuid.uuid4().hex
                cmd = domain.GrantLease(worker_id, lease_id, self.settings.jobs_lease_ttl_s, provider)
                if await self.execute(job.job_id, cmd):
                    self.touch_lease(lease_id)
                    return self._offer(job.job_id, lease_id)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return None

    def _passed_over(self, job: domain.Job, worker_id: str) -> bool:
        """A worker that gave the job back is not offered it again while another live worker that may take
        it (eligible, and the job may be leased to it: not a worker or provider that already ran it) has
        not given it back: otherwise the job goes back to it, and its next give-backs fail the job (it
        must not wait forever for a worker that is not there, or that can never take it)."""
        gave_back = self.gave_back.get(job.job_id, set())
        if worker_id not in gave_back:
            return False
        live_s, max_marks = self.settings.jobs_lease_ttl_s, self.settings.jobs_max_marks
        now_m = time.monotonic()
        for other, seen in self.heartbeats.items():
            if other in gave_back or other == worker_id or now_m - seen > live_s:
                continue
            w = self.projection.worker(other)
            if self.projection.eligible(w, max_marks) and job.may_lease_to(other, w.provider):
                return True
        return False

    def _offer(self, job_id: str, lease_id: str) -> dict[str, Any]:
        job = self.projection.job(job_id)
        version = self.projection.version(job.dataset_id, job.version)
        assert version is not None
        lease = job.lease(lease_id)
        assert lease is not None
        return {"job_id": job_id, "lease_id": lease_id, "analysis": job.analysis, "params": job.params,
                "dataset_id": job.dataset_id, "version": job.version, "location": version.location,
                "sha256": version.sha256, "columns": version.columns, "expires_at": lease.expires_at.isoformat(),
                "lease_ttl_s": self.settings.jobs_lease_ttl_s}

    # -- lease expiry --------------------------------------------------------------------------
    async def sweep_once(self) -> int:
        """Expire every active lease that is not live (see `lease_live`) or ran past the longest lease."""
        if not self.ready:
            return 0
        now_m, now = time.monotonic(), self.clock()
        expired = 0
        for job in self.projection.running_jobs():
            for lease in job.active_leases:
                if (now - lease.leased_at).total_seconds() > self.settings.jobs_max_lease_s:
                    expired += await self._expire(job.job_id, lease, "too-long")
                elif not self.lease_live(lease, now_m):
                    reason: domain.LeaseEnd = "not-held" if lease.worker_id in self.names_leases and \
                        now_m - self.heartbeats.get(lease.worker_id, self._started_m) <= \
                        self.settings.jobs_lease_ttl_s else "silent"
                    expired += await self._expire(job.job_id, lease, reason)
        return expired

    async def sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("lease sweep failed; retrying next interval")
            await asyncio.sleep(self.settings.jobs_sweep_interval_s)


def build_app(settings: JobsSettings | None = None, clock: Callable[[], datetime] = utcnow, *,
              end_polls_on_signals: bool = False) -> FastAPI:
    settings = settings or JobsSettings()
    service = JobsService(settings, clock, end_polls_on_signals=end_polls_on_signals)
    return create_app(service, [build_router(service)], title="datacoop jobs",
                      description="Analytics jobs on members' GPUs: submission, leases to workers, signed "
                                  "results, redundancy and reputation.")


def main() -> None:
    # long-polls end when the shutdown signal comes; the timeout only bounds a request stuck otherwise
    serve("jobs", JobsSettings, lambda s: build_app(s, end_polls_on_signals=True), timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
