"""The worker's edges: it runs only on the file that was published, the tamper switch bends numbers,
a fault is told apart as the job's (the job fails) or the worker's (the lease goes back), and a worker
that can't work stops at once instead of retrying forever."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.jobs.domain import agree
from services.worker import main as worker_main
from services.worker import worker as worker_module
from services.worker.analytics import HardwareInfo, backend, schema_of
from services.worker.client import ApiError
from services.worker.worker import (
    DataUnavailable,
    JobsServiceUnreachable,
    Worker,
    WorkerCannotStart,
    load_verified,
    resolve,
    tamper,
)


def test_a_file_that_differs_from_its_published_sha256_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v1.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0]}), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_verified(path.as_uri(), sha, tmp_path).num_rows == 2
    assert load_verified("v1.parquet", sha, tmp_path).num_rows == 2
    with pytest.raises(DataUnavailable, match="does not match"):
        load_verified(path.as_uri(), "0" * 64, tmp_path)
    with pytest.raises(DataUnavailable, match="s3://"):
        resolve("s3://bucket/v1.parquet", tmp_path)


def test_tampered_results_disagree_with_honest_ones() -> None:
    honest = {"counts": [1, 2], "mean": 3.5, "converged": True, "names": ["a"]}
    assert not agree(honest, tamper(honest))
    assert tamper(honest)["converged"] is True and tamper(honest)["names"] == ["a"]


# -- whose fault, and when to stop: a fake jobs service on the other side of the session ------------
class FakeSession:
    """What a Worker calls on its WorkerSession; register answers with the errors queued, then succeeds."""

    base_url = "http://127.0.0.1:9"
    worker_id = "w-1"
    provider = "0x" + "11" * 20
    heartbeat_interval_s = 60.0

    def __init__(self, register_errors: list[Exception] | None = None) -> None:
        self.register_errors = list(register_errors or [])
        self.calls: list[tuple[str, Any]] = []
        self.held_at_register: list[list[str] | None] = []

    def register(self, hardware: dict[str, Any], held_leases: list[str] | None = None) -> dict[str, Any]:
        self.calls.append(("register", hardware))
        self.held_at_register.append(held_leases)
        if self.register_errors:
            raise self.register_errors.pop(0)
        return {"token": "t", "heartbeat_interval_s": 60}

    def fail(self, job_id: str, lease_id: str, detail: str) -> None:
        self.calls.append(("fail", detail))

    def release(self, job_id: str, lease_id: str, detail: str) -> None:
        self.calls.append(("release", detail))

    def progress(self, job_id: str, lease_id: str, fraction: float) -> None:
        pass

    def report(self, job_id: str, lease_id: str, result: dict[str, Any], plot_png: bytes | None,
               compute_ms: int) -> dict[str, Any]:
        self.calls.append(("report", result))
        return {"status": "completed"}


def make_worker(tmp_path: Path, session: FakeSession | None = None, **kw: Any) -> Worker:
    return Worker(session or FakeSession(), tmp_path, xp=kw.pop("xp", np), retry_first_s=0.001, **kw)  # type: ignore[arg-type]


def offer_on(tmp_path: Path, table: pa.Table, analysis: str, params: dict[str, Any]) -> dict[str, Any]:
    path = tmp_path / "v1.parquet"
    pq.write_table(table, path)
    return {"job_id": "j1", "lease_id": "l1", "analysis": analysis, "params": params, "location": path.as_uri(),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "columns": schema_of(table)}


def test_a_backend_that_cannot_run_here_stops_the_worker_before_it_registers(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(backend, "_cupy_with_device", lambda: None)  # CuPy or its device missing, as on a CPU box
    monkeypatch.setenv(backend.BACKEND_ENV, "cupy")
    session = FakeSession()
    with pytest.raises(WorkerCannotStart, match="DATACOOP_WORKER_BACKEND.*no CUDA device"):
        Worker(session, tmp_path)  # type: ignore[arg-type]
    assert session.calls == []
    monkeypatch.setenv("DATACOOP_KEY", "ab" * 32)
    with pytest.raises(SystemExit) as stopped:
        worker_main.main(["--jobs-url", "http://127.0.0.1:9", "--worker-id", "w-1"])
    assert stopped.value.code == 2
    assert "cannot run: DATACOOP_WORKER_BACKEND" in capsys.readouterr().err


def test_the_backend_and_cores_registered_are_what_this_worker_computes_with(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(worker_module, "detect_hardware", lambda: HardwareInfo(cpu_cores=8, memory_bytes=1, gpus=()))
    assert make_worker(tmp_path, cores=1).hardware_body()["cpu_cores"] == 1
    assert make_worker(tmp_path, cores=64).hardware_body()["cpu_cores"] == 8, "no more cores than there are"
    assert make_worker(tmp_path).hardware_body() == {"backend": "numpy", "cpu_cores": 8, "memory_bytes": 1,
                                                     "gpus": []}


def test_a_refused_registration_stops_the_worker_with_the_services_reason(tmp_path: Path) -> None:
    refusal = ApiError(409, {"detail": "worker id w-1 belongs to provider 0xabc; choose another worker id"})
    session = FakeSession([refusal])
    with pytest.raises(WorkerCannotStart) as stopped:
        make_worker(tmp_path, session).run_forever()
    assert "http://127.0.0.1:9 refused to register worker w-1: 409 worker id w-1 belongs to provider 0xabc; " \
           "choose another worker id" in str(stopped.value)
    assert [name for name, _ in session.calls] == ["register"], "a refusal is not retried"


def test_registration_is_retried_while_the_service_is_unreachable_or_not_ready(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    session = FakeSession([httpx.ConnectError("[Errno 111] Connection refused"),
                           ApiError(503, {"detail": "still catching up"}), ApiError(502, {"detail": "bad gateway"})])
    with caplog.at_level(logging.WARNING, logger="datacoop.worker"):
        make_worker(tmp_path, session)._register()
    assert [name for name, _ in session.calls] == ["register"] * 4
    assert "jobs service at http://127.0.0.1:9 ([Errno 111] Connection refused); retrying in" in caplog.text


def test_a_first_registration_nobody_answers_ends_after_the_start_wait_but_a_restart_is_waited_for(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A wrong --jobs-url (nothing answers the first registration) ends the worker with a line naming the URL
    and the option; once registered, a service that goes away is a restart and is waited for."""
    refused = [httpx.ConnectError("[Errno 111] Connection refused") for _ in range(1000)]
    worker = make_worker(tmp_path, FakeSession(refused))
    worker.retry_first_s, worker.start_wait_s = 0.01, 0.2
    started = time.monotonic()
    with pytest.raises(JobsServiceUnreachable) as stopped:
        worker._register()
    assert 0.2 <= time.monotonic() - started < 2.0
    assert str(stopped.value).startswith("no jobs service answered at http://127.0.0.1:9 for 0.2 s (last: [Errno 111]")
    assert "check --jobs-url (or DATACOOP_JOBS_URL)" in str(stopped.value)
    assert "s (DATACOOP_WORKER_START_WAIT_S)" in caplog.text and "giving up in" in caplog.text, "says when it stops"

    session = FakeSession([])
    worker = make_worker(tmp_path, session)
    worker.retry_first_s, worker.start_wait_s = 0.01, 0.2
    worker._register()
    session.register_errors = [httpx.ConnectError("[Errno 111] Connection refused") for _ in range(6)]
    started = time.monotonic()
    worker._register()  # a re-registration after a restart outlasts the start wait (0.01 s doubling, 6 times)
    assert time.monotonic() - started > 0.5
    assert len(session.calls) == 8


