"""HTTP clients of the jobs service: the worker's side (register, heartbeat, lease, report) and the
researcher's side (submit, status, results with the worker's signature checked)."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
from eth_account import Account

from datacoop.http import ApiError, check, segment
from services.consent import eip712
from services.jobs.domain import result_hash

__all__ = ["ApiError", "ResearcherJobs", "ResultInvalid", "WorkerSession", "check"]


class WorkerSession:
    """A worker's calls to the jobs service, signed with its provider's key where they must be."""

    def __init__(self, base_url: str, private_key: str, worker_id: str, timeout_s: float = 90) -> None:
        self.account = Account.from_key(private_key)
        self.provider: str = self.account.address
        self.worker_id = worker_id
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)
        self._domain: eip712.Domain | None = None  # fetched at registration: the service may not be up yet
        self.token = ""
        self.heartbeat_interval_s = 2.0

    @property
    def domain(self) -> eip712.Domain:
        if self._domain is None:
            self._domain = eip712.fetch_domain(self.http)
        return self._domain

    def sign(self, primary_type: str, message: dict[str, Any]) -> str:
        return eip712.sign(self.account, self.domain, primary_type, message)

    def register(self, hardware: dict[str, Any], held_leases: list[str] | None = None) -> dict[str, Any]:
        """Register (again: the service restarted or lost the session); the service ends this worker's active
        leases but those in `held_leases`, which it still runs."""
        issued_at = int(time.time())
        sig = self.sign("RegisterWorker", {"provider": self.provider, "workerId": self.worker_id,
                                           "issuedAt": issued_at})
        body = {"worker_id": self.worker_id, "provider": self.provider, "issued_at": issued_at,
                "signature": sig, "hardware": hardware, "held_leases": held_leases or []}
        answer = dict(check(self.http.post("/workers", json=body)))
        self.token = answer["token"]
        self.heartbeat_interval_s = float(answer["heartbeat_interval_s"])
        return answer

    @property
    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def heartbeat(self, leases: list[str] | None = None) -> None:
        """I am alive; with `leases`, those are the leases I still run, and one I no longer name (a lease
        granted to a poll whose answer never reached me) expires instead of living on with my heartbeats."""
        body = None if leases is None else {"leases": leases}
        check(self.http.post(f"/workers/{segment(self.worker_id)}/heartbeat", headers=self._auth, json=body))

    def lease(self, wait_s: float = 10) -> dict[str, Any] | None:
        resp = self.http.post(f"/workers/{segment(self.worker_id)}/lease", params={"wait_s": wait_s},
                              headers=self._auth)
        return None if resp.status_code == 204 else dict(check(resp))

    def progress(self, job_id: str, lease_id: str, fraction: float) -> None:
        check(self.http.post(f"/jobs/{segment(job_id)}/progress", headers=self._auth,
                             json={"worker_id": self.worker_id, "lease_id": lease_id, "fraction": fraction}))

    def fail(self, job_id: str, lease_id: str, detail: str) -> None:
        """The job can't run on its data (its fault, not this worker's): the job fails with `detail`."""
        check(self.http.post(f"/jobs/{segment(job_id)}/failure", headers=self._auth,
                             json={"worker_id": self.worker_id, "lease_id": lease_id, "detail": detail}))

    def release(self, job_id: str, lease_id: str, detail: str) -> None:
        """This worker can't run the job (its own fault): the lease goes back, the job to another worker."""
        check(self.http.post(f"/jobs/{segment(job_id)}/release", headers=self._auth,
                             json={"worker_id": self.worker_id, "lease_id": lease_id, "detail": detail}))

    def report(self, job_id: str, lease_id: str, result: dict[str, Any], plot_png: bytes | None,
               compute_ms: int) -> dict[str, Any]:
        digest = result_hash(result, plot_png)
        sig = self.sign("JobResult", {"provider": self.provider, "jobId": job_id, "leaseId": lease_id,
                                      "resultHash": "0x" + digest})
        body = {"worker_id": self.worker_id, "lease_id": lease_id, "result": result,
                "plot_png_b64": base64.b64encode(plot_png).decode() if plot_png is not None else None,
                "result_sha256": digest, "signature": sig, "compute_ms": compute_ms}
        return dict(check(self.http.post(f"/jobs/{segment(job_id)}/result", headers=self._auth, json=body)))


class ResultInvalid(ValueError):
    """A result whose hash or worker signature does not verify."""


def verify_result(answer: dict[str, Any], domain: eip712.Domain) -> None:
    """Recompute the result's hash and recover its signer: it must be the provider named."""
    plot = answer.get("_plot_png")
    if answer.get("has_plot") and plot is None:
        return  # the plot is part of the hash; call with `_plot_png` set to check it too
    digest = result_hash(answer["result"], plot)
    if digest != answer["result_sha256"]:
        raise ResultInvalid("the result does not hash to the result_sha256 the worker signed")
    message = {"provider": answer["provider"], "jobId": answer["job_id"], "leaseId": answer["lease_id"],
               "resultHash": "0x" + digest}
    signer = eip712.recover(eip712.digest(domain, "JobResult", message), answer["signature"])
    if signer != eip712.to_checksum(answer["provider"]):
        raise ResultInvalid(f"the result is signed by {signer}, not by provider {answer['provider']}")


class ResearcherJobs:
    """A researcher's calls: submit a job on a paid compute order, read its state and results."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 90) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s,
                                 headers={"authorization": f"Bearer {api_key}"})

    def submit(self, order_id: str, analysis: str, params: dict[str, Any], redundancy: int | None = None,
               job_id: str | None = None) -> dict[str, Any]:
        body = {"order_id": order_id, "analysis": analysis, "params": params, "redundancy": redundancy,
                "job_id": job_id}
        return dict(check(self.http.post("/jobs", json=body)))

    def status(self, job_id: str, wait_s: float = 0) -> dict[str, Any]:
        return dict(check(self.http.get(f"/jobs/{segment(job_id)}", params={"wait_s": wait_s})))

    def wait(self, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.status(job_id, wait_s=min(20.0, max(0.0, deadline - time.monotonic())))
            if job["status"] in ("completed", "failed") or time.monotonic() >= deadline:
                return job

    def result(self, job_id: str, verify: bool = True) -> dict[str, Any]:
        """The accepted result; with `verify`, its hash and the worker's signature are checked here."""
        answer = dict(check(self.http.get(f"/jobs/{segment(job_id)}/result")))
        if verify:
            plot = self.plot(job_id) if answer.get("has_plot") else None
            verify_result({**answer, "_plot_png": plot}, eip712.fetch_domain(self.http))
        return answer

    def plot(self, job_id: str) -> bytes:
        resp = self.http.get(f"/jobs/{segment(job_id)}/plot.png")
        if resp.status_code >= 400:
            check(resp)
        return resp.content
