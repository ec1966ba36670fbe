"""Fixtures for the jobs e2e tests: play the marketplace and the anonymizer by publishing their events
(a researcher, a paid compute order, a published version whose small Parquet lies in a temp folder),
then run the jobs service and workers as processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer
from eth_account import Account

from datacoop.bus import Publisher
from datacoop.bus.admin import ensure_topics, standard_topics
from datacoop.events import Envelope
from datacoop.events.codec import decode
from datacoop.events.datasets import DatasetVersionPublished
from datacoop.events.orders import OrderPaid, OrderPlaced, ResearcherRegistered
from datacoop.events.registry import Event
from datacoop.topics import DATASETS, JOBS, ORDERS, qualified
from infra.local import REPO_ROOT, Broker
from services.worker.analytics import schema_of
from services.worker.client import ResearcherJobs
from tests.e2e.conftest import ServiceProcess

DATASET = "health-survey"


def small_table(rows: int = 300, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, rows)
    income = age * 900.0 + rng.normal(0, 5000, rows)
    return pa.table({"age": age, "income": income, "bmi": rng.normal(25, 4, rows),
                     "region": rng.choice(["north", "south"], rows)})


def publish(bootstrap: str, prefix: str, items: list[tuple[str, str, Event]]) -> None:
    """(topic, subject, event) as their writers would append them (seq 1 per new subject)."""
    async def go() -> None:
        await ensure_topics(bootstrap, standard_topics(prefix))
        seqs: dict[str, int] = {}
        async with Publisher(bootstrap) as pub:
            for topic, subject, ev in items:
                seqs[subject] = seqs.get(subject, 0) + 1
                env = Envelope(source="datacoop/test", type=ev.type_name(), subject=subject, seq=seqs[subject],
                               data=ev.model_dump(mode="json"))
                await pub.publish(qualified(prefix, topic), env)
    asyncio.run(go())


def read_topic(bootstrap: str, topic: str) -> list[Envelope]:
    """Every envelope on `topic` (all partitions), in per-partition order."""
    async def go() -> list[Envelope]:
        from aiokafka import TopicPartition
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                await consumer.topics()
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, 0)
            out: list[Envelope] = []
            for _ in range(10):
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    out += [decode(r.value) for r in records]
                positions = [await consumer.position(tp) for tp in tps]
                if all((consumer.highwater(tp) or 0) <= pos for tp, pos in zip(tps, positions, strict=True)):
                    break
            return out
        finally:
            await consumer.stop()
    return asyncio.run(go())


@dataclass
class Scenario:
    broker: Broker
    prefix: str
    tmp: Path
    jobs: ServiceProcess
    api_key: str
    researcher_id: str
    order_id: str
    table: pa.Table
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def researcher(self) -> ResearcherJobs:
        return ResearcherJobs(self.jobs.url, self.api_key)

    def start_worker(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        key = Account.create().key.hex()
        full = {**os.environ, "DATACOOP_KEY": key, "DATACOOP_LOG_JSON": "false", "DATACOOP_WORKER_CORES": "1",
                **env}
        log = open(self.tmp / f"worker-{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "services.worker.main", "--jobs-url", self.jobs.url,
                                 "--worker-id", name], env=full, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def worker_log(self, name: str) -> str:
        return (self.tmp / f"worker-{name}.log").read_text(errors="replace")[-3000:]

    def wait_for(self, check: Callable[[], bool], timeout_s: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; jobs log:\n{self.jobs.log()}")

    def job_events(self, job_id: str) -> list[Envelope]:
        return [e for e in read_topic(self.broker.bootstrap, qualified(self.prefix, JOBS)) if e.subject == job_id]

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def play_market(bootstrap: str, prefix: str, tmp: Path, table: pa.Table, offer: str = "compute",
                paid: bool = True) -> tuple[str, str, str]:
    """Publish a researcher, an order (paid) and the version; returns (api_key, researcher_id, order_id)."""
    objects = tmp / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    path = objects / f"{DATASET}-v1.parquet"
    if not path.exists():
        pq.write_table(table, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    api_key = "dcr_" + uuid.uuid4().hex
    researcher_id, order_id = f"r-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    now = datetime.now(UTC)
    buyer = Account.create().address
    items: list[tuple[str, str, Event]] = [
        (DATASETS, DATASET, DatasetVersionPublished(
            dataset_id=DATASET, version=1, purpose="health-research", categories=["health"],
            location=path.as_uri(), sha256=sha, rows=table.num_rows, suppressed_rows=0, k=5, l_diversity=2.0,
            privacy_model="distinct", information_loss=0.1, epsilon=1.0, columns=schema_of(table),
            contributor_weights={Account.create().address: 3}, published_at=now)),
        (ORDERS, researcher_id, ResearcherRegistered(
            researcher_id=researcher_id, name="Dr Test", wallet=buyer,
            api_key_sha256=hashlib.sha256(api_key.encode()).hexdigest(), registered_at=now)),
        (ORDERS, order_id, OrderPlaced(order_id=order_id, researcher_id=researcher_id, buyer=buyer,
                                       dataset_id=DATASET, version=1, offer=offer, price_units=5_000_000,
                                       placed_at=now, expires_at=now + timedelta(hours=1))),
    ]
    if paid:
        items.append((ORDERS, order_id, OrderPaid(order_id=order_id, payment_event_id=str(uuid.uuid4()),
                                                  amount_units=5_000_000, tx_hash="0x" + "ab" * 32, paid_at=now)))
    publish(bootstrap, prefix, items)
    return api_key, researcher_id, order_id


@pytest.fixture
def scenario(broker: Broker, prefix: str, tmp_path: Path, launch: Callable[..., ServiceProcess],
             service_env: dict[str, str]) -> Iterator[Scenario]:
    table = small_table()
    api_key, researcher_id, order_id = play_market(broker.bootstrap, f"{prefix}.", tmp_path, table)
    jobs = launch("jobs", {**service_env, "DATACOOP_JOBS_LEASE_TTL_S": "1.5", "DATACOOP_JOBS_SWEEP_INTERVAL_S": "0.2",
                           "DATACOOP_JOBS_FEE_UNITS": "250000"})
    sc = Scenario(broker, f"{prefix}.", tmp_path, jobs, api_key, researcher_id, order_id, table)
    yield sc
    sc.stop()
