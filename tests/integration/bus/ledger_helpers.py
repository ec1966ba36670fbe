"""What the bus tests repeat: a ledger topic with its DLQ, and a runner read to the end of the log."""

from __future__ import annotations

from typing import Any

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
