"""HTTP routes of the jobs service: researchers submit and read jobs; workers register, heartbeat,
take leases and report progress and signed results. Workers write nothing to Kafka themselves."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from pydantic import AfterValidator, BaseModel, Field

from datacoop.events.jobs import WorkerRegistered
from datacoop.events.types import HexSignature, WalletAddress
from datacoop.kit.problems import DomainError, NotFound, NotReady, Unauthorized, bearer, secret_sha256
from services.consent import eip712
from services.jobs import domain
from services.worker.analytics import CATALOG, JobRefused, validate_job

ID_RULE = "1 to 64 of A-Z a-z 0-9 . _ : -, not only dots"


def _not_only_dots(value: str) -> str:
    """`.` and `..` (any dots-only id) are path segments a URL normalises away: such a job or worker
    could be created but never reached again."""
    if value.strip(".") == "":
        raise ValueError(f"'{value}' is only dots, which a URL path would drop or read as a parent folder; "
                         f"an id is {ID_RULE}")
    return value


IdStr = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$", description=ID_RULE),
                  AfterValidator(_not_only_dots)]
MAX_INT = 2**63 - 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PLOT_BYTES = 4 * 1024 * 1024  # a plot, decoded
# what a result may weigh in its event: canonical result JSON plus the plot's base64 (the log takes
# events under 8 MiB, and the event carries the signature, ids and envelope besides)
MAX_RESULT_EVENT_BYTES = 7 * 1024 * 1024


class SubmitBody(BaseModel):
    order_id: str = Field(min_length=1, description="a paid order with offer `compute`")
    analysis: str = Field(min_length=1, description="one of GET /analyses")
    params: dict[str, Any] = Field(default_factory=dict)
    redundancy: int | None = Field(None, ge=1, le=2, description="2: two workers must agree (a third on mismatch)")
    job_id: IdStr | None = Field(None, description="choose one to make a retried submit idempotent-safe")


GpuValue = (Annotated[str, Field(max_length=200)] | Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]
            | Annotated[float, Field(allow_inf_nan=False)] | bool | None)  # JSON (and the log) has no NaN
Gpu = Annotated[dict[Annotated[str, Field(min_length=1, max_length=64)], GpuValue], Field(max_length=16)]


class Hardware(BaseModel):
    backend: Literal["numpy", "cupy"]
    cpu_cores: int = Field(ge=1, le=65_536)
    memory_bytes: int = Field(ge=0, le=MAX_INT)
    gpus: list[Gpu] = Field(default_factory=list, max_length=64,
                            description="up to 64 GPUs, each up to 16 fields (index, name, memory_bytes, "
                                        "compute_capability...) of short strings or numbers")


class RegisterBody(BaseModel):
    worker_id: IdStr
    provider: WalletAddress
    issued_at: int = Field(ge=0, le=MAX_INT, description="unix seconds, signed in RegisterWorker")
    signature: HexSignature
    hardware: Hardware
    held_leases: list[IdStr] = Field(default_factory=list, max_length=64,
                                     description="leases this worker still runs (a re-registration after a "
                                                 "lost session): they stay; its other active leases end")


class HeartbeatBody(BaseModel):
    leases: list[IdStr] | None = Field(None, max_length=64,
                                       description="the leases this worker still runs: only these stay live; "
                                                   "leave out to keep all of them live (older workers)")


class LeaseRef(BaseModel):
    worker_id: IdStr
    lease_id: IdStr


class ProgressBody(LeaseRef):
    fraction: float = Field(ge=0, le=1)


class ResultBody(LeaseRef):
    result: dict[str, Any]
    plot_png_b64: str | None = Field(None, max_length=(MAX_PLOT_BYTES + 2) // 3 * 4,
                                     description=f"a PNG of at most {MAX_PLOT_BYTES:,} bytes, base64")
    result_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: HexSignature
    compute_ms: int = Field(ge=0, le=MAX_INT)


class FailureBody(LeaseRef):
    detail: str = Field(min_length=1, max_length=2000)


def current_researcher(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The researcher whose marketplace API key is in `Authorization: Bearer <key>` (the jobs service
    reads the key's SHA-256 from ResearcherRegistered on the orders topic); 401 otherwise."""
    api_key = bearer(authorization, "API key")
    found = request.app.state.runtime.projection.researcher_by_key_hash(secret_sha256(api_key))
    if found is None:
        raise Unauthorized("unknown API key; use the key the marketplace gave you (POST /researchers there)",
                           slug="bad-api-key")
    return str(found.researcher_id)


