"""A record is dead-lettered before the transaction that moves past it, so it is never skipped without its dead
letter; a batch read again (a failed COMMIT, a crash before it) must not make one bad record look like several:
every copy bears the same `dlq_id`, `datacoop dlq` lists the record once, and `dead_count` counts it once."""

from __future__ import annotations

import asyncio
import re

import duckdb
from typer.testing import CliRunner

from datacoop.bus import ConsumerRunner, Publisher, ensure_topics
from datacoop.bus.admin import standard_topics
from datacoop.bus.consumer import Delivery
from datacoop.bus.deadletters import dead_letter_id, read_dead_letters
from datacoop.cli import app
from datacoop.events.codec import header
from datacoop.store import ProjectionStore
from datacoop.testing.ledger import LEDGER_REGISTRY, LEDGER_SQL, LedgerProjection, make_envelope
from datacoop.topics import MEMBERS, qualified
from infra.local import Broker
from tests.integration.bus.ledger_helpers import drain, ledger_topic
from tests.integration.bus.test_dead_letters import _read_all


class DiskFull(LedgerProjection):
    """Fails its first `failures` batches as a full disk does: the runner retries the batch whole."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
        if self.failures:
            self.failures -= 1
            raise duckdb.IOException("No space left on device")
        super().apply(tx, deliveries)


async def _fail_a_batch(runner: ConsumerRunner) -> None:
    """Poll until a batch fails on the full disk, then rewind as run() does (the first polls may fetch nothing)."""
    for _ in range(100):
        try:
            await runner.poll_once()
        except duckdb.IOException:
            runner._rewind()
            return
    raise AssertionError("no batch failed")


def _runner(broker: Broker, pub: Publisher, store: ProjectionStore, topic: str,
            projection: LedgerProjection) -> ConsumerRunner:
    return ConsumerRunner(bootstrap=broker.bootstrap, store=store, projection=projection, topics=[topic],
                          consumer_name="copies", dlq_publisher=pub, registry=LEDGER_REGISTRY)


async def test_a_batch_retried_after_a_database_fault_dead_letters_its_record_once(
        broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        await pub.send_raw(topic, b"not json", key=b"a", headers=[])
        await pub.publish(topic, make_envelope("a", 1, 5))
        runner = _runner(broker, pub, store, topic, DiskFull(2))
        await runner.start()
        try:
            for _ in range(2):
                await _fail_a_batch(runner)
                assert runner.dead_count == 0, "nothing moved past the record yet"
            await drain(runner)
        finally:
            await runner.stop()
    assert store.conn.execute("SELECT total_units, events FROM totals").fetchone() == (5, 1)
    assert runner.dead_count == 1
    (dead,) = await _read_all(broker.bootstrap, f"{topic}.dlq", 1)
    assert header(dead.headers, "dlq_id") == dead_letter_id("copies", topic, 0, 0)


async def _dead_letter_twice(broker: Broker, topic: str) -> tuple[int, int]:
    """A process that sends its batch's bad record to the DLQ and dies before COMMIT; the next one reads the batch
    again. Returns each one's dead_count."""
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        await pub.send_raw(topic, b"{not json", key=b"a", headers=[("ce_type", b"datacoop.x.v1")])
        await pub.publish(topic, make_envelope("a", 1, 5))
        dying = _runner(broker, pub, store, topic, DiskFull(1))
        await dying.start()
        await _fail_a_batch(dying)
        await dying.stop()
        next_one = _runner(broker, pub, store, topic, LedgerProjection())
        await next_one.start()
        await drain(next_one)
        await next_one.stop()
    assert store.conn.execute("SELECT total_units, events FROM totals").fetchone() == (5, 1)
    return dying.dead_count, next_one.dead_count


def test_a_record_dead_lettered_again_by_the_next_process_is_listed_once(broker: Broker, prefix: str) -> None:
    asyncio.run(ensure_topics(broker.bootstrap, standard_topics(f"{prefix}.")))
    topic = qualified(f"{prefix}.", MEMBERS)
    assert asyncio.run(_dead_letter_twice(broker, topic)) == (0, 1)
    copies = asyncio.run(_read_all(broker.bootstrap, f"{topic}.dlq", 2))
    partition = int(header(copies[0].headers, "dlq_source_partition") or "")
    assert [header(c.headers, "dlq_id") for c in copies] == [dead_letter_id("copies", topic, partition, 0)] * 2

    (letter,) = asyncio.run(read_dead_letters(broker.bootstrap, [f"{topic}.dlq"]))[f"{topic}.dlq"]
    assert (letter.source, letter.copies, letter.offset) == (f"{topic}[{partition}]@0", 2, copies[0].offset)

    shown = CliRunner().invoke(app, ["dlq", "members", "--bootstrap", broker.bootstrap, "--topic-prefix", f"{prefix}."])
    assert shown.exit_code == 0, shown.output
    assert f"{topic}.dlq: 1 dead-lettered in 2 records (some sent again)" in shown.output, shown.output
    (row,) = [line for line in shown.output.splitlines() if f"{topic}[{partition}]@0" in line]
    assert re.search(r"DecodeError.*\b2\b", row), row


async def test_records_dead_lettered_before_dlq_id_are_collapsed_by_their_source(broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    old = [("dlq_error", b"DecodeError: x"), ("dlq_source_topic", topic.encode()), ("dlq_source_partition", b"0"),
           ("dlq_source_offset", b"7"), ("dlq_consumer", b"old")]
    async with Publisher(broker.bootstrap) as pub:
        for headers in (old, old, [*old[:3], ("dlq_source_offset", b"8"), old[4]], [*old, ("dlq_id", b"x")]):
            await pub.send_raw(f"{topic}.dlq", b"{", key=None, headers=headers)
    letters = (await read_dead_letters(broker.bootstrap, [f"{topic}.dlq"]))[f"{topic}.dlq"]
    assert [(d.source, d.copies) for d in letters] == [(f"{topic}[0]@7", 2), (f"{topic}[0]@8", 1),
                                                       (f"{topic}[0]@7", 1)]
