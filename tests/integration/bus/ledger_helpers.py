"""What the bus tests repeat: a ledger topic with its DLQ, and a runner read to the end of the log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from datacoop.bus import ConsumerRunner, Publisher, ensure_topics
from datacoop.store import ProjectionStore
from datacoop.testing.ledger import LEDGER_REGISTRY, LedgerProjection
from infra.local import Broker


async def ledger_topic(broker: Broker, prefix: str, partitions: int = 1) -> str:
    """`<prefix>.ledger` and its `.dlq`, created; returns the topic's name."""
    topic = f"{prefix}.ledger"
    await ensure_topics(broker.bootstrap, [(topic, partitions), (f"{topic}.dlq", 1)])
    return topic


async def drain(runner: ConsumerRunner) -> None:
    """Poll until the runner has caught up with the log (fails rather than loop for ever)."""
    for _ in range(100):
        await runner.poll_once()
        if runner.caught_up.is_set():
            return
    raise AssertionError("runner never caught up")


async def read_back(broker: Broker, pub: Publisher, store: ProjectionStore, topic: str, name: str,
                    projection: Any = None, **options: Any) -> ConsumerRunner:
    """A ledger runner over `topic` into `store`, started, drained and stopped; returned for its counts.
    `options` go to ConsumerRunner (writes_topics, group_id, ...)."""
    runner = ConsumerRunner(bootstrap=broker.bootstrap, store=store, projection=projection or LedgerProjection(),
                            topics=[topic], consumer_name=name, dlq_publisher=pub, registry=LEDGER_REGISTRY,
                            **options)
    await runner.start()
    await drain(runner)
    await runner.stop()
    return runner


Records = list[ConsumerRecord[bytes, bytes]]


async def read_partition(bootstrap: str, topic: str, partition: int = 0, *,
                         until: Callable[[Records], bool]) -> Records:
    """The records of `topic`[`partition`] from offset 0, fetched until `until(records)` holds (Tansu's end
    offsets are wrong, so the caller says when it has what it needs); fails after 30 s."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        records: Records = []
        deadline = time.monotonic() + 30
        while not until(records):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}[{partition}] holds only {len(records)} records after 30 s")
            records += (await asyncio.wait_for(consumer.getmany(tp, timeout_ms=200), 30)).get(tp, [])
        return records
    finally:
        await consumer.stop()