Researcher = Annotated[str, Depends(current_researcher)]


def job_view(job: domain.Job) -> dict[str, Any]:
    return {"job_id": job.job_id, "status": job.status, "order_id": job.order_id, "dataset_id": job.dataset_id,
            "version": job.version, "analysis": job.analysis, "params": job.params, "redundancy": job.redundancy,
            "progress": job.progress, "submitted_at": job.submitted_at, "finished_at": job.finished_at,
            "failure": job.failure, "fee_units": job.fee_units, "provider": job.provider,
            "accepted_workers": list(job.accepted_workers), "result_sha256": job.accepted_sha256,
            "leases": [{"lease_id": lease.lease_id, "worker_id": lease.worker_id, "state": lease.state,
                        "leased_at": lease.leased_at} for lease in job.leases],
            "reports": [{"worker_id": r.worker_id, "result_sha256": r.result_sha256} for r in job.reports]}


def worker_view(w: domain.Worker, max_marks: int, provider_marks: int, last_heartbeat_at: datetime | None = None,
                live: bool = False) -> dict[str, Any]:
    """A worker's record (from its events) and its liveness (in memory: `last_heartbeat_at`, when this
    process last heard from it, None since a restart until it calls again; `live`, heard from within the
    lease TTL). `excluded`: its provider's marks bar it from jobs. `eligible`: it would get a job open now,
    i.e. live and not excluded (a stopped worker is registered for ever, but eligible for nothing)."""
    excluded = not w.eligible(max_marks, provider_marks)
    return {"worker_id": w.worker_id, "provider": w.provider, "backend": w.backend, "cpu_cores": w.cpu_cores,
            "memory_bytes": w.memory_bytes, "gpus": list(w.gpus), "accepted": w.accepted, "marks": w.marks,
            "provider_marks": provider_marks, "reputation": w.reputation, "last_heartbeat_at": last_heartbeat_at,
            "live": live, "excluded": excluded, "eligible": live and not excluded}


def _decode_plot(plot_png_b64: str | None) -> bytes | None:
    """The plot's bytes: base64 of a PNG (its signature checked) of at most MAX_PLOT_BYTES; 422 otherwise."""
    if plot_png_b64 is None:
        return None
    try:
        plot = base64.b64decode(plot_png_b64, validate=True)
    except binascii.Error as exc:
        raise DomainError("plot_png_b64 is not base64; send the PNG's bytes base64-encoded", status=422,
                          slug="invalid-request") from exc
    if len(plot) > MAX_PLOT_BYTES:
        raise DomainError(f"the plot is {len(plot):,} bytes; a plot may be at most {MAX_PLOT_BYTES:,}", status=413,
                          slug="plot-too-large")
    if not plot.startswith(PNG_SIGNATURE):
        raise DomainError("plot_png_b64 is not a PNG (its bytes don't start with the PNG signature); send a PNG, "
                          "or no plot", status=422, slug="plot-not-png")
    return plot


