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
its own, so one bad command fails alone. As in a consumer, an event id is applied once: the first in the
log wins (two commands may derive one id from one cause); one command's events must each have their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from datacoop.bus.consumer import WRITER_HEADER, ConsumerRunner, Delivery, Projection
from datacoop.bus.publisher import Position, Publisher
from datacoop.errors import AnotherInstance, EarlierWriteUnsettled, EventLogSilent
from datacoop.events.envelope import Envelope, new_event_id
from datacoop.events.registry import REGISTRY, Event
from datacoop.store import ProjectionStore

_Done = asyncio.Future[list[Delivery]]

DOUBT_WAIT_S = 10.0  # the most a command waits for the reader after its subject's last write failed


def _envelope(event: Event, event_id: str, source: str, subject: str, seq: int, correlation_id: str | None,
              causation_id: str | None) -> Envelope:
    """The envelope of an event about to be written. A current type's envelope holds the event model
    itself (as the consumer's one-pass decode makes it): no round trip through a dict, the same JSON."""
    type_name = event.type_name()
    typed = REGISTRY.typed_envelope(type_name)
    model, data = (typed, event) if typed is not None else (Envelope, event.model_dump(mode="json"))
    return model(id=event_id, source=source, type=type_name, subject=subject, seq=seq,
                 dataschema=f"schemas/events/{type_name}.json", correlationid=correlation_id,
                 causationid=causation_id, data=data)


def _refuse_shared_ids(envelopes: list[Envelope]) -> None:
    """A command's events each need their own id: a consumer applies one event per id, so a projection
    rebuilt from the log would lack the others (a programming error in the service's `id_for`)."""
    ids: set[str] = set()
    for env in envelopes:
        if env.id in ids:
            raise ValueError(
                f"two events of one command on subject {env.subject!r} have the id {env.id} (types "
                f"{', '.join(e.type for e in envelopes if e.id == env.id)}); a reader of the log applies only the "
                "first: give each its own id, e.g. pass a discriminator to derived_event_id (the event's index, "
                "or what tells the events apart)")
        ids.add(env.id)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a future's error as seen (asyncio logs 'never retrieved' for one nobody awaits)."""
    if not future.cancelled():
        future.exception()


@dataclass(slots=True)
class _InFlight:
    """A command whose events were submitted: answered, and its subject handed on, exactly once."""

    subject: str
    done: _Done
    deliveries: list[Delivery] = field(default_factory=list)
    settled: bool = False


