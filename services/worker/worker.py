"""The worker loop: register, heartbeat, take a lease, fetch the version's Parquet (checksum checked),
run the analysis, sign and report the result. Rows never leave this process: only results do.

Whose fault a job that doesn't finish is decides what the worker says. The job's (the analytics
raise `JobRefused` or `AnalysisFailed`: the parameters don't fit the data, the data can't support
the analysis): the worker reports a failure and the job fails with that reason, since any worker
would fail the same way. This worker's (anything else: the version's file unreadable from here,
no memory, a broken backend, a bug): it gives the lease back, and the job goes to another worker.
A worker that can't work at all (its configured backend can't run, its registration is refused)
stops with `WorkerCannotStart` instead of taking jobs.

Talking to the jobs service is best-effort where losing a message costs nothing (a progress report)
and persistent where it would lose work: a result is retried on transient errors (connection
refused, 5xx, 408/429) with backoff for up to `deliver_for_s`; a result the service refuses (other
4xx) or never takes gives the lease back with the reason, as does any failure report, so no job
waits for its lease to run out. A 404/409/410 means the lease is no longer ours: nothing to tell.

Test-only switches (environment): DATACOOP_WORKER_TAMPER=1 perturbs every result before signing it
(a dishonest worker, for redundancy to catch); DATACOOP_WORKER_DELAY_S holds each job that long
before computing (so a test can kill a worker mid-job).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from datacoop import objectstore
from services.worker.analytics import AnalysisFailed, JobRefused, detect_hardware, run_analysis, select_xp
from services.worker.analytics.backend import BACKEND_ENV, backend_name
from services.worker.analytics.disclosure import DEFAULT_MIN_GROUP_SIZE, min_group_size_for
from services.worker.client import ApiError, WorkerSession

log = logging.getLogger("datacoop.worker")


class WorkerCannotStart(Exception):
    """This worker can't take jobs (its backend can't run here, the jobs service refused its
    registration); the message says what to do. The process exits non-zero with it."""


class JobsServiceUnreachable(WorkerCannotStart):
    """The jobs service never answered the first registration within the worker's start wait: most
    likely a wrong --jobs-url, or a service that is not running. The process exits 3 with it (as a
    service does that never reaches its broker)."""


class LeaseLost(Exception):
    """The jobs service no longer holds this lease for us: stop the job, report nothing."""


LEASE_GONE = (404, 409, 410)  # the service no longer holds this lease for us


class DataUnavailable(Exception):
    """The version's file is missing or differs from its published sha256."""