def build_router(ctx: Any) -> APIRouter:
    """`ctx` is the JobsService (projection, writers, settings, leases, clock)."""
    router = APIRouter()
    settings = ctx.settings

    def ready() -> None:
        if not ctx.ready:
            raise NotReady("the jobs service is still catching up with the log; retry in a moment")

    async def run(job_id: str, cmd: domain.Command, **kw: Any) -> list[Any]:
        ready()
        return list(await ctx.execute(job_id, cmd, **kw))

    def worker_session(worker_id: str, authorization: str | None, leases: list[str] | None = None) -> domain.Worker:
        token_hash = secret_sha256(bearer(authorization, "worker token"))
        if ctx.tokens.get(worker_id) != token_hash:
            owner = next((w for w, h in ctx.tokens.items() if h == token_hash), None)
            if owner is not None:
                raise Unauthorized(f"this token belongs to worker {owner}, not {worker_id}; send the worker id "
                                   "the token was issued to (or register this one with POST /workers)",
                                   slug="token-of-another-worker")
            raise Unauthorized(f"no session for worker {worker_id} (the jobs service restarted?); "
                               "register again with POST /workers", slug="unknown-worker-session")
        ctx.heartbeat(worker_id, leases)
        return ctx.projection.worker(worker_id)  # type: ignore[no-any-return]

    def provider_marks(worker: domain.Worker) -> int:
        return ctx.projection.provider_marks(worker.provider)  # type: ignore[no-any-return]

    def own_job(job_id: str, researcher_id: str) -> domain.Job:
        job = ctx.projection.job(job_id)
        if not job.submitted or job.researcher_id != researcher_id:
            raise NotFound(f"no job {job_id} of yours; submit one with `datacoop job submit` (POST /jobs)")
        return job  # type: ignore[no-any-return]

    @router.get("/analyses", tags=["jobs"])
    async def analyses() -> dict[str, Any]:
        """The catalog of vetted analytics a job may run, with each one's parameter schema."""
        return {name: a.params.model_json_schema() for name, a in sorted(CATALOG.items())}

    @router.post("/jobs", status_code=status.HTTP_201_CREATED, tags=["jobs"])
    async def submit(body: SubmitBody, researcher_id: Researcher) -> dict[str, Any]:
        """Submit a job on the version a paid `compute` order bought; parameters are checked now."""
        ready()
        order = ctx.projection.order(body.order_id)
        if order is None or not order.placed or order.researcher_id != researcher_id:
            raise NotFound(f"no order {body.order_id} of yours is known here; place and pay a compute order "
                           "at the marketplace first", slug="unknown-order")
        if order.offer != "compute":
            raise DomainError(f"order {body.order_id} is a {order.offer} order; jobs need a `compute` order",
                              status=422, slug="not-a-compute-order")
        if order.refunded:
            raise DomainError(f"order {body.order_id}'s payment was refunded, so it buys no jobs; place and pay a "
                              "new compute order (`datacoop order`)", status=402, slug="order-refunded")
        if not order.paid:
            raise DomainError(f"order {body.order_id} is not paid yet; pay it, then submit", status=402,
                              slug="order-unpaid")
        version = ctx.projection.version(order.dataset_id, order.version)
        if version is None:
            raise DomainError(f"dataset {order.dataset_id} version {order.version} is not published here yet; "
                              "retry shortly", status=409, slug="version-unknown")
        try:
            validate_job(body.analysis, body.params, version.columns, version.rows)
        except JobRefused as exc:
            raise DomainError(str(exc), status=422, slug="job-refused") from exc
        job_id = body.job_id or ctx.new_id()
        cmd = domain.Submit(job_id, order.order_id, researcher_id, order.dataset_id, order.version, body.analysis,
                            dict(body.params), body.redundancy or settings.jobs_default_redundancy,
                            settings.jobs_fee_units)
        await run(job_id, cmd)
        return job_view(ctx.projection.job(job_id))

    @router.get("/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str, researcher_id: Researcher,
                      wait_s: Annotated[float, Query(ge=0, le=60)] = 0) -> dict[str, Any]:
        """The job's state; `wait_s` long-polls until it is completed or failed."""
        own_job(job_id, researcher_id)
        await ctx.wait_until(lambda: ctx.projection.job(job_id).status in ("completed", "failed"),
                             min(wait_s, settings.jobs_max_wait_s))
        return job_view(ctx.projection.job(job_id))

    @router.get("/jobs/{job_id}/result", tags=["jobs"])
    async def get_result(job_id: str, researcher_id: Researcher) -> dict[str, Any]:
        """The accepted result with the worker's signature over its hash (verify it yourself)."""
        job = own_job(job_id, researcher_id)
        report = domain.accepted_report(job)
        if report is None:
            then = ("; it has no result and never will: submit a new job (`datacoop job submit`) after fixing what "
                    "the reason says" if job.status == "failed" else "; results come once it is completed")
            raise DomainError(f"job {job_id} is {job.status}" + (f" ({job.failure})" if job.failure else "") + then,
                              status=409, slug="no-result-yet")
        return {"job_id": job_id, "analysis": job.analysis, "result": report.result,
                "result_sha256": report.result_sha256, "has_plot": report.plot_png_b64 is not None,
                "signature": report.signature, "provider": report.provider, "worker_id": report.worker_id,
                "lease_id": report.lease_id, "workers": list(job.accepted_workers), "compute_ms": report.compute_ms}

    @router.get("/jobs/{job_id}/plot.png", tags=["jobs"], response_class=Response)
    async def get_plot(job_id: str, researcher_id: Researcher) -> Response:
        """The accepted result's plot (histogram, PCA, k-means)."""
        report = domain.accepted_report(own_job(job_id, researcher_id))
        if report is None or report.plot_png_b64 is None:
            raise NotFound(f"job {job_id} has no plot (not completed, or its analysis draws none)")
        return Response(base64.b64decode(report.plot_png_b64), media_type="image/png")

    # -- workers -----------------------------------------------------------------------------
    @router.get("/eip712", tags=["workers"])
    async def get_eip712() -> dict[str, Any]:
        """The EIP-712 domain and types a provider's wallet signs RegisterWorker and JobResult with."""
        return {"domain": ctx.domain_sep.as_dict(),
                "types": {n: [{"name": f, "type": t} for f, t in eip712.TYPES[n]]
                          for n in ("RegisterWorker", "JobResult")}}

    @router.post("/workers", tags=["workers"])
    async def register(body: RegisterBody) -> dict[str, Any]:
        """Register (or re-register after a restart) a worker, signed by its provider's payout key;
        returns the session token the worker sends with every later call."""
        ready()
        provider = eip712.to_checksum(body.provider)
        signer = ctx.recover("RegisterWorker", {"provider": provider, "workerId": body.worker_id,
                                                "issuedAt": body.issued_at}, body.signature)
        if signer != provider:
            raise Unauthorized(f"registration is signed by {signer}, not by provider {provider}", slug="wrong-signer")
        age_s = abs(ctx.clock().timestamp() - body.issued_at)
        if age_s > settings.jobs_registration_window_s:
            raise Unauthorized(f"registration issuedAt is {age_s:.0f} s from now; sign a fresh one",
                               slug="stale-registration")
        event = WorkerRegistered(worker_id=body.worker_id, provider=provider, backend=body.hardware.backend,
                                 cpu_cores=body.hardware.cpu_cores, memory_bytes=body.hardware.memory_bytes,
                                 gpus=body.hardware.gpus, issued_at=body.issued_at, signature=body.signature,
                                 registered_at=ctx.clock())
        await ctx.register_worker(event, body.held_leases)
        token = ctx.new_token(body.worker_id)
        return {"worker_id": body.worker_id, "token": token, "lease_ttl_s": settings.jobs_lease_ttl_s,
                "heartbeat_interval_s": settings.jobs_lease_ttl_s / 4}

    @router.post("/workers/{worker_id}/heartbeat", tags=["workers"])
    async def heartbeat(worker_id: str, body: HeartbeatBody | None = None,
                        authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """I am alive: keeps this worker's leases live (kept in memory, not written as events); with
        `{"leases": [...]}` only the leases named stay live, and one it no longer names expires."""
        worker_session(worker_id, authorization, body.leases if body is not None else None)
        return {"ok": True, "lease_ttl_s": settings.jobs_lease_ttl_s}

    @router.post("/workers/{worker_id}/lease", tags=["workers"], response_model=None)
    async def lease(worker_id: str, request: Request, authorization: Annotated[str | None, Header()] = None,
                    wait_s: Annotated[float, Query(ge=0, le=60)] = 10) -> dict[str, Any] | Response:
        """Take a job: long-polls up to `wait_s`; 204 when none came."""
        ready()
        worker = worker_session(worker_id, authorization)
        marks = provider_marks(worker)
        if not worker.eligible(settings.jobs_max_marks, marks):
            raise DomainError(f"worker {worker_id}'s provider {worker.provider} returned {marks} result(s) the "
                              "majority contradicted; none of its worker ids gets more jobs", status=403,
                              slug="worker-excluded")
        offered = await ctx.take_lease(worker_id, min(wait_s, settings.jobs_max_wait_s), gone=request.is_disconnected)
        return offered if offered is not None else Response(status_code=204)

    @router.post("/jobs/{job_id}/progress", status_code=202, tags=["workers"])
    async def progress(job_id: str, body: ProgressBody,
                       authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        worker_session(body.worker_id, authorization)
        await run(job_id, domain.ReportProgress(body.worker_id, body.lease_id, body.fraction))
        ctx.touch_lease(body.lease_id)
        return {"ok": True}

    @router.post("/jobs/{job_id}/failure", tags=["workers"])
    async def failure(job_id: str, body: FailureBody,
                      authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The job can't run on its data (its parameters don't fit, or the data can't support the
        analysis): one failed run. The job fails with the reason once enough runs agree (redundancy 1:
        at once; redundancy 2: two providers' runs, a result elsewhere calling a third run)."""
        worker_session(body.worker_id, authorization)
        await run(job_id, domain.ReportFailure(body.worker_id, body.lease_id, body.detail))
        return {"status": ctx.projection.job(job_id).status}

    @router.post("/jobs/{job_id}/release", tags=["workers"])
    async def release(job_id: str, body: FailureBody,
                      authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """This worker can't run the job (its own fault: the file unreadable from there, no memory...):
        the lease ends now and the job goes to another worker, not back to this one."""
        worker_session(body.worker_id, authorization)
        ready()
        await ctx.release(job_id, domain.ReleaseLease(body.worker_id, body.lease_id, body.detail))
        return {"status": ctx.projection.job(job_id).status}

    @router.post("/jobs/{job_id}/result", tags=["workers"])
    async def result(job_id: str, body: ResultBody,
                     authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """A signed result: its hash is recomputed, its signature must recover the worker's provider,
        and its lease must still be live (a late result of an expired lease is refused, 410)."""
        worker = worker_session(body.worker_id, authorization)
        plot = _decode_plot(body.plot_png_b64)
        try:
            size = len(domain.canonical_json(body.result)) + len(body.plot_png_b64 or "")
        except ValueError as exc:  # NaN or Infinity: not JSON, and no hash can be agreed on
            raise DomainError(f"the result holds a number JSON can't carry (NaN or Infinity): {exc}; send null or "
                              "a finite number", status=422, slug="result-not-json") from exc
        if size > MAX_RESULT_EVENT_BYTES:
            raise DomainError(f"the result and plot are {size:,} bytes; at most {MAX_RESULT_EVENT_BYTES:,} fit the "
                              "event log. The lease is still yours: give it back (POST /jobs/{job_id}/release)",
                              status=413, slug="result-too-large")
        if domain.result_hash(body.result, plot) != body.result_sha256:
            raise DomainError("result_sha256 does not match the result and plot sent", status=422,
                              slug="hash-mismatch")
        message = {"provider": worker.provider, "jobId": job_id, "leaseId": body.lease_id,
                   "resultHash": "0x" + body.result_sha256}
        signer = ctx.recover("JobResult", message, body.signature)
        if signer != worker.provider:
            raise Unauthorized(f"result is signed by {signer}, not by worker {body.worker_id}'s provider "
                               f"{worker.provider}", slug="wrong-signer")
        cmd = domain.ReportResult(body.worker_id, body.lease_id, worker.provider, body.result, body.plot_png_b64,
                                  body.result_sha256, body.signature, body.compute_ms)
        await run(job_id, cmd)
        return {"status": ctx.projection.job(job_id).status}

    def registry_view(w: domain.Worker) -> dict[str, Any]:
        return worker_view(w, settings.jobs_max_marks, provider_marks(w), *ctx.liveness(w.worker_id))

    @router.get("/workers", tags=["workers"])
    async def list_workers() -> list[dict[str, Any]]:
        """Every registered worker with its record, reputation and liveness (`live`, `last_heartbeat_at`);
        `eligible` only while it is live and not excluded."""
        return [registry_view(w) for w in ctx.projection.workers()]

    @router.get("/workers/{worker_id}", tags=["workers"])
    async def get_worker(worker_id: str) -> dict[str, Any]:
        w = ctx.projection.worker(worker_id)
        if not w.registered:
            raise NotFound(f"no worker {worker_id}; workers register with POST /workers")
        return registry_view(w)

    return router
