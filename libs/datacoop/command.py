"""The writer side of a service: per-subject lock, next seq, produce-and-wait, apply with the offset.

    deliveries = await writer.execute(subject, decide)

`decide()` runs under the subject's lock and returns the events to append (it reads the projection,
so two commands on one subject never decide on the same state). The events are produced with
acks=all; only once the broker has them are they applied to the projection, in one DuckDB
transaction with the (partition, offset) they landed at. The caller answers after that.
If the process dies between the ack and the apply, the service's own consumer reads the events back
from the log on restart: the log, not the projection, is the record.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence

from datacoop.bus.consumer import Delivery, Projection
from datacoop.bus.publisher import Publisher
from datacoop.events.envelope import Envelope, new_event_id
from datacoop.events.registry import Event
from datacoop.store import ProjectionStore


class Writer:
    def __init__(self, *, store: ProjectionStore, publisher: Publisher, projection: Projection,
                 topic: str, source: str) -> None:
        self.store = store
        self.publisher = publisher
        self.projection = projection
        self.topic = topic
        self.source = source
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, subject: str) -> asyncio.Lock:
        lock = self._locks.get(subject)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[subject] = lock
        return lock

    async def execute(
        self,
        subject: str,
        decide: Callable[[], Sequence[Event]],
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        id_for: Callable[[Event], str] | None = None,
    ) -> list[Delivery]:
        """Append what `decide` returns for `subject`; returns the applied deliveries.

        `id_for` gives an event its id (e.g. `derived_event_id` of its cause), so a re-sent reaction
        is a duplicate that every consumer drops.
        """
        lock = self._lock(subject)
        async with lock:
            events = list(decide())
            if not events:
                return []
            first_seq = self.store.last_seq(self.topic, subject) + 1
            envelopes = []
            for i, ev in enumerate(events):
                envelopes.append(Envelope(
                    id=id_for(ev) if id_for else new_event_id(),
                    source=self.source, type=ev.type_name(), subject=subject, seq=first_seq + i,
                    dataschema=f"schemas/events/{ev.type_name()}.json", correlationid=correlation_id,
                    causationid=causation_id, data=ev.model_dump(mode="json")))
            positions = await self.publisher.publish_many(self.topic, envelopes)
            deliveries = [Delivery(self.topic, p.partition, p.offset, env, ev)
                          for env, ev, p in zip(envelopes, events, positions, strict=True)]
            async with self.store.lock:
                fresh_ids = [d.envelope.id for d in deliveries]
                seen = self.store.already_applied(fresh_ids)
                fresh = [d for d in deliveries if d.envelope.id not in seen]
                with self.store.transaction() as tx:
                    if fresh:
                        self.projection.apply(tx, fresh)
                        self.store.mark_applied(tx, [d.envelope.id for d in fresh])
                    self.store.save_subjects(tx, [(self.topic, subject, d.envelope.seq, d.partition, d.offset)
                                                  for d in deliveries])
            return deliveries
