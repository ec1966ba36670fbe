"""Reading a dead-letter topic back: what the consumer runners set aside, and why (`<topic>.dlq`).

Each record there is the original record's key and value (ciphertext where the event held personal data:
nothing is decrypted to dead-letter it), its headers, and the runner's own: `dlq_error` (the reason),
`dlq_source_topic`, `dlq_source_partition`, `dlq_source_offset` and `dlq_consumer`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from datacoop.events.codec import header


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    dead_lettered_at: datetime  # the DLQ record's timestamp (UTC)
    source: str  # topic[partition]@offset of the record set aside
    consumer: str
    event_type: str | None  # ce_type, when the record had one
    event_id: str | None
    reason: str
    value_bytes: int


def _letter(rec: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    headers = rec.headers or ()
    return DeadLetter(
        partition=rec.partition, offset=rec.offset,
        dead_lettered_at=datetime.fromtimestamp(rec.timestamp / 1000, UTC),
        source=f"{header(headers, 'dlq_source_topic') or '?'}[{header(headers, 'dlq_source_partition') or '?'}]"
               f"@{header(headers, 'dlq_source_offset') or '?'}",
        consumer=header(headers, "dlq_consumer") or "?", event_type=header(headers, "ce_type"),
        event_id=header(headers, "ce_id"), reason=header(headers, "dlq_error") or "(no reason recorded)",
        value_bytes=len(rec.value or b""))


async def read_dead_letters(bootstrap: str, topics: list[str], timeout_s: float = 15.0) -> dict[str, list[DeadLetter]]:
    """Every record of each dead-letter topic in `topics`, oldest first; a topic the broker does not have maps to
    []. Read to the high-water mark of a fetch (the local broker's end offsets are unreliable); TimeoutError when
    that takes longer than `timeout_s`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="datacoop-dlq")
    await consumer.start()
    try:
        existing = await consumer.topics()
        out: dict[str, list[DeadLetter]] = {t: [] for t in topics}
        tps = [TopicPartition(t, p) for t in topics if t in existing
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            return out
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + timeout_s
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=200)
            for tp, records in batch.items():
                out[tp.topic] += [_letter(r) for r in records]
            if await _at_end(consumer, tps):
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dead-letter topics could not be read to their end within {timeout_s:g} s")
            await asyncio.sleep(0)
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    """Every partition read up to the high-water mark its last fetch reported (none yet: not at the end)."""
    for tp in tps:
        end = consumer.highwater(tp)
        if end is None or await consumer.position(tp) < end:
            return False
    return True
