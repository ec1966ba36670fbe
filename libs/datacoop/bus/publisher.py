"""Publishing envelopes: acks=all, key = subject, `ce_type`/`ce_id` headers, ack awaited.

Concurrent callers share record batches: `publish_many` queues its records and a flusher, on the
next turn of the event loop, packs everything queued into one record batch per partition and hands
those to the producer (aiokafka's `send_batch`); while batches are with the broker, new requests
queue up and go in the next flush. One batch per event would make the broker slow (it lists every
stored batch on each fetch) and costs aiokafka's per-message path (a future, a Python murmur2, an
append) for every event; here a subject's partition is hashed once and cached, and a record costs
one append to a batch. Each caller gets its events' positions once every batch holding them is
acknowledged; the events of one request stay in order (same subject -> same partition).

A request's events in one partition travel in one record batch, which the broker appends whole or
not at all, so they land all or none (a command, one subject, never lands half in the log; events of
one request in different partitions cannot be made atomic without transactions, which the local
broker lacks). A request whose events do not fit in the batch being filled starts the next one; one
larger than `max_batch_size` gets a batch of its own, sized for it. No batch may exceed
`max_request_size` less room for the request's headers (keep it within the broker's
`message.max.bytes` and the consumers' `max_partition_fetch_bytes`, 8 MiB in datacoop's runner): a
request whose events in one partition are larger than that cannot be atomic, and is split over
batches of up to `max_batch_size` in order, as any batching producer would (a failure can then leave
part of it in the log; its readers must treat it as one whole only once every part is in, as the
vault does with the chunks of a large upload).

Each partition's batches are handed over by a chain of its own, in order, so a partition that
cannot take batches (no leader) delays and fails only the requests with records in it: a request
whose batch was handed over is answered by that batch's ack, never by another partition's error.

The producer is not idempotent (the local broker lacks it): a retried send can duplicate an event
in the log, and consumers drop ids they have already applied.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from datacoop.events.codec import Headers, KafkaRecord, encode
from datacoop.events.envelope import Envelope

_PARTITION_CACHE_MAX = 200_000
HAND_OVER_WAIT_S = 0.05
REQUEST_HEADROOM = 1024  # bytes of max_request_size kept for the produce request's own headers
# A record batch (magic 2) is a 61-byte header and its records; a record takes at most its key, value
# and headers (`size_of`) plus 21 bytes of varints (length 5, attributes 1, timestamp delta 10,
# offset delta 5). Summed per request, these bounds never let a batch refuse one of its records.
_BATCH_HEADER = 61
_RECORD_OVERHEAD_MAX = 21
_ONLY = (0,)  # the indices of a one-event request
SPLIT = -1  # the size of a request's records in a partition that no batch may hold: split over batches
log = logging.getLogger("datacoop.bus")


def _fail(request: _Request, exc: BaseException) -> None:
    """Answer a request with (a copy of) `exc`; one exception object shared by many futures would
    collect every waiter's traceback."""
    if request.done.done() and request.then is None:
        return
    error = copy.copy(exc if isinstance(exc, Exception) else KafkaError(f"publishing stopped: {exc!r}"))
    if not request.done.done():
        request.done.set_exception(error)
    _then(request, error)


def _then(request: _Request, outcome: list[Position] | BaseException) -> None:
    """Call the request's `then`, once (even if its caller cancelled the future)."""
    then, request.then = request.then, None
    if then is not None:
        try:
            then(outcome)
        except Exception:  # one caller's bug must not keep the other requests of a batch unanswered
            log.exception("a publish callback failed")


class Position(NamedTuple):
    partition: int
    offset: int


@dataclass(slots=True)
class _Request:
    topic: str
    records: list[KafkaRecord]
    done: asyncio.Future[list[Position]]
    positions: list[Position | None] = field(default_factory=list)
    waiting: int = 0  # records whose batch is not yet acknowledged
    then: Callable[[list[Position] | BaseException], None] | None = None  # called once, where `done` is answered
    sizes: list[int] | None = None  # each record's size bound in a batch (requests of several events)