class Writer:
    def __init__(self, *, store: ProjectionStore, publisher: Publisher, projection: Projection,
                 topic: str, source: str, reader: ConsumerRunner | None = None) -> None:
        self.store = store
        self.reader = reader  # the runner that reads `topic` back in this process: it skips what we applied
        # on each record it writes (header `dc_writer`): a reader that finds another live instance's id on its
        # service's own topic knows two instances write it (ConsumerRunner.other_writer)
        self.instance = f"{socket.gethostname()[:40]}/{os.getpid()}/{uuid.uuid4().hex[:8]}".encode()  # which process
        if reader is not None:
            reader.own_writers.add(self.instance)
        self.publisher = publisher
        self.projection = projection
        self.topic = topic
        self.source = source
        # subject -> commands waiting for it; a subject is present while a command holds it
        self._busy: dict[str, deque[asyncio.Future[None]]] = {}
        self._seqs: dict[str, int] = {}
        self._seqs_complete = False
        self._pending: list[_InFlight] = []  # acknowledged, waiting for the next group commit
        self._in_hand: list[_InFlight] = []  # the batch being committed
        self._flusher: asyncio.Task[None] | None = None
        # subject -> when (unix ms) a command on it failed once submitted: its events may be in the log all the
        # same (a lost ack), so the next command on the subject waits for the reader
        self._doubt: dict[str, int] = {}

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
        is a duplicate that every consumer drops. It must give each event of one command its own id:
        a command whose events share one is refused (ValueError) before anything is written, since
        every reader of the log would apply only the first of them.

        The subject stays locked until its events are applied or have failed, even when the caller is
        cancelled meanwhile: the next command on it must decide on the state they make. (The caller
        is answered after that, so a command queued on the subject may run before it resumes.)
        """
        if self.reader is not None and self.reader.other_writer is not None:
            raise AnotherInstance(f"{self.reader.other_writer.removeprefix('AnotherWriter: ')}; nothing was written")
        if self.reader is not None and self.reader.silent is not None:
            why = self.reader.silent.removeprefix("BrokerSilent: ")
            raise EventLogSilent(f"the event log (Kafka) is not answering ({why}); nothing was written: retry once "
                                 "it is back (`/readyz` says when)")
        if subject in self._busy:
            await self._wait_turn(subject)
        else:
            self._busy[subject] = deque()
        try:
            if subject in self._doubt:
                await self._out_of_doubt(subject)
            events = list(decide())
            if not events:
                self._release(subject)
                return []
            first_seq = self._last_seq(subject) + 1
            envelopes = [_envelope(ev, id_for(ev) if id_for else new_event_id(), self.source, subject, first_seq + i,
                                   correlation_id, causation_id) for i, ev in enumerate(events)]
            if id_for is not None:
                _refuse_shared_ids(envelopes)
            command = _InFlight(subject, asyncio.get_running_loop().create_future())
            # From here the subject is released when the events settle (applied or failed), not when
            # this task resumes or is cancelled. The ack queues them for the next group commit directly.
            acked = self.publisher.submit(self.topic, envelopes, then=partial(self._on_ack, command, envelopes, events),
                                          headers=((WRITER_HEADER, self.instance),))
            acked.add_done_callback(_retrieved)  # the outcome reaches the caller through `then`
        except BaseException:
            self._release(subject)  # nothing is in flight
            raise
        # Taken now, whatever the ack says: a publish that fails may still have landed (a lost ack),
        # and a seq must never be used twice. The price is a gap after a publish that really failed.
        self._seqs[subject] = envelopes[-1].seq
        return await command.done

    def _settle(self, command: _InFlight, outcome: list[Delivery] | BaseException) -> None:
        """Answer a command once (a cancelled caller's future is done already: its events still count)
        and hand its subject on."""
        if command.settled:
            return
        command.settled = True
        if isinstance(outcome, BaseException) and self.reader is not None:
            self._doubt[command.subject] = time.time_ns() // 1_000_000
        if not command.done.done():
            if isinstance(outcome, BaseException):
                command.done.set_exception(outcome)
            else:
                command.done.set_result(outcome)
        self._release(command.subject)

    async def _out_of_doubt(self, subject: str) -> None:
        """The last command on `subject` failed after its events were submitted: they may be in the log all
        the same (an ack lost, or a projection's commit that failed after the broker had them). Its retry
        must not be decided on state without them (a nonce would be accepted twice, a record stored twice),
        so wait until the reader has read this topic to the end the broker gave for a fetch sent after the
        failure: what landed by then is applied. (A broker that appends a request only after the client gave
        up on it, later still, is beyond any wait.) EarlierWriteUnsettled (503, retry) when the log can't be
        read that far in DOUBT_WAIT_S: nothing of this command was written."""
        assert self.reader is not None
        reader, failed_ms = self.reader, self._doubt[subject]
        first_fetch: dict[int, int] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DOUBT_WAIT_S
        while not reader.read_past(self.topic, failed_ms, first_fetch):
            if loop.time() > deadline:
                raise EarlierWriteUnsettled(
                    f"nothing of this request was written: an earlier write for {subject} was not confirmed, and "
                    f"the event log could not be read past it within {DOUBT_WAIT_S:.0f} s to learn whether it "
                    "landed; retry shortly (the answer will then take that write into account)")
            await asyncio.sleep(0.02)
        del self._doubt[subject]

    async def drain(self) -> None:
        """Wait until every acknowledged command is applied (or has failed): at shutdown, after the publisher
        has handed over its last acks and before the store closes."""
        while self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flusher)

    def _on_ack(self, command: _InFlight, envelopes: list[Envelope], events: list[Event],
                outcome: list[Position] | BaseException) -> None:
        try:
            if isinstance(outcome, BaseException):
                self._settle(command, outcome)
                return
            command.deliveries = [Delivery(self.topic, p.partition, p.offset, env, ev)
                                  for env, ev, p in zip(envelopes, events, outcome, strict=True)]
            self._pending.append(command)
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush())
        except BaseException as exc:  # the publisher would only log it: answer the command
            self._settle(command, exc)
            raise

    async def _flush(self) -> None:
        try:
            await self._flush_pending()
        except BaseException as exc:  # cancelled (the loop is closing) or a bug: no command may wait forever
            unsettled, self._in_hand, self._pending = [*self._in_hand, *self._pending], [], []
            error = exc if isinstance(exc, Exception) else RuntimeError(f"writer stopped: {exc!r}")
            for command in unsettled:
                self._settle(command, copy.copy(error))
            raise

    async def _flush_pending(self) -> None:
        await asyncio.sleep(0)  # let the commands whose acks came in the same batch join
        while self._pending:
            async with self.store.lock:
                # in hand until settled: whatever escapes from here, _flush answers these too
                batch, self._pending = self._pending, []
                self._in_hand = batch
                try:
                    self._commit([d for c in batch for d in c.deliveries])
                    outcomes: list[BaseException | None] = [None] * len(batch)
                except Exception:
                    outcomes = [self._commit_alone(c.deliveries) for c in batch]
            for command, outcome in zip(batch, outcomes, strict=True):
                self._settle(command, command.deliveries if outcome is None else outcome)
            self._in_hand = []

    def _commit_alone(self, deliveries: list[Delivery]) -> BaseException | None:
        try:
            self._commit(deliveries)
        except Exception as exc:
            return exc
        return None

    def _commit(self, deliveries: list[Delivery]) -> None:
        # As a consumer of the log applies them: each id once, the first in the log (two commands of one
        # group commit may carry one derived id), so a projection rebuilt from the log is the same.
        deliveries = sorted(deliveries, key=lambda d: (d.partition, d.offset))
        seen = self.store.already_applied([d.envelope.id for d in deliveries])
        fresh: list[Delivery] = []
        for d in deliveries:
            if d.envelope.id not in seen:
                seen.add(d.envelope.id)
                fresh.append(d)
        with self.store.transaction() as tx:
            if fresh:
                self.projection.apply(tx, fresh)
                self.store.mark_applied(tx, [d.envelope.id for d in fresh])
                passed = self.reader.pass_over(tx, deliveries) if self.reader is not None else set()
                # the reader will still fetch these: it drops them by id, without decoding them
                own_ids = [d.envelope.id for d in fresh if (d.topic, d.partition) not in passed]
                if own_ids:
                    self.store.on_commit(lambda: self.store.remember_own(own_ids))
            self.store.save_subjects(tx, [(self.topic, d.envelope.subject, d.envelope.seq, d.partition, d.offset)
                                          for d in deliveries])