def test_a_job_that_does_not_fit_its_data_fails_and_a_worker_fault_gives_the_lease_back(tmp_path: Path) -> None:
    table = pa.table({"age": [float(a) for a in range(30, 50)], "region": ["n", "s"] * 10})  # over the minimum group
    session = FakeSession()
    worker = make_worker(tmp_path, session)
    worker.run_job(offer_on(tmp_path, table, "histogram", {"column": "region"}))
    worker.run_job({**offer_on(tmp_path, table, "describe", {"columns": ["age"]}), "sha256": "0" * 64})

    class BrokenDevice:  # an array module that fails as a lost GPU would
        __name__ = "cupy"

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("CUDA error: device lost")

    make_worker(tmp_path, session, xp=BrokenDevice()).run_job(offer_on(tmp_path, table, "describe",
                                                                       {"columns": ["age"]}))
    (fail, job_detail), (release, data_detail), (release_again, device_detail) = session.calls
    assert (fail, release, release_again) == ("fail", "release", "release")
    assert job_detail.startswith("histogram column 'region' has type 'str', but this analysis needs a numeric")
    assert "does not match the published sha256" in data_detail
    assert device_detail == "an internal error on the worker (CUDA error: device lost)"
    for detail in (job_detail, data_detail, device_detail):
        assert not re.search(r"\b[A-Z][a-z]+(Error|Refused|Failed|Unavailable)\b", detail), detail


class HeartbeatSession(FakeSession):
    """Heartbeats often; the first one during a job answers 401 (the service restarted and forgot the token)."""

    heartbeat_interval_s = 0.01

    def __init__(self) -> None:
        super().__init__()
        self.heartbeats: list[list[str] | None] = []
        self.refused_once = False

    def heartbeat(self, leases: list[str] | None = None) -> None:
        self.heartbeats.append(leases)
        if leases and not self.refused_once:
            self.refused_once = True
            raise ApiError(401, {"detail": "unknown worker session; register again"})


def test_heartbeats_and_a_registration_mid_job_name_the_leases_the_worker_runs(tmp_path: Path) -> None:
    """A lease the worker does not name expires (one granted to a poll whose answer was lost), and one it
    names survives the service's restart: re-registering without naming it would end the job it is running."""
    session = HeartbeatSession()
    worker = make_worker(tmp_path, session, delay_s=0.3, progress_interval_s=0.01)
    beats = threading.Thread(target=worker._heartbeats, daemon=True)
    beats.start()
    table = pa.table({"age": [float(a) for a in range(30, 50)]})
    worker.run_job(offer_on(tmp_path, table, "describe", {"columns": ["age"]}))
    deadline = time.monotonic() + 5
    while session.heartbeats[-1] != [] and time.monotonic() < deadline:  # the next heartbeat names no lease
        beats.join(0.01)
    worker.stop()
    beats.join(5)
    assert ["l1"] in session.heartbeats, session.heartbeats
    assert None not in session.heartbeats, "every heartbeat names what it runs"
    assert session.held_at_register == [["l1"]], "the registration after the 401 keeps the running job's lease"
    assert [name for name, _ in session.calls] == ["register", "report"]