def resolve(location: str, object_store: Path) -> Path:
    """The local path of a file:// or bare-path location (s3:// is fetched by `load_verified`)."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:
        path = Path(location)
        return path if path.is_absolute() else object_store / path
    raise DataUnavailable(f"location {location} uses {parsed.scheme}://, which is not a local file; this worker "
                          "reads a local folder (file://) or, through load_verified, an s3:// object store")


def load_verified(location: str, sha256: str, object_store: Path) -> pa.Table:
    """The version's table, once the file's SHA-256 matches the published one (s3:// fetched whole)."""
    if objectstore.is_s3(location):
        try:
            data = objectstore.read_bytes(location)
        except OSError as exc:
            raise DataUnavailable(str(exc)) from exc
    else:
        path = resolve(location, object_store)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataUnavailable(f"cannot read {location}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataUnavailable(f"the file at {location} does not match the published sha256; refusing to run on it")
    return pq.read_table(pa.BufferReader(data))


def tamper(result: dict[str, Any]) -> dict[str, Any]:
    """Every number changed: what a dishonest or broken worker might send."""
    def bend(value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return value * 1.5 + 1
        if isinstance(value, dict):
            return {k: bend(v) for k, v in value.items()}
        if isinstance(value, list):
            return [bend(v) for v in value]
        return value
    return dict(bend(result))


def check_backend() -> ModuleType:
    """The array module DATACOOP_WORKER_BACKEND asks for, or WorkerCannotStart saying why it can't
    run here (a worker that registered anyway would only fail or give back every job it takes)."""
    try:
        return select_xp()
    except (RuntimeError, ValueError) as exc:
        raise WorkerCannotStart(f"{BACKEND_ENV}: {exc}") from None


def is_transient(exc: Exception) -> bool:
    """A failed call worth repeating: the service is down, restarting, not ready yet, or overloaded.
    Any other 4xx is a refusal that repeating won't change."""
    if isinstance(exc, ApiError):
        return exc.status >= 500 or exc.status in (408, 429)
    return isinstance(exc, httpx.TransportError | OSError)


def fault_detail(exc: BaseException) -> str:
    """What a researcher may read about a fault: its message, never a Python class name."""
    if isinstance(exc, MemoryError):
        return "the worker ran out of memory"
    message = str(exc).strip()
    if isinstance(exc, JobRefused | AnalysisFailed | DataUnavailable | WorkerCannotStart):
        return message or "the analysis could not run on this data"
    return f"an internal error on the worker ({message})" if message else "an internal error on the worker"


class _PollInterrupted(BaseException):
    """Raised from a signal handler into an idle lease poll (BaseException: no library's `except
    Exception` around the HTTP call may swallow it)."""


class Worker:
    """One worker's loop. `cores` is what its provider offers (None: every core detected); `xp` the
    array module it computes with (default: `check_backend()`, which raises WorkerCannotStart)."""

    RETRY_MAX_S = 30.0

    def __init__(self, session: WorkerSession, object_store: Path, *, cores: int | None = None,
                 xp: ModuleType | None = None, tamper_results: bool = False, delay_s: float = 0.0,
                 progress_interval_s: float = 0.5, retry_first_s: float = 1.0, deliver_for_s: float = 120.0,
                 min_group_size: int = DEFAULT_MIN_GROUP_SIZE, start_wait_s: float | None = None) -> None:
        self.session = session
        self.object_store = object_store
        self.xp = xp if xp is not None else check_backend()
        self.tamper_results = tamper_results
        self.delay_s = delay_s
        self.progress_interval_s = progress_interval_s
        self.retry_first_s = retry_first_s
        self.deliver_for_s = deliver_for_s
        self.min_group_size = min_group_size
        self.start_wait_s = start_wait_s  # how long the first registration may wait for the service; None: for ever
        self._registered = False  # once registered, an unreachable service is a restart: wait for it for ever
        self.hardware = detect_hardware()
        if cores is not None and cores > self.hardware.cpu_cores:
            log.warning("%d cores offered but %d detected; registering %d", cores, self.hardware.cpu_cores,
                        self.hardware.cpu_cores)
        self.cores = min(cores, self.hardware.cpu_cores) if cores is not None else self.hardware.cpu_cores
        self._stop = threading.Event()
        self._polling = False  # in an idle lease poll, which a stop from a signal handler may cut short
        self._tables: dict[str, pa.Table] = {}
        # the leases this worker runs, named in every heartbeat (a tuple, replaced whole: the heartbeat
        # thread reads it while the lease loop changes it)
        self._held: tuple[str, ...] = ()
        self.jobs_done = 0
        self.fatal: WorkerCannotStart | None = None  # set when a re-registration is refused: the loop ends

    def hardware_body(self) -> dict[str, Any]:
        """What the registry shows: the backend jobs run on here and the cores offered (not detected)."""
        hw = self.hardware
        return {"backend": backend_name(self.xp), "cpu_cores": self.cores, "memory_bytes": hw.memory_bytes,
                "gpus": [{"index": g.index, "name": g.name, "memory_bytes": g.memory_bytes,
                          "compute_capability": g.compute_capability} for g in hw.gpus]}

    def stop(self, *, interrupt_poll: bool = False) -> None:
        """Stop after the job in hand. From a signal handler, `interrupt_poll` also ends an idle lease poll
        at once, which would otherwise hold the process for up to its wait (10 s); a lease granted in that
        instant goes with it and is re-leased once it expires, as after a crash."""
        self._stop.set()
        if interrupt_poll and self._polling:
            self._polling = False
            raise _PollInterrupted

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.session.heartbeat_interval_s):
            try:
                self.session.heartbeat(list(self._held))
            except ApiError as exc:
                if exc.status == 401:
                    self._reregister()
            except Exception as exc:  # the service is restarting: keep trying
                log.warning("heartbeat to %s failed: %s", self.session.base_url, exc)

    def _reregister(self) -> None:
        """Register again (the service restarted); a refusal ends the worker rather than a thread."""
        try:
            self._register()
        except WorkerCannotStart as exc:
            self.fatal = exc
            self.stop()

    def _register(self) -> None:
        """Register, retrying with backoff while the service is unreachable, restarting or not ready;
        WorkerCannotStart with the service's reason when it refuses (a 4xx: retrying won't help)."""
        delay_s = self.retry_first_s
        deadline = (time.monotonic() + self.start_wait_s
                    if self.start_wait_s is not None and not self._registered else None)
        while not self._stop.is_set():
            try:
                self.session.register(self.hardware_body(), list(self._held))
                log.info("registered as %s (provider %s, %s, %d cores)", self.session.worker_id,
                         self.session.provider, backend_name(self.xp), self.cores)
                self._registered = True
                return
            except Exception as exc:
                if not is_transient(exc):
                    detail = exc.problem.get("detail", exc) if isinstance(exc, ApiError) else exc
                    status = f"{exc.status} " if isinstance(exc, ApiError) else ""
                    raise WorkerCannotStart(f"the jobs service at {self.session.base_url} refused to register "
                                            f"worker {self.session.worker_id}: {status}{detail}") from exc
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobsServiceUnreachable(
                        f"no jobs service answered at {self.session.base_url} for {self.start_wait_s:g} s (last: "
                        f"{exc}); check --jobs-url (or DATACOOP_JOBS_URL) and that the jobs service runs "
                        "(`datacoop status`); DATACOOP_WORKER_START_WAIT_S sets how long to wait, 0 for ever") from exc
                if deadline is not None:
                    delay_s = max(min(delay_s, deadline - time.monotonic()), 0.0)
                left = f"; giving up in {max(deadline - time.monotonic(), 0):.0f} s (DATACOOP_WORKER_START_WAIT_S)" \
                    if deadline is not None else ""
                log.warning("cannot register with the jobs service at %s (%s); retrying in %.0f s%s",
                            self.session.base_url, exc, delay_s, left)
                self._stop.wait(delay_s)
                delay_s = min(delay_s * 2, self.RETRY_MAX_S)

    def run_forever(self, max_jobs: int | None = None) -> None:
        """Take and run jobs until stopped (or `max_jobs` are done). WorkerCannotStart when the jobs
        service refuses this worker's registration, at the start or later."""
        self._register()
        threading.Thread(target=self._heartbeats, daemon=True, name="heartbeats").start()
        self._lease_loop(max_jobs)
        if self.fatal is not None:
            raise self.fatal

    def _lease_loop(self, max_jobs: int | None) -> None:
        delay_s = self.retry_first_s
        while not self._stop.is_set() and (max_jobs is None or self.jobs_done < max_jobs):
            try:
                self._polling = True
                try:
                    offer = self.session.lease(wait_s=10)
                finally:
                    self._polling = False
            except _PollInterrupted:
                break
            except ApiError as exc:
                if exc.status == 401:
                    self._reregister()
                    continue
                if exc.status == 403:
                    log.error("the jobs service excludes this worker: %s", exc)
                    self._stop.wait(30)
                    continue
                log.warning("lease request to %s refused: %s", self.session.base_url, exc)
                self._stop.wait(delay_s)
                delay_s = min(delay_s * 2, self.RETRY_MAX_S)
                continue
            except Exception as exc:
                log.warning("jobs service at %s unreachable (%s); retrying in %.0f s", self.session.base_url,
                            exc, delay_s)
                self._stop.wait(delay_s)
                delay_s = min(delay_s * 2, self.RETRY_MAX_S)
                continue
            delay_s = self.retry_first_s
            if offer is not None:
                self.run_job(offer)
                self.jobs_done += 1

    def run_job(self, offer: dict[str, Any]) -> None:
        job_id, lease_id = offer["job_id"], offer["lease_id"]
        log.info("leased job %s (%s), lease %s", job_id, offer["analysis"], lease_id)
        self._held = (*self._held, lease_id)
        try:
            self._run_leased(offer, job_id, lease_id)
        finally:
            self._held = tuple(held for held in self._held if held != lease_id)

    def _run_leased(self, offer: dict[str, Any], job_id: str, lease_id: str) -> None:
        last_sent = [time.monotonic()]

        def progress(fraction: float) -> None:
            """At most one report per interval; none for the end (the result says it)."""
            now = time.monotonic()
            if fraction >= 1.0 or now - last_sent[0] < self.progress_interval_s:
                return
            last_sent[0] = now
            try:
                self.session.progress(job_id, lease_id, fraction)
            except ApiError as exc:
                if exc.status in LEASE_GONE:
                    raise LeaseLost(str(exc)) from exc
                log.warning("job %s: progress report refused (%s); going on", job_id, exc)
            except Exception as exc:  # the service is restarting: a missed report costs nothing
                log.warning("job %s: progress report not delivered (%s); going on", job_id, exc)

        try:
            held_until = time.monotonic() + self.delay_s
            while time.monotonic() < held_until and not self._stop.wait(self.progress_interval_s):
                progress(0.0)  # a test's slow job: alive, reporting, computing nothing yet
            key = offer["sha256"]
            table = self._tables.get(key)
            if table is None:
                table = self._tables[key] = load_verified(offer["location"], key, self.object_store)
            started = time.perf_counter()
            outcome = run_analysis(offer["analysis"], offer["params"], table, progress, schema=offer["columns"],
                                   xp=self.xp, min_group_size=min_group_size_for(offer, self.min_group_size))
            compute_ms = int((time.perf_counter() - started) * 1000)
        except LeaseLost as exc:
            log.warning("job %s: lease lost, result dropped (%s)", job_id, exc)
            return
        except (JobRefused, AnalysisFailed) as exc:  # the job's fault: any worker would fail the same way
            log.warning("job %s failed on its data: %s", job_id, exc)
            self._tell(job_id, lease_id, fault_detail(exc), job_fault=True)
            return
        except Exception as exc:  # this worker's fault (DataUnavailable, memory, backend, a bug): give it back
            log.warning("job %s: this worker cannot run it (%s); giving the lease back", job_id, exc,
                        exc_info=not isinstance(exc, DataUnavailable))
            self._tell(job_id, lease_id, fault_detail(exc), job_fault=False)
            return
        result = tamper(outcome.result) if self.tamper_results else outcome.result
        self._deliver(job_id, lease_id, result, outcome.plot_png, compute_ms)

    def _deliver(self, job_id: str, lease_id: str, result: dict[str, Any], plot_png: bytes | None,
                 compute_ms: int) -> None:
        """Report the result, retrying transient failures for up to `deliver_for_s`; a refusal, or a
        service that stays away, gives the lease back saying why."""
        try:
            answer = self._persist(lambda: self.session.report(job_id, lease_id, result, plot_png, compute_ms))
        except ApiError as exc:
            if exc.status in LEASE_GONE:
                log.warning("job %s: lease no longer ours, result dropped (%s)", job_id, exc)
                return
            reason = f"the jobs service refused this worker's result ({exc.status}: {exc.problem.get('detail', exc)})"
        except Exception as exc:
            reason = f"the worker could not deliver its result within {self.deliver_for_s:.0f} s ({exc})"
        else:
            log.info("job %s reported in %d ms of compute; job is %s", job_id, compute_ms, answer["status"])
            return
        log.warning("job %s: %s; giving the lease back", job_id, reason)
        self._tell(job_id, lease_id, reason, job_fault=False)

    def _persist(self, call: Callable[[], Any]) -> Any:
        """`call()`, repeated with backoff while it fails transiently, for up to `deliver_for_s`;
        the last error otherwise (a refusal at once)."""
        deadline = time.monotonic() + self.deliver_for_s
        delay_s = self.retry_first_s
        while True:
            try:
                return call()
            except Exception as exc:
                left_s = deadline - time.monotonic()
                if not is_transient(exc) or left_s <= 0:
                    raise
                log.warning("jobs service at %s unreachable (%s); retrying in %.0f s", self.session.base_url,
                            exc, min(delay_s, left_s))
                time.sleep(min(delay_s, left_s))
                delay_s = min(delay_s * 2, self.RETRY_MAX_S)

    def _tell(self, job_id: str, lease_id: str, detail: str, *, job_fault: bool) -> None:
        """Report the job's failure, or give its lease back, retrying while the service is away; a lease
        the service already took back (or a service gone for good) leaves nothing to do: it expires."""
        try:
            if job_fault:
                self._persist(lambda: self.session.fail(job_id, lease_id, detail))
            else:
                self._persist(lambda: self.session.release(job_id, lease_id, detail))
        except (ApiError, httpx.HTTPError, OSError) as exc:
            log.warning("could not tell the jobs service about job %s: %s", job_id, exc)