def _record_bound(record: KafkaRecord) -> int:
    """At most the bytes `record` takes in a record batch."""
    return int(DefaultRecordBatchBuilder.size_of(record.key, record.value, record.headers)) + _RECORD_OVERHEAD_MAX


class Publisher:
    def __init__(self, bootstrap: str, *, client_id: str = "datacoop", linger_ms: int = 2,
                 max_batch_size: int = 2 * 1024 * 1024, max_request_size: int = 8 * 1024 * 1024) -> None:
        self._config = dict(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=False,
            linger_ms=linger_ms,
            max_batch_size=max_batch_size,
            max_request_size=max_request_size,
            compression_type=None,
        )
        self._max_request_size = max_request_size
        self._max_batch_size = max_batch_size
        self._producer: AIOKafkaProducer | None = None
        self._started = False
        self._queue: list[_Request] = []
        self._flusher: asyncio.Task[None] | None = None
        self._partitions: dict[tuple[str, bytes], int] = {}
        self._partition_counts: dict[str, int] = {}
        self._tails: dict[tuple[str, int], asyncio.Task[None]] = {}

    async def start(self) -> None:
        """Connect (aiokafka clients belong to the running event loop, so they are made here)."""
        self._producer = AIOKafkaProducer(**self._config)
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        """Send what is queued, wait for its acks, then close."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        if self._tails:
            await asyncio.wait(list(self._tails.values()))
        if self._started and self._producer is not None:
            await self._producer.stop()
            self._started = False

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _running(self) -> AIOKafkaProducer:
        if self._producer is None or not self._started:
            raise RuntimeError("publisher not started; call `await publisher.start()` first")
        return self._producer

    async def publish(self, topic: str, envelope: Envelope) -> Position:
        """Append one event and wait until the broker has it (acks=all)."""
        return (await self.publish_many(topic, [envelope]))[0]

    async def publish_many(self, topic: str, envelopes: Sequence[Envelope]) -> list[Position]:
        """Append events in order (same subject -> same partition, in order); wait for every ack."""
        if not envelopes:
            self._running()
            return []
        return await self.submit(topic, envelopes)

    def submit(self, topic: str, envelopes: Sequence[Envelope], *,
               then: Callable[[list[Position] | BaseException], None] | None = None,
               headers: Sequence[tuple[str, bytes]] = ()) -> asyncio.Future[list[Position]]:
        """Queue events as `publish_many` does, without waiting: the future resolves to their positions
        once every ack is in (or fails with the send's error). `then`, if given, is called with the same
        outcome right where the future is answered, without a turn of the event loop in between: for
        callers that chain work onto the ack (the writer's group commit). `headers` go on every record,
        after the CloudEvents ones (the writer's instance id)."""
        self._running()
        if not envelopes:
            raise ValueError("submit() needs at least one envelope")
        records = [encode(e) for e in envelopes]
        if headers:
            for record in records:
                record.headers.extend(headers)
        limit = self._max_request_size - REQUEST_HEADROOM  # room for the batch and request headers
        for envelope, record in zip(envelopes, records, strict=True):
            if len(record.value) + len(record.key) > limit:
                raise ValueError(f"event {envelope.id} ({envelope.type}) is {len(record.value)} bytes; events must "
                                 f"stay under {limit} bytes: put large payloads in the object store and "
                                 "reference them")
        sizes = None
        if len(records) > 1:
            size_of, overhead = DefaultRecordBatchBuilder.size_of, _RECORD_OVERHEAD_MAX  # `_record_bound`, inlined
            sizes = [size_of(r.key, r.value, r.headers) + overhead for r in records]
        request = _Request(topic, records, asyncio.get_running_loop().create_future(), then=then, sizes=sizes)
        self._queue.append(request)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="publisher-flush")
        return request.done

    async def send_raw(self, topic: str, value: bytes | None, *, key: bytes | None,
                       headers: Headers) -> Position:
        """For the DLQ: the original bytes, unparsed, with the reason in headers."""
        future = await self._running().send(topic, value, key=key, headers=headers)
        meta = await future
        return Position(meta.partition, meta.offset)

    # -- batching ----------------------------------------------------------------------------
    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the requests made in this turn of the loop join
        queue: list[_Request] = []
        try:
            while self._queue:
                queue, self._queue = self._queue, []
                chains = await self._send(queue)
                # Wait (briefly) for this flush's batches to be taken: requests made meanwhile then go
                # out together in the next flush. A stuck partition's chain goes on without us.
                if chains:
                    await asyncio.wait(chains, timeout=HAND_OVER_WAIT_S)
        except BaseException as exc:  # cancelled (the loop is closing) or a bug: nobody may wait forever
            for request in [*queue, *self._queue]:  # some of `queue` may still land, as with any failed send
                _fail(request, exc)
            self._queue = []
            raise

    async def _send(self, queue: list[_Request]) -> list[asyncio.Task[None]]:
        """Pack `queue` into batches per partition and start handing them over; the chains started."""
        producer = self._running()
        counts: dict[str, int] = {}
        for topic in dict.fromkeys(r.topic for r in queue):
            try:
                counts[topic] = await self._partition_count(producer, topic)
            except Exception as exc:  # e.g. no such topic: fail its requests, not the others'
                for request in queue:
                    if request.topic == topic:
                        _fail(request, exc)
        limit = self._max_request_size - REQUEST_HEADROOM
        # per partition: each request's records there (their indices) and, for several, their size bound
        by_tp: dict[tuple[str, int], list[tuple[_Request, Sequence[int], int]]] = {}
        for request in queue:
            topic = request.topic
            if topic not in counts:
                continue
            records = request.records
            if len(records) == 1:
                partition = self._partition(topic, records[0].key, counts[topic])
                runs: list[tuple[tuple[str, int], Sequence[int], int]] = [((topic, partition), _ONLY, 0)]
            else:
                indices: dict[tuple[str, int], list[int]] = {}
                for i, record in enumerate(records):
                    indices.setdefault((topic, self._partition(topic, record.key, counts[topic])), []).append(i)
                sizes = request.sizes or [_record_bound(record) for record in records]
                runs = [(tp, mine, sum(sizes[i] for i in mine)) for tp, mine in indices.items()]
                # what no batch may hold cannot land all or none: split over batches (SPLIT), in order
                runs = [(tp, mine, size if _BATCH_HEADER + size <= limit else SPLIT) for tp, mine, size in runs]
            request.positions = [None] * len(records)
            request.waiting = len(records)
            for tp, mine, size in runs:
                by_tp.setdefault(tp, []).append((request, mine, size))
        return [self._chain(tp, self._pack(producer, runs_of_tp)) for tp, runs_of_tp in by_tp.items()]

    def _pack(self, producer: AIOKafkaProducer, runs: list[tuple[_Request, Sequence[int], int]],
              ) -> list[tuple[Any, list[tuple[_Request, int]]]]:
        """One partition's records, in order, in record batches of up to `max_batch_size`; a request's
        records never straddle two batches (each batch lands whole or not at all), unless no batch may hold
        them all (size SPLIT)."""
        batches: list[tuple[Any, list[tuple[_Request, int]]]] = []
        batch = producer.create_batch()
        members: list[tuple[_Request, int]] = []
        for request, mine, size in runs:
            whole = len(mine) > 1 and size != SPLIT
            if whole:
                if members and batch.size() + size > self._max_batch_size:  # start the next batch with them
                    batch.close()
                    batches.append((batch, members))
                    batch, members = producer.create_batch(), []
                if _BATCH_HEADER + size > self._max_batch_size:  # a batch of their own, sized for them
                    batch = BatchBuilder(_BATCH_HEADER + size, 0)  # as create_batch(): no compression, no transaction
            for i in mine:
                record = request.records[i]
                if batch.append(key=record.key, value=record.value, timestamp=None, headers=record.headers) is None:
                    if whole:  # cannot happen: `size` bounds the records' bytes
                        raise AssertionError(f"a batch refused a record within its size bound ({size} bytes)")
                    batches.append((batch, members))  # full (append closed it); an empty batch takes any one record
                    batch, members = producer.create_batch(), []
                    batch.append(key=record.key, value=record.value, timestamp=None, headers=record.headers)
                members.append((request, i))
        if members:
            batch.close()
            batches.append((batch, members))
        return batches

    def _chain(self, tp: tuple[str, int], batches: list[tuple[Any, list[tuple[_Request, int]]]]) -> asyncio.Task[None]:
        """Hand `batches` to the producer after the partition's earlier batches, in order."""
        previous = self._tails.get(tp)
        task = asyncio.create_task(self._hand_over(previous, tp, batches), name=f"publisher-{tp[0]}[{tp[1]}]")
        self._tails[tp] = task
        task.add_done_callback(partial(self._chain_done, tp))
        return task

    def _chain_done(self, tp: tuple[str, int], task: asyncio.Task[None]) -> None:
        if self._tails.get(tp) is task:  # the partition's last chain: nothing to wait for any more
            del self._tails[tp]

    async def _hand_over(self, previous: asyncio.Task[None] | None, tp: tuple[str, int],
                         batches: list[tuple[Any, list[tuple[_Request, int]]]]) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # never raises; its failures are its requests'
        topic, partition = tp
        for n, (batch, members) in enumerate(batches):
            try:
                ack = await self._running().send_batch(batch, topic, partition=partition)
            except BaseException as exc:  # e.g. KafkaTimeoutError: the partition takes no batches
                for _, later in batches[n:]:
                    for request, _ in later:
                        _fail(request, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            ack.add_done_callback(lambda f, m=members, p=partition: self._acked(f, m, p))

    @staticmethod
    def _acked(ack: asyncio.Future[Any], members: list[tuple[_Request, int]], partition: int) -> None:
        error: BaseException | None
        if ack.cancelled():
            error = KafkaError(f"the send of a batch to partition {partition} was cancelled (producer stopping)")
        else:
            error = ack.exception()
        base = -1 if error is not None else int(ack.result().offset)
        for index, (request, i) in enumerate(members):
            request.waiting -= 1
            if error is not None:
                _fail(request, error)
                continue
            request.positions[i] = Position(partition, base + index)
            if request.waiting == 0:
                positions: list[Position] = request.positions  # type: ignore[assignment]  # all set now
                if not request.done.done():  # failed by another batch, or cancelled by its caller
                    request.done.set_result(positions)
                _then(request, positions)  # a no-op after a failure: `then` had it already

    async def _partition_count(self, producer: AIOKafkaProducer, topic: str) -> int:
        """From the producer's metadata (refreshed by aiokafka): when partitions are added, the cached
        subject -> partition choices of the topic are dropped."""
        count = len(await producer.partitions_for(topic))
        if self._partition_counts.get(topic) != count:
            if topic in self._partition_counts:
                self._partitions = {k: v for k, v in self._partitions.items() if k[0] != topic}
            self._partition_counts[topic] = count
        return count

    def _partition(self, topic: str, key: bytes, count: int) -> int:
        """The default partitioner's choice (murmur2 of the key over `count` partitions), computed once
        per subject; aiokafka's send() would pick the same."""
        cached = self._partitions.get((topic, key))
        if cached is not None:
            return cached
        if len(self._partitions) >= _PARTITION_CACHE_MAX:
            self._partitions.clear()
        partition = self._partitions[(topic, key)] = int(DefaultPartitioner()(key, list(range(count)), []))
        return partition
