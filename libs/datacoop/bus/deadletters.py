"""Reading a dead-letter topic back: what the consumer runners set aside, and why (`<topic>.dlq`).

Each record there is the original record's key and value (ciphertext where the event held personal data:
nothing is decrypted to dead-letter it), its headers, and the runner's own: `dlq_error` (the reason),
`dlq_source_topic`, `dlq_source_partition`, `dlq_source_offset`, `dlq_consumer` and `dlq_id`.

A runner sends a record to the DLQ before the transaction that moves past it, so one that dies before its
COMMIT sends it again when it reads the batch again: the same record may lie there more than once. `dlq_id`
(`dead_letter_id`: the consumer and the source record) is the same on every copy; `read_dead_letters` gives
each source record once, with how many copies the topic holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, replace
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
    dead_letter_id: str  # the same on every copy (`dead_letter_id`)
    copies: int = 1  # how many records of the DLQ set this source record aside for this consumer


def dead_letter_id(consumer: str, topic: str, partition: int, offset: int) -> str:
    """The `dlq_id` header: which consumer set aside which record, the same on every copy (32 hex digits)."""
    return hashlib.sha256(f"{consumer}\n{topic}\n{partition}\n{offset}".encode()).hexdigest()[:32]


def _letter(rec: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    headers = rec.headers or ()
    return DeadLetter(
        partition=rec.partition, offset=rec.offset,
        dead_lettered_at=datetime.fromtimestamp(rec.timestamp / 1000, UTC),
        source=f"{header(headers, 'dlq_source_topic') or '?'}[{header(headers, 'dlq_source_partition') or '?'}]"
               f"@{header(headers, 'dlq_source_offset') or '?'}",
        consumer=header(headers, "dlq_consumer") or "?", event_type=header(headers, "ce_type"),
        event_id=header(headers, "ce_id"), reason=header(headers, "dlq_error") or "(no reason recorded)",
        value_bytes=len(rec.value or b""),
        dead_letter_id=header(headers, "dlq_id") or _id_from_source(rec))


def _id_from_source(rec: ConsumerRecord[bytes, bytes]) -> str:
    """The id of a record dead-lettered before runners wrote `dlq_id`, from its other headers (one that lacks them
    is its own)."""
    headers = rec.headers or ()
    consumer, topic = header(headers, "dlq_consumer"), header(headers, "dlq_source_topic")
    partition, offset = header(headers, "dlq_source_partition"), header(headers, "dlq_source_offset")
    if consumer and topic and partition and offset and partition.isdigit() and offset.isdigit():
        return dead_letter_id(consumer, topic, int(partition), int(offset))
    return f"{rec.topic}[{rec.partition}]@{rec.offset}"


def _collapsed(letters: list[DeadLetter]) -> list[DeadLetter]:
    """Each source record once, as its first copy says (when, why), with the number of copies; oldest first."""
    first: dict[str, DeadLetter] = {}
    for letter in letters:
        seen = first.get(letter.dead_letter_id)
        first[letter.dead_letter_id] = letter if seen is None else replace(seen, copies=seen.copies + 1)
    return list(first.values())


async def read_dead_letters(bootstrap: str, topics: list[str], timeout_s: float = 15.0) -> dict[str, list[DeadLetter]]:
    """Every source record set aside in each dead-letter topic in `topics`, once (`copies`: how many records of the
    topic hold it), oldest first; a topic the broker does not have maps to []. Read to the high-water mark of a
    fetch (the local broker's end offsets are unreliable); TimeoutError when that takes longer than `timeout_s`."""
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
                return {topic: _collapsed(letters) for topic, letters in out.items()}
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
