"""GET /workers tells a live worker from a stopped one: heartbeats are in memory (never events), the
registry shows the last one and whether it is within the lease TTL, and `eligible` never claims a
silent worker would get a job."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.jobs import domain
from services.jobs.api import build_router
from services.jobs.service import JobsService
from services.jobs.settings import JobsSettings

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PROVIDER, MARKED = "0x" + "11" * 20, "0x" + "22" * 20


def test_a_silent_worker_is_shown_not_live_and_not_eligible() -> None:
    now = {"t": T0}
    workers = {w: domain.Worker(w, provider=p, registered=True, marks=1 if p == MARKED else 0)
               for w, p in (("w-live", PROVIDER), ("w-stopped", PROVIDER), ("w-unseen", PROVIDER),
                            ("w-marked", MARKED))}
    ctx = SimpleNamespace(settings=JobsSettings(jobs_lease_ttl_s=10), heartbeats={}, heartbeat_at={},
                          names_leases=set(), lease_seen={}, clock=lambda: now["t"], ready=True,
                          projection=SimpleNamespace(workers=lambda: list(workers.values()), worker=workers.__getitem__,
                                                     provider_marks=lambda p: 1 if p == MARKED else 0))
    for name in ("heartbeat", "liveness", "touch_lease"):
        setattr(ctx, name, functools.partial(getattr(JobsService, name), ctx))
    app = FastAPI()
    app.include_router(build_router(ctx))
    client = TestClient(app)

    ctx.heartbeat("w-stopped")  # its last heartbeat, 30 s ago; then it stopped
    ctx.heartbeats["w-stopped"] -= 30
    now["t"] = T0 + timedelta(seconds=30)
    ctx.heartbeat("w-live")
    ctx.heartbeat("w-marked")
    shown = {w["worker_id"]: w for w in client.get("/workers").json()}
    assert {w: (v["live"], v["eligible"], v["excluded"]) for w, v in shown.items()} == {
        "w-live": (True, True, False), "w-stopped": (False, False, False), "w-unseen": (False, False, False),
        "w-marked": (True, False, True)}
    assert datetime.fromisoformat(shown["w-stopped"]["last_heartbeat_at"]) == T0
    assert datetime.fromisoformat(shown["w-live"]["last_heartbeat_at"]) == T0 + timedelta(seconds=30)
    assert shown["w-unseen"]["last_heartbeat_at"] is None, "not heard from since this service started"
    assert client.get("/workers/w-stopped").json() == shown["w-stopped"]
    ctx.heartbeats["w-live"] -= 11  # silent for longer than the lease TTL
    assert (client.get("/workers/w-live").json()["live"], client.get("/workers/w-live").json()["eligible"]) == \
        (False, False)
