"""The writer side of a service: per-subject lock, next seq, produce-and-wait, apply with the offset.

    deliveries = await writer.execute(subject, decide)

`decide()` runs under the subject's lock and returns the events to append (it reads the projection,
so two commands on one subject never decide on the same state). The events are produced with
acks=all; only once the broker has them are they applied to the projection, in one DuckDB
transaction with the (partition, offset) they landed at. The caller answers after that.
If the process dies between the ack and the apply, the service's own consumer reads the events back
from the log on restart: the log, not the projection, is the record.

Group commit: commands whose acks arrive together are applied in one transaction (DuckDB's cost is
per statement and per commit, not per row). If that transaction fails, each command is applied in
its own, so one bad command fails alone.
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
        self._seqs: dict[str, int] = {}
        self._seqs_complete = False
        self._pending: list[tuple[list[Delivery], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _lock(self, subject: str) -> asyncio.Lock:
        lock = self._locks.get(subject)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[subject] = lock
        return lock

    def warm(self) -> None:
        """Load every subject's last seq (call once the consumer has caught up): a new subject then
        needs no database read. `observe` and `execute` keep the map true afterwards."""
        rows = self.store.conn.execute("SELECT subject, seq FROM _dc_subjects WHERE topic = ?", [self.topic]).fetchall()
        self._seqs.update({subject: max(int(seq), self._seqs.get(subject, 0)) for subject, seq in rows})
        self._seqs_complete = True

    def _last_seq(self, subject: str) -> int:
        if subject not in self._seqs:
            self._seqs[subject] = 0 if self._seqs_complete else self.store.last_seq(self.topic, subject)
        return self._seqs[subject]

    def observe(self, deliveries: list[Delivery]) -> None:
        """Keep the seq cache true when the consumer applies this topic's events (a replay, a sibling)."""
        for d in deliveries:
            subject = d.envelope.subject
            if d.topic == self.topic and (subject in self._seqs or self._seqs_complete):
                self._seqs[subject] = max(self._seqs.get(subject, 0), d.envelope.seq)

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
        async with self._lock(subject):
            events = list(decide())
            if not events:
                return []
            first_seq = self._last_seq(subject) + 1
            envelopes = [
                Envelope(id=id_for(ev) if id_for else new_event_id(), source=self.source, type=ev.type_name(),
                         subject=subject, seq=first_seq + i, dataschema=f"schemas/events/{ev.type_name()}.json",
                         correlationid=correlation_id, causationid=causation_id, data=ev.model_dump(mode="json"))
                for i, ev in enumerate(events)]
            try:
                positions = await self.publisher.publish_many(self.topic, envelopes)
            except BaseException:
                self._seqs.pop(subject, None)  # some may have landed: re-read once the consumer has them
                raise
            self._seqs[subject] = envelopes[-1].seq
            deliveries = [Delivery(self.topic, p.partition, p.offset, env, ev)
                          for env, ev, p in zip(envelopes, events, positions, strict=True)]
            await self._apply_grouped(deliveries)
            return deliveries

    async def _apply_grouped(self, deliveries: list[Delivery]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((deliveries, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        try:
            await self._flush_pending()
        except BaseException as exc:  # cancelled (the loop is closing): no command may wait forever
            for _, done in self._pending:
                if not done.done():
                    done.set_exception(exc if isinstance(exc, Exception) else RuntimeError(f"writer stopped: {exc!r}"))
            self._pending = []
            raise

    async def _flush_pending(self) -> None:
        await asyncio.sleep(0)  # let the commands whose acks came in the same batch join
        while self._pending:
            async with self.store.lock:
                batch, self._pending = self._pending, []
                try:
                    self._commit([d for ds, _ in batch for d in ds])
                    outcomes: list[BaseException | None] = [None] * len(batch)
                except Exception:
                    outcomes = [self._commit_alone(ds) for ds, _ in batch]
            for (_, done), outcome in zip(batch, outcomes, strict=True):
                if done.done():
                    continue
                if outcome is None:
                    done.set_result(None)
                else:
                    done.set_exception(outcome)

    def _commit_alone(self, deliveries: list[Delivery]) -> BaseException | None:
        try:
            self._commit(deliveries)
        except Exception as exc:
            return exc
        return None

    def _commit(self, deliveries: list[Delivery]) -> None:
        seen = self.store.already_applied([d.envelope.id for d in deliveries])
        fresh = [d for d in deliveries if d.envelope.id not in seen]
        with self.store.transaction() as tx:
            if fresh:
                self.projection.apply(tx, fresh)
                fresh_ids = [d.envelope.id for d in fresh]
                self.store.mark_applied(tx, fresh_ids)
                self.store.on_commit(lambda: self.store.remember_own(fresh_ids))
            self.store.save_subjects(tx, [(self.topic, d.envelope.subject, d.envelope.seq, d.partition, d.offset)
                                          for d in deliveries])
