"""How jobs, workers and what the jobs service reads (researchers, compute orders, dataset versions)
land in DuckDB, and the queries the API needs.

One row per entity holding its state as JSON (jobs and workers evolved by the domain). Every row is
also held in memory (jobs are few and small next to the rows they analyse): the maps change only
when the transaction that wrote them commits, and are loaded back from the table on start.
A compute order whose payment was refunded (settlement's PaymentRefunded, on datacoop.payouts, which the
service reads for it) is unpaid for good, whichever of OrderPaid and the refund comes first: no job can be
submitted on it (jobs already submitted run on).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import duckdb
from pydantic import TypeAdapter

from datacoop.bus.consumer import Delivery
from datacoop.events.datasets import DatasetVersionPublished
from datacoop.events.jobs import JobCompleted, WorkerMarked, WorkerRegistered
from datacoop.events.orders import OrderPaid, OrderPlaced, ResearcherRegistered
from datacoop.events.payouts import PaymentRefunded
from datacoop.store import ProjectionStore
from datacoop.topics import JOBS
from services.jobs.domain import Job, Worker, evolve, evolve_worker, provider_marks

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS jobs_entities (
    kind VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    state JSON NOT NULL,
    PRIMARY KEY (kind, id)
);
"""


@dataclass(frozen=True)
class Researcher:
    researcher_id: str
    api_key_sha256: str


@dataclass(frozen=True)
class ComputeOrder:
    order_id: str
    researcher_id: str = ""
    dataset_id: str = ""
    version: int = 0
    offer: str = ""
    price_units: int = 0
    placed: bool = False
    paid: bool = False
    refunded: bool = False  # the payment went back (PaymentRefunded): never paid again, whatever came before


@dataclass(frozen=True)
class Version:
    dataset_id: str
    version: int
    location: str
    sha256: str
    rows: int
    columns: dict[str, str]


_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "job": TypeAdapter(Job), "worker": TypeAdapter(Worker), "researcher": TypeAdapter(Researcher),
    "order": TypeAdapter(ComputeOrder), "version": TypeAdapter(Version),
}


class JobsProjection:
    def __init__(self, store: ProjectionStore) -> None:
        self.store = store
        self.entities: dict[str, dict[str, Any]] = {kind: {} for kind in _ADAPTERS}
        rows = store.conn.execute("SELECT kind, id, state FROM jobs_entities").fetchall()
        for kind, key, state in rows:
            self.entities[kind][key] = _ADAPTERS[kind].validate_json(state)

    # -- reads -------------------------------------------------------------------------------
    def job(self, job_id: str) -> Job:
        return self.entities["job"].get(job_id) or Job(job_id)

    def worker(self, worker_id: str) -> Worker:
        return self.entities["worker"].get(worker_id) or Worker(worker_id)

    def order(self, order_id: str) -> ComputeOrder | None:
        return self.entities["order"].get(order_id)

    def version(self, dataset_id: str, version: int) -> Version | None:
        return self.entities["version"].get(f"{dataset_id}@{version}")

    def researcher_by_key_hash(self, key_hash: str) -> Researcher | None:
        return self.entities["researcher"].get(key_hash)

    def open_jobs(self) -> list[Job]:
        """Jobs that want another run, oldest first."""
        jobs = [j for j in self.entities["job"].values() if j.open_slots > 0]
        return sorted(jobs, key=lambda j: j.submitted_at)

    def running_jobs(self) -> list[Job]:
        return [j for j in self.entities["job"].values() if j.active_leases]

    def workers(self) -> list[Worker]:
        return sorted(self.entities["worker"].values(), key=lambda w: w.worker_id)

    def provider_marks(self, provider: str) -> int:
        """Marks of all the worker ids of `provider` (marks and exclusion apply to the provider)."""
        return provider_marks(self.entities["worker"].values(), provider)

    def eligible(self, worker: Worker, max_marks: int) -> bool:
        return worker.eligible(max_marks, self.provider_marks(worker.provider))

    # -- writes ------------------------------------------------------------------------------
    def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
        staged: dict[tuple[str, str], Any] = {}

        def get(kind: str, key: str, default: Any) -> Any:
            return staged.get((kind, key)) or self.entities[kind].get(key) or default

        for d in deliveries:
            ev, subject = d.event, d.envelope.subject
            if isinstance(ev, WorkerRegistered):
                staged[("worker", ev.worker_id)] = evolve_worker(get("worker", ev.worker_id, Worker(ev.worker_id)), ev)
            elif isinstance(ev, ResearcherRegistered):
                staged[("researcher", ev.api_key_sha256)] = Researcher(ev.researcher_id, ev.api_key_sha256)
            elif isinstance(ev, OrderPlaced):
                order = get("order", ev.order_id, ComputeOrder(ev.order_id))
                staged[("order", ev.order_id)] = replace(
                    order, researcher_id=ev.researcher_id, dataset_id=ev.dataset_id, version=ev.version,
                    offer=ev.offer, price_units=ev.price_units, placed=True)
            elif isinstance(ev, OrderPaid | PaymentRefunded):
                order = get("order", ev.order_id, ComputeOrder(ev.order_id))
                refunded = order.refunded or isinstance(ev, PaymentRefunded)
                staged[("order", ev.order_id)] = replace(order, paid=not refunded, refunded=refunded)
            elif isinstance(ev, DatasetVersionPublished):
                key = f"{ev.dataset_id}@{ev.version}"
                staged[("version", key)] = Version(ev.dataset_id, ev.version, ev.location, ev.sha256, ev.rows,
                                                   dict(ev.columns))
            elif d.topic.endswith(JOBS):
                staged[("job", subject)] = evolve(get("job", subject, Job(subject)), ev)
                touched = ev.workers if isinstance(ev, JobCompleted) else \
                    [ev.worker_id] if isinstance(ev, WorkerMarked) else []
                for worker_id in touched:
                    staged[("worker", worker_id)] = evolve_worker(get("worker", worker_id, Worker(worker_id)), ev)
        if not staged:
            return
        keys = list(staged)
        tx.execute(
            "INSERT OR REPLACE INTO jobs_entities SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
            "unnest(?::JSON[])",
            [[k for k, _ in keys], [i for _, i in keys],
             [_ADAPTERS[k].dump_json(staged[(k, i)]).decode() for k, i in keys]])

        def remember() -> None:
            for (kind, key), value in staged.items():
                self.entities[kind][key] = value

        self.store.on_commit(remember)
