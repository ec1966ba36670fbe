"""Publishing envelopes: acks=all, key = subject, `ce_type`/`ce_id` headers, ack awaited.

Sends are handed to the producer without awaiting each one first, so concurrent callers (and the
events of one `publish_many`) share record batches; the broker lists every stored batch on each
fetch, so one batch per event would make every consumer slower as the log grows.
The producer is not idempotent (the local broker lacks it): a retried send can duplicate an event
in the log, and consumers drop ids they have already applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple

from aiokafka import AIOKafkaProducer

from datacoop.events.codec import Headers, encode
from datacoop.events.envelope import Envelope


class Position(NamedTuple):
    partition: int
    offset: int


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
        self._producer: AIOKafkaProducer | None = None
        self._started = False

    async def start(self) -> None:
        """Connect (aiokafka clients belong to the running event loop, so they are made here)."""
        self._producer = AIOKafkaProducer(**self._config)
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        if self._started and self._producer is not None:
            await self._producer.stop()
            self._started = False

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _running(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("publisher not started; call `await publisher.start()` first")
        return self._producer

    async def publish(self, topic: str, envelope: Envelope) -> Position:
        """Append one event and wait until the broker has it (acks=all)."""
        return (await self.publish_many(topic, [envelope]))[0]

    async def publish_many(self, topic: str, envelopes: Sequence[Envelope]) -> list[Position]:
        """Append events in order (same subject -> same partition, in order); wait for every ack."""
        producer = self._running()
        futures = []
        for envelope in envelopes:
            record = encode(envelope)
            futures.append(await producer.send(topic, record.value, key=record.key,
                                                     headers=record.headers))
        metas = await asyncio.gather(*futures)
        return [Position(m.partition, m.offset) for m in metas]

    async def send_raw(self, topic: str, value: bytes | None, *, key: bytes | None,
                       headers: Headers) -> Position:
        """For the DLQ: the original bytes, unparsed, with the reason in headers."""
        future = await self._running().send(topic, value, key=key, headers=headers)
        meta = await future
        return Position(meta.partition, meta.offset)
