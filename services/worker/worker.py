"""The worker loop: register, heartbeat, take a lease, fetch the version's Parquet (checksum checked),
run the analysis, sign and report the result. Rows never leave this process: only results do.

Test-only switches (environment): DATACOOP_WORKER_TAMPER=1 perturbs every result before signing it
(a dishonest worker, for redundancy to catch); DATACOOP_WORKER_DELAY_S holds each job that long
before computing (so a test can kill a worker mid-job).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from datacoop import objectstore
from services.worker.analytics import AnalysisFailed, JobRefused, detect_hardware, run_analysis
from services.worker.client import ApiError, WorkerSession

log = logging.getLogger("datacoop.worker")


class LeaseLost(Exception):
    """The jobs service no longer holds this lease for us: stop the job, report nothing."""


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


class _PollInterrupted(BaseException):
    """Raised from a signal handler into an idle lease poll (BaseException: no library's `except
    Exception` around the HTTP call may swallow it)."""


class Worker:
    def __init__(self, session: WorkerSession, object_store: Path, *, tamper_results: bool = False,
                 delay_s: float = 0.0, progress_interval_s: float = 0.5) -> None:
        self.session = session
        self.object_store = object_store
        self.tamper_results = tamper_results
        self.delay_s = delay_s
        self.progress_interval_s = progress_interval_s
        self.hardware = detect_hardware()
        self._stop = threading.Event()
        self._polling = False  # in an idle lease poll, which a stop from a signal handler may cut short
        self._tables: dict[str, pa.Table] = {}
        self.jobs_done = 0

    def hardware_body(self) -> dict[str, Any]:
        hw = self.hardware
        return {"backend": hw.backend, "cpu_cores": hw.cpu_cores, "memory_bytes": hw.memory_bytes,
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
                self.session.heartbeat()
            except ApiError as exc:
                if exc.status == 401:
                    self._register()
            except Exception as exc:  # the service is restarting: keep trying
                log.warning("heartbeat failed: %s", exc)

    def _register(self) -> None:
        while not self._stop.is_set():
            try:
                self.session.register(self.hardware_body())
                log.info("registered as %s (provider %s, %s)", self.session.worker_id, self.session.provider,
                         self.hardware.backend)
                return
            except Exception as exc:
                log.warning("registration failed (%s); retrying", exc)
                self._stop.wait(1.0)

    def run_forever(self, max_jobs: int | None = None) -> None:
        self._register()
        threading.Thread(target=self._heartbeats, daemon=True, name="heartbeats").start()
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
                    self._register()
                    continue
                if exc.status == 403:
                    log.error("the jobs service excludes this worker: %s", exc)
                    self._stop.wait(30)
                    continue
                log.warning("lease request refused: %s", exc)
                self._stop.wait(1.0)
                continue
            except Exception as exc:
                log.warning("jobs service unreachable (%s); retrying", exc)
                self._stop.wait(1.0)
                continue
            if offer is not None:
                self.run_job(offer)
                self.jobs_done += 1

    def run_job(self, offer: dict[str, Any]) -> None:
        job_id, lease_id = offer["job_id"], offer["lease_id"]
        log.info("leased job %s (%s), lease %s", job_id, offer["analysis"], lease_id)
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
                if exc.status in (404, 409, 410):
                    raise LeaseLost(str(exc)) from exc

        try:
            held_until = time.monotonic() + self.delay_s
            while time.monotonic() < held_until and not self._stop.wait(self.progress_interval_s):
                progress(0.0)  # a test's slow job: alive, reporting, computing nothing yet
            key = offer["sha256"]
            table = self._tables.get(key)
            if table is None:
                table = self._tables[key] = load_verified(offer["location"], key, self.object_store)
            started = time.perf_counter()
            outcome = run_analysis(offer["analysis"], offer["params"], table, progress, schema=offer["columns"])
            compute_ms = int((time.perf_counter() - started) * 1000)
            result = tamper(outcome.result) if self.tamper_results else outcome.result
            answer = self.session.report(job_id, lease_id, result, outcome.plot_png, compute_ms)
            log.info("job %s reported in %d ms of compute; job is %s", job_id, compute_ms, answer["status"])
        except LeaseLost as exc:
            log.warning("job %s: lease lost, result dropped (%s)", job_id, exc)
        except ApiError as exc:
            log.warning("job %s: result refused: %s", job_id, exc)
        except Exception as exc:  # AnalysisFailed, JobRefused, DataUnavailable, or a bug here
            log.warning("job %s failed: %s", job_id, exc, exc_info=not isinstance(exc, AnalysisFailed | JobRefused
                                                                                  | DataUnavailable))
            try:
                self.session.fail(job_id, lease_id, f"{type(exc).__name__}: {exc}")
            except ApiError as api_exc:
                log.warning("could not report the failure: %s", api_exc)
