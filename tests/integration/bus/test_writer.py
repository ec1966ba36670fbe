"""The command path: per-subject lock, gap-free seq, produce-and-wait, apply with the offset."""

from __future__ import annotations

import asyncio

from datacoop.bus import ConsumerRunner, Publisher, ensure_topics
from datacoop.command import Writer
from datacoop.store import ProjectionStore
from datacoop.testing.ledger import LEDGER_REGISTRY, LEDGER_SQL, AmountRecorded, LedgerProjection
from infra.local import Broker


async def test_concurrent_commands_on_one_subject_get_gap_free_seqs_and_land_in_the_projection(
        broker: Broker, prefix: str) -> None:
    topic = f"{prefix}.ledger"
    await ensure_topics(broker.bootstrap, [(topic, 3), (f"{topic}.dlq", 1)])
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t")
        results = await asyncio.gather(*[
            writer.execute("acct-1", lambda i=i: [AmountRecorded(amount_units=i)]) for i in range(1, 41)])
        await writer.execute("acct-2", lambda: [AmountRecorded(amount_units=5), AmountRecorded(amount_units=6)])
    seqs = sorted(d.envelope.seq for r in results for d in r)
    assert seqs == list(range(1, 41))
    assert store.last_seq(topic, "acct-1") == 40
    assert store.last_seq(topic, "acct-2") == 2
    assert store.conn.execute("SELECT total_units FROM totals WHERE subject='acct-1'").fetchone() == (820,)
    offsets = store.conn.execute("SELECT partition, \"offset\" FROM ledger WHERE subject='acct-1'").fetchall()
    assert len({p for p, _ in offsets}) == 1, "one subject's events must share a partition"
    assert sorted(o for _, o in offsets) == sorted({o for _, o in offsets})


async def test_own_events_read_back_are_not_applied_twice_and_rebuild_restores_seq(
        broker: Broker, prefix: str) -> None:
    topic = f"{prefix}.ledger"
    await ensure_topics(broker.bootstrap, [(topic, 3), (f"{topic}.dlq", 1)])
    store = ProjectionStore(":memory:", LEDGER_SQL)
    rebuilt = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t")
        for amount in (3, 4, 5):
            await writer.execute("acct", lambda a=amount: [AmountRecorded(amount_units=a)])
        for target in (store, rebuilt):
            runner = ConsumerRunner(bootstrap=broker.bootstrap, store=target, projection=LedgerProjection(),
                                    topics=[topic], consumer_name="svc", dlq_publisher=pub,
                                    registry=LEDGER_REGISTRY, writes_topics=frozenset([topic]))
            await runner.start()
            while not runner.caught_up.is_set():
                await runner.poll_once()
            await runner.stop()
    for target in (store, rebuilt):
        assert target.conn.execute("SELECT total_units, events FROM totals").fetchone() == (12, 3)
        assert target.last_seq(topic, "acct") == 3
    assert store.own_committed == {}, "the consumer read its writer's events back and let go of their ids"
