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
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial

from datacoop.bus.consumer import Delivery, Projection
from datacoop.bus.publisher import Position, Publisher
from datacoop.events.envelope import Envelope, new_event_id
from datacoop.events.registry import Event
from datacoop.store import ProjectionStore

_Done = asyncio.Future[list[Delivery]]


class Writer:
    def __init__(self, *, store: ProjectionStore, publisher: Publisher, projection: Projection,
                 topic: str, source: str) -> None:
        self.store = store
        self.publisher = publisher
        self.projection = projection
        self.topic = topic
        self.source = source
        # subject -> commands waiting for it; a subject is present while a command holds it
        self._busy: dict[str, deque[asyncio.Future[None]]] = {}
        self._seqs: dict[str, int] = {}
        self._seqs_complete = False
        self._stale: set[str] = set()  # subjects whose last publish failed: ask the store, not the cache
        self._pending: list[tuple[str, list[Delivery], _Done]] = []
        self._flusher: asyncio.Task[None] | None = None

    def warm(self) -> None:
        """Load every subject's last seq (call once the consumer has caught up): a new subject then
        needs no database read. `observe` and `execute` keep the map true afterwards."""
        rows = self.store.conn.execute("SELECT subject, seq FROM _dc_subjects WHERE topic = ?", [self.topic]).fetchall()
        self._seqs.update({subject: max(int(seq), self._seqs.get(subject, 0)) for subject, seq in rows})
        self._seqs_complete = True

    def _last_seq(self, subject: str) -> int:
        if subject not in self._seqs:
            known_new = self._seqs_complete and subject not in self._stale
            self._seqs[subject] = 0 if known_new else self.store.last_seq(self.topic, subject)
            self._stale.discard(subject)
        return self._seqs[subject]

    def _forget_seq(self, subject: str) -> None:
        """A publish failed: some of its events may have landed. Re-read the seq from the store, which
        the consumer brings up to date when it reads them back."""
        self._seqs.pop(subject, None)
        self._stale.add(subject)

    def observe(self, deliveries: list[Delivery]) -> None:
        """Keep the seq cache true when the consumer applies this topic's events (a replay, a sibling)."""
        for d in deliveries:
            subject = d.envelope.subject
            if d.topic == self.topic and (subject in self._seqs or self._seqs_complete):
                self._seqs[subject] = max(self._seqs.get(subject, 0), d.envelope.seq)

    # -- the per-subject lock --------------------------------------------------------------
    async def _wait_turn(self, subject: str) -> None:
        """Queue behind the command holding `subject`; it hands the subject over when done."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._busy[subject]
        waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed over just as we were cancelled: pass it on
                self._release(subject)
            else:
                with contextlib.suppress(ValueError):
                    waiters.remove(turn)
            raise

    def _release(self, subject: str) -> None:
        waiters = self._busy[subject]
        while waiters:
            turn = waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        del self._busy[subject]

    # -- commands --------------------------------------------------------------------------
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

        The subject stays locked until its events are applied or have failed, even when the caller is
        cancelled meanwhile: the next command on it must decide on the state they make. (The caller
        is answered after that, so a command queued on the subject may run before it resumes.)
        """
        if subject in self._busy:
            await self._wait_turn(subject)
        else:
            self._busy[subject] = deque()
        try:
            events = list(decide())
            if not events:
                self._release(subject)
                return []
            first_seq = self._last_seq(subject) + 1
            envelopes = [
                Envelope(id=id_for(ev) if id_for else new_event_id(), source=self.source, type=ev.type_name(),
                         subject=subject, seq=first_seq + i, dataschema=f"schemas/events/{ev.type_name()}.json",
                         correlationid=correlation_id, causationid=causation_id, data=ev.model_dump(mode="json"))
                for i, ev in enumerate(events)]
            acked = self.publisher.submit(self.topic, envelopes)
        except BaseException:
            self._release(subject)  # nothing is in flight
            raise
        done: _Done = asyncio.get_running_loop().create_future()
        # From here the subject is released when the events settle (applied or failed), not when this
        # task resumes or is cancelled. The ack queues them for the next group commit directly.
        acked.add_done_callback(partial(self._on_ack, subject, envelopes, events, done))
        return await done

    def _settle(self, subject: str, done: _Done, outcome: list[Delivery] | BaseException) -> None:
        if not done.done():  # a cancelled caller's future is done already; its events still count
            if isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)
        self._release(subject)

    def _on_ack(self, subject: str, envelopes: list[Envelope], events: list[Event], done: _Done,
                acked: asyncio.Future[list[Position]]) -> None:
        error = acked.exception() if not acked.cancelled() else asyncio.CancelledError()
        if error is not None:
            self._forget_seq(subject)
            self._settle(subject, done, error)
            return
        self._seqs[subject] = envelopes[-1].seq
        deliveries = [Delivery(self.topic, p.partition, p.offset, env, ev)
                      for env, ev, p in zip(envelopes, events, acked.result(), strict=True)]
        self._pending.append((subject, deliveries, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await self._flush_pending()
        except BaseException as exc:  # cancelled (the loop is closing): no command may wait forever
            pending, self._pending = self._pending, []
            error = exc if isinstance(exc, Exception) else RuntimeError(f"writer stopped: {exc!r}")
            for subject, _, done in pending:
                self._settle(subject, done, error)
            raise

    async def _flush_pending(self) -> None:
        await asyncio.sleep(0)  # let the commands whose acks came in the same batch join
        while self._pending:
            async with self.store.lock:
                batch, self._pending = self._pending, []
                try:
                    self._commit([d for _, ds, _ in batch for d in ds])
                    outcomes: list[BaseException | None] = [None] * len(batch)
                except Exception:
                    outcomes = [self._commit_alone(ds) for _, ds, _ in batch]
            for (subject, deliveries, done), outcome in zip(batch, outcomes, strict=True):
                self._settle(subject, done, deliveries if outcome is None else outcome)

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
