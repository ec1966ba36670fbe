"""The publisher packs concurrent requests into shared record batches; every caller gets its own positions."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from datacoop.bus import Publisher, ensure_topics
from datacoop.events.codec import decode
from datacoop.testing.ledger import make_envelope
from infra.local import Broker


async def _read_all(bootstrap: str, topic: str, partitions: int, expected: int) -> dict[tuple[int, int], str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        found: dict[tuple[int, int], str] = {}
        while len(found) < expected:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 30)
            for tp, records in batch.items():
                for rec in records:
                    found[(tp.partition, rec.offset)] = decode(rec.value).id
        return found
    finally:
        await consumer.stop()


async def test_concurrent_requests_get_the_positions_their_events_landed_at(broker: Broker, prefix: str) -> None:
    topic = f"{prefix}.pub"
    await ensure_topics(broker.bootstrap, [(topic, 3)])
    requests = [[make_envelope(f"acct-{r % 25}", r * 10 + i + 1, i) for i in range(1 + r % 4)] for r in range(300)]
    async with Publisher(broker.bootstrap) as pub:
        results = await asyncio.gather(*[pub.publish_many(topic, envs) for envs in requests])
        assert await pub.publish_many(topic, []) == []
    total = sum(len(r) for r in requests)
    landed = await _read_all(broker.bootstrap, topic, 3, total)
    seen: set[tuple[int, int]] = set()
    for envelopes, positions in zip(requests, results, strict=True):
        assert len(positions) == len(envelopes)
        for env, pos in zip(envelopes, positions, strict=True):
            assert landed[(pos.partition, pos.offset)] == env.id, "a caller was given another event's position"
            # the partition is the default partitioner's (murmur2 of the subject), as aiokafka's send() picks
            assert pos.partition == DefaultPartitioner()(env.subject.encode(), [0, 1, 2], [])
            seen.add((pos.partition, pos.offset))
        offsets = [p.offset for p in positions]
        assert offsets == sorted(offsets), "one request's events (one subject) stay in order"
    assert len(seen) == total


async def test_an_oversized_event_is_refused_alone_and_the_publisher_goes_on(broker: Broker, prefix: str) -> None:
    topic = f"{prefix}.pub-big"
    await ensure_topics(broker.bootstrap, [(topic, 1)])
    async with Publisher(broker.bootstrap, max_request_size=64 * 1024) as pub:
        small = pub.publish(topic, make_envelope("a", 1, 1))
        big = pub.publish(topic, make_envelope("b", 1, 1, note="x" * 70_000))
        ok, refused = await asyncio.gather(small, big, return_exceptions=True)
        assert isinstance(refused, ValueError) and "object store" in str(refused)
        assert not isinstance(ok, BaseException) and ok.partition == 0
        again = await pub.publish(topic, make_envelope("a", 2, 2))
        assert again.offset == ok.offset + 1
