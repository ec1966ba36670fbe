"""Nothing is stranded by the jobs service going away for a moment: a progress report is best-effort,
a result is retried on transient errors, and a result refused or never delivered gives the lease back."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.worker.analytics import schema_of
from services.worker.client import ApiError
from services.worker.worker import Worker

REFUSED = httpx.ConnectError("[Errno 111] Connection refused")


class FlakySession:
    """A WorkerSession whose calls fail with the errors queued per call name, then succeed."""

    base_url = "http://127.0.0.1:9"
    worker_id = "w-1"
    heartbeat_interval_s = 60.0

    def __init__(self, **errors: list[Exception]) -> None:
        self.errors = errors
        self.calls: list[tuple[str, Any]] = []

    def _call(self, name: str, payload: Any) -> None:
        self.calls.append((name, payload))
        queued = self.errors.get(name)
        if queued:
            raise queued.pop(0)

    def progress(self, job_id: str, lease_id: str, fraction: float) -> None:
        self._call("progress", fraction)

    def fail(self, job_id: str, lease_id: str, detail: str) -> None:
        self._call("fail", detail)

    def release(self, job_id: str, lease_id: str, detail: str) -> None:
        self._call("release", detail)

    def report(self, job_id: str, lease_id: str, result: dict[str, Any], plot_png: bytes | None,
               compute_ms: int) -> dict[str, Any]:
        self._call("report", result)
        return {"status": "completed"}


def _run(tmp_path: Path, session: FlakySession, analysis: str = "describe", **kw: Any) -> list[str]:
    table = pa.table({"age": np.arange(50.0)})
    path = tmp_path / "v1.parquet"
    pq.write_table(table, path)
    offer = {"job_id": "j1", "lease_id": "l1", "analysis": analysis, "params": {"columns": ["age"]},
             "location": path.as_uri(), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
             "columns": schema_of(table)}
    worker = Worker(session, tmp_path, xp=np, retry_first_s=0.001, **kw)  # type: ignore[arg-type]
    worker.run_job(offer)
    return [name for name, _ in session.calls]


def test_a_progress_report_that_cannot_be_delivered_does_not_abort_the_job(tmp_path: Path) -> None:
    session = FlakySession(progress=[REFUSED, ApiError(503, {"detail": "restarting"})])
    calls = _run(tmp_path, session, delay_s=0.05, progress_interval_s=0.01)
    assert calls.count("progress") >= 2 and calls[-1] == "report"
    assert "release" not in calls


def test_a_result_is_retried_while_the_service_restarts(tmp_path: Path) -> None:
    session = FlakySession(report=[REFUSED, ApiError(503, {"detail": "not ready"}), ApiError(502, {})])
    assert _run(tmp_path, session) == ["report"] * 4


def test_a_refused_result_gives_the_lease_back_with_the_reason(tmp_path: Path) -> None:
    session = FlakySession(report=[ApiError(422, {"detail": "result_sha256 does not match"})])
    assert _run(tmp_path, session) == ["report", "release"]
    assert session.calls[-1][1] == ("the jobs service refused this worker's result (422: result_sha256 does not "
                                    "match)")


def test_a_result_never_delivered_gives_the_lease_back_once_the_service_is_back(tmp_path: Path) -> None:
    session = FlakySession(report=[REFUSED] * 1000, release=[REFUSED])
    calls = _run(tmp_path, session, deliver_for_s=0.05)
    assert calls[-2:] == ["release", "release"] and set(calls[:-2]) == {"report"}
    assert "could not deliver its result within 0 s" in session.calls[-1][1]


def test_a_lease_the_service_took_back_is_not_given_back_again(tmp_path: Path) -> None:
    session = FlakySession(report=[ApiError(409, {"detail": "lease l1 is no longer active"})])
    assert _run(tmp_path, session) == ["report"]


def test_a_failure_report_is_retried_while_the_service_restarts(tmp_path: Path) -> None:
    table = pa.table({"age": np.arange(50.0)})
    session = FlakySession(fail=[REFUSED])
    path = tmp_path / "v1.parquet"
    pq.write_table(table, path)
    offer = {"job_id": "j1", "lease_id": "l1", "analysis": "kmeans", "params": {"columns": ["age"], "k": 40},
             "location": path.as_uri(), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
             "columns": schema_of(table)}
    Worker(session, tmp_path, xp=np, retry_first_s=0.001).run_job(offer)  # type: ignore[arg-type]
    assert [name for name, _ in session.calls] == ["fail", "fail"]
    assert "k=40 is out of range" in session.calls[-1][1]
