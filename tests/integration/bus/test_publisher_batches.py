"""One request's events in one partition travel in one record batch, so they land all or none: a request
that would straddle a batch boundary starts the next batch, one larger than `max_batch_size` gets a batch
of its own, and one larger than any batch the broker may take is split over batches, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaError, KafkaTimeoutError, RequestTimedOutError
from aiokafka.producer.message_accumulator import BatchBuilder

from datacoop.bus import Publisher, ensure_topics
from datacoop.bus.publisher import _BATCH_HEADER, Position, _record_bound
from datacoop.events.codec import decode, encode
from datacoop.events.envelope import Envelope
from datacoop.testing.ledger import make_envelope
from infra.local import Broker
from tests.integration.bus.ledger_helpers import read_partition

BATCH = 2048  # max_batch_size here: four of these tests' records (~470 bytes each) fit in a batch, five do not


def _request(subject: str, size: int) -> list[Envelope]:
    return [make_envelope(subject, seq, seq) for seq in range(1, size + 1)]


async def _log(bootstrap: str, topic: str) -> list[str]:
    """The ids in partition 0 of `topic`, in offset order, up to a marker event published now (Tansu's end
    offsets are wrong, so the marker says where the log ended)."""
    marker = make_envelope("marker", 1, 0)
    async with Publisher(bootstrap) as pub:
        await pub.publish(topic, marker)
    ids: list[str] = []

    def to_the_marker(records: list[Any]) -> bool:
        ids[:] = [decode(record.value).id for record in records]
        return marker.id in ids

    await read_partition(bootstrap, topic, until=to_the_marker)
    return ids[:ids.index(marker.id)]


class _Batches:
    """Wraps the producer's `send_batch`: the (base offset, record count) of every batch the broker took.
    The hand-overs numbered in `refuse` are refused, as by a partition without a leader; those in `lose`
    are taken but never sent, their ack failing as after exhausted retries."""

    def __init__(self, pub: Publisher, refuse: tuple[int, ...] = (), lose: tuple[int, ...] = ()) -> None:
        assert pub._producer is not None
        self.real = pub._producer.send_batch
        self.refuse = refuse
        self.lose = lose
        self.handed_over = 0
        self.acked: list[tuple[int, int]] = []
        pub._producer.send_batch = self.send_batch  # type: ignore[method-assign]

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        self.handed_over += 1
        if self.handed_over in self.refuse:
            raise KafkaTimeoutError(f"partition {partition} has no leader")
        if self.handed_over in self.lose:
            lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            lost.set_exception(RequestTimedOutError("retries exhausted"))
            return lost
        count = batch.record_count()
        ack = await self.real(batch, topic, partition=partition)
        ack.add_done_callback(lambda f: f.exception() or self.acked.append((f.result().offset, count)))
        return ack

    def batch_of(self, position: Position) -> tuple[int, int]:
        return next(b for b in self.acked if b[0] <= position.offset < b[0] + b[1])


async def test_a_request_that_would_straddle_a_batch_boundary_goes_whole_into_the_next_batch(
        broker: Broker, prefix: str) -> None:
    topic = f"{prefix}.whole"
    await ensure_topics(broker.bootstrap, [(topic, 1)])
    # packed record by record, b's events would straddle the first two batches: [a a b b] [b c c d] [e e e]
    requests = [_request("a", 2), _request("b", 3), _request("c", 2), _request("d", 1), _request("e", 3)]
    async with Publisher(broker.bootstrap, max_batch_size=BATCH) as pub:
        batches = _Batches(pub)
        futures = [pub.submit(topic, envelopes) for envelopes in requests]  # one turn: one flush
        results = await asyncio.gather(*futures)
    for envelopes, positions in zip(requests, results, strict=True):
        assert len({batches.batch_of(p) for p in positions}) == 1, f"{envelopes[0].subject}'s events straddle batches"
        assert [p.offset for p in positions] == list(range(positions[0].offset, positions[0].offset + len(positions)))
    assert len(batches.acked) < sum(len(r) for r in requests), "requests still share batches"
    assert await _log(broker.bootstrap, topic) == [e.id for envelopes in requests for e in envelopes]


async def test_a_request_larger_than_a_batch_gets_a_batch_of_its_own(broker: Broker, prefix: str) -> None:
    topic = f"{prefix}.big"
    await ensure_topics(broker.bootstrap, [(topic, 1)])
    requests = [_request("a", 1), _request("big", 6), _request("c", 1)]
    async with Publisher(broker.bootstrap, max_batch_size=BATCH) as pub:
        batches = _Batches(pub)
        results = await asyncio.gather(*[pub.submit(topic, envelopes) for envelopes in requests])
    big = results[1]
    assert batches.batch_of(big[0]) == (big[0].offset, 6), "the large request's events are one batch, alone"
    assert await _log(broker.bootstrap, topic) == [e.id for envelopes in requests for e in envelopes]


@pytest.mark.parametrize("fault", ["second batch refused at hand-over", "first batch's ack failed"])
async def test_a_failed_batch_fails_its_requests_and_none_of_their_events_land(
        broker: Broker, prefix: str, fault: str) -> None:
    topic = f"{prefix}.failed"
    await ensure_topics(broker.bootstrap, [(topic, 1)])
    requests = [_request("a", 2), _request("b", 3), _request("c", 2), _request("d", 1), _request("e", 2)]
    async with Publisher(broker.bootstrap, max_batch_size=BATCH) as pub:
        if fault.startswith("second"):
            _Batches(pub, refuse=(2,))
        else:
            _Batches(pub, lose=(1,))
        outcomes = await asyncio.gather(*[pub.submit(topic, envelopes) for envelopes in requests],
                                        return_exceptions=True)
    failed = [isinstance(outcome, KafkaError) for outcome in outcomes]
    assert any(failed) and not all(failed)
    landed = await _log(broker.bootstrap, topic)
    for envelopes, lost in zip(requests, failed, strict=True):
        mine = [e.id for e in envelopes if e.id in landed]
        assert mine == ([] if lost else [e.id for e in envelopes]), f"{envelopes[0].subject} landed in part"


async def test_a_request_too_large_for_any_batch_is_split_over_batches_in_order(broker: Broker, prefix: str) -> None:
    """What no batch may hold (max_request_size) cannot land all or none: it goes out over several batches, in
    order, every event landing (a 100,000-row upload to the vault is such a request). One that fits a batch of
    its own, over max_batch_size, still travels whole."""
    topic = f"{prefix}.huge"
    await ensure_topics(broker.bootstrap, [(topic, 1)])
    async with Publisher(broker.bootstrap, max_batch_size=BATCH, max_request_size=8 * 1024) as pub:
        batches = _Batches(pub)
        many = [make_envelope(f"s{n}", 1, n) for n in range(20)]  # different subjects in the one partition
        one = _request("one", 20)
        fits = _request("fits", 12)  # over max_batch_size, under the limit: a batch of its own
        positions = await asyncio.gather(pub.publish_many(topic, many), pub.publish_many(topic, one))
        whole = await pub.publish_many(topic, fits)
    assert all(len({batches.batch_of(p) for p in ps}) > 1 for ps in positions), "each went out in several batches"
    assert len({batches.batch_of(p) for p in whole}) == 1
    assert await _log(broker.bootstrap, topic) == [e.id for e in [*many, *one, *fits]]


def test_the_size_bound_holds_for_every_record_a_batch_of_that_size_takes() -> None:
    records = [encode(make_envelope(f"subject-{n}" * (n % 7 + 1), n + 1, n, "é" * (n * 37 % 1500))) for n in range(200)]
    for start in range(0, 200, 20):
        chunk = records[start:start + 20]
        batch = BatchBuilder(_BATCH_HEADER + sum(_record_bound(r) for r in chunk), 0)
        for record in chunk:
            assert batch.append(key=record.key, value=record.value, timestamp=None, headers=record.headers) is not None
