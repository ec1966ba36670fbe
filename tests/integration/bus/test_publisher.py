"""The publisher packs concurrent requests into shared record batches; every caller gets its own positions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner

from datacoop.bus import Publisher, ensure_topics
from datacoop.bus.publisher import _Request
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


@pytest.mark.parametrize("batch_bytes", [2 * 1024 * 1024, 8 * 1024])  # one batch per partition, or many
async def test_concurrent_requests_get_the_positions_their_events_landed_at(
        broker: Broker, prefix: str, batch_bytes: int) -> None:
    topic = f"{prefix}.pub{batch_bytes}"
    await ensure_topics(broker.bootstrap, [(topic, 3)])
    requests = [[make_envelope(f"acct-{r % 25}", r * 10 + i + 1, i) for i in range(1 + r % 4)] for r in range(300)]
    async with Publisher(broker.bootstrap, max_batch_size=batch_bytes) as pub:
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


async def test_a_partition_that_takes_no_batches_fails_only_its_own_requests(broker: Broker, prefix: str) -> None:
    topic = f"{prefix}.pub-sick"
    await ensure_topics(broker.bootstrap, [(topic, 3)])
    subjects = [f"acct-{i}" for i in range(30)]
    sick = DefaultPartitioner()(subjects[0].encode(), [0, 1, 2], [])
    async with Publisher(broker.bootstrap) as pub:
        assert pub._producer is not None
        real_send_batch = pub._producer.send_batch

        async def send_batch(batch: Any, topic_: str, *, partition: int) -> Any:
            if partition == sick:
                raise KafkaTimeoutError(f"partition {partition} has no leader")
            return await real_send_batch(batch, topic_, partition=partition)

        pub._producer.send_batch = send_batch  # type: ignore[method-assign]
        outcomes = await asyncio.gather(*[pub.publish(topic, make_envelope(s, 1, 1)) for s in subjects],
                                        return_exceptions=True)
    for subject, outcome in zip(subjects, outcomes, strict=True):
        if DefaultPartitioner()(subject.encode(), [0, 1, 2], []) == sick:
            assert isinstance(outcome, KafkaTimeoutError)
        else:
            assert not isinstance(outcome, BaseException), f"{subject} failed for another partition: {outcome!r}"


async def test_a_failed_or_cancelled_batch_ack_fails_its_requests_with_a_kafka_error() -> None:
    loop = asyncio.get_running_loop()
    requests = [_Request("t", [], loop.create_future(), [None], 1) for _ in range(2)]
    failed: asyncio.Future[Any] = loop.create_future()
    failed.set_exception(KafkaTimeoutError("no ack"))
    Publisher._acked(failed, [(requests[0], 0)], partition=0)
    cancelled: asyncio.Future[Any] = loop.create_future()
    cancelled.cancel()
    Publisher._acked(cancelled, [(requests[1], 0)], partition=1)
    with pytest.raises(KafkaTimeoutError):
        await requests[0].done
    with pytest.raises(KafkaError, match="cancelled"):
        await requests[1].done

