"""Fixtures for the jobs e2e tests: play the marketplace and the anonymizer by publishing their events
(services/jobs/stand_in.py: a researcher, a paid compute order, a published version whose small
Parquet lies in a temp folder), then run the jobs service and workers as processes."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from aiokafka import AIOKafkaConsumer

from datacoop.events import Envelope
from datacoop.events.codec import decode
from datacoop.topics import JOBS, qualified
from infra.local import Broker
from services.jobs.stand_in import publish_compute_market
from services.worker.client import ResearcherJobs
from services.worker.launch import spawn_worker
from tests.e2e.conftest import ServiceProcess
from tests.e2e.waiting import wait_for


def small_table(rows: int = 300, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, rows)
    income = age * 900.0 + rng.normal(0, 5000, rows)
    return pa.table({"age": age, "income": income, "bmi": rng.normal(25, 4, rows),
                     "region": rng.choice(["north", "south"], rows)})


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
        proc = spawn_worker(self.jobs.url, name, self.tmp / f"worker-{name}.log",
                            env={"DATACOOP_LOG_JSON": "false", **env})
        self.workers.append(proc)
        return proc

    def worker_log(self, name: str) -> str:
        return (self.tmp / f"worker-{name}.log").read_text(errors="replace")[-3000:]

    def wait_for(self, check: Callable[[], bool], what: str = "condition", timeout_s: float = 30) -> None:
        wait_for(check, what, timeout_s, interval_s=0.1, detail=lambda: f"jobs log:\n{self.jobs.log()}")

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


@pytest.fixture
def scenario(broker: Broker, prefix: str, tmp_path: Path, launch: Callable[..., ServiceProcess],
             service_env: dict[str, str]) -> Iterator[Scenario]:
    table = small_table()
    access = publish_compute_market(broker.bootstrap, f"{prefix}.", tmp_path / "objects", table)
    jobs = launch("jobs", {**service_env, "DATACOOP_JOBS_LEASE_TTL_S": "1.5", "DATACOOP_JOBS_SWEEP_INTERVAL_S": "0.2",
                           "DATACOOP_JOBS_FEE_UNITS": "250000"})
    sc = Scenario(broker, f"{prefix}.", tmp_path, jobs, access.api_key, access.researcher_id, access.order_id, table)
    yield sc
    sc.stop()
