"""Running a projection from topics with exactly-once effects and no Kafka transactions.

The loop: fetch a batch; decode and validate each record (what fails goes to `<topic>.dlq` with the
reason and source offset in headers); drop event ids already applied; apply the rest to the DuckDB
projection and store the consumed offsets and applied ids in the same transaction. On start the
runner assigns its partitions and seeks to the offsets stored in DuckDB, not Kafka's committed ones.
A record is dead-lettered before the transaction that moves past it (never skipped without its dead letter), so
a new process that reads its batch again (after a crash before COMMIT) sends it again: the DLQ is at least once,
and every copy bears the same `dlq_id` header (readers collapse them, deadletters.py). `dead_count` counts a
record once that transaction has committed.
"Caught up" is judged from the fetch high-water mark (the local broker's end_offsets is wrong); in group
mode a rebalance that hands it partitions to read up clears it until they are read to that mark again.
The writer of the same process moves the runner's offset past the events it has just applied, in its
own transaction (`pass_over`), so the runner does not fetch what its process wrote.

A projection bug must not stall a partition: when applying a batch raises, the batch is rolled back
and re-applied one event per transaction, and the event that raises goes to the DLQ. Anything else that
fails a batch (the broker, the database, a bug) is logged, and the batch is read again from the stored
positions after a pause that doubles up to 30 s; `failing` says why meanwhile (the service's /readyz
answers 503 with it). A listener that raises after COMMIT is logged; the batch stays applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import duckdb
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from datacoop.bus.deadletters import dead_letter_id
from datacoop.bus.publisher import Publisher
from datacoop.events.codec import DecodeError, decode
from datacoop.events.envelope import Envelope
from datacoop.events.registry import REGISTRY, Event, EventRegistry
from datacoop.store import AfterCommitFailed, CommitFailed, ProjectionStore
from datacoop.topics import dlq

log = logging.getLogger("datacoop.bus")

RETRY_PAUSE_S = 0.5  # after a failed batch; doubles on each failure in a row
# aiokafka does not raise when the broker cannot be reached: a fetch that fails is logged and answers nothing.
# A runner with nothing in hand whose partitions have had no fetch answered for this long says so in `failing`.
BROKER_SILENT_S = 10.0
WRITER_HEADER = "dc_writer"  # the instance id a Writer puts on each record it publishes
# An event on a topic this service writes, by a writer not of this process, stamped this long after the runner
# started, comes from another live instance (older ones are a previous run's; the margin covers clock skew)
OTHER_WRITER_MARGIN_MS = 30_000
LOOP_HELD_MS = 1000  # a gap between polls longer than this starts the silence count again (nothing was read)
RETRY_PAUSE_MAX_S = 30.0
# Failures of the database itself, not of an event's effects: a batch that meets one is retried whole, never
# taken apart and dead-lettered event by event.
DATABASE_FAULTS = (duckdb.IOException, duckdb.OutOfMemoryException, duckdb.FatalException,
                   duckdb.InterruptException, duckdb.PermissionException, CommitFailed)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A decoded, validated event and where it lies in the log. Read the event from `event`: the
    envelope's `data` may be the raw dict or, when decoded in one pass, the event model itself."""

    topic: str
    partition: int
    offset: int
    envelope: Envelope
    event: Event


class Projection(Protocol):
    def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
        """Write the effects of `deliveries` (in log order per partition) inside transaction `tx`."""


@dataclass(slots=True)
class _Fetched:
    record: ConsumerRecord[bytes, bytes]
    delivery: Delivery | None
    error: str | None
    dead: Delivery | None = None  # decoded, then dead-lettered because the projection failed on it


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector over a synchronous burst of allocations (decoding a batch
    makes tens of thousands of short-lived objects, which would trigger collections that scan the
    whole heap of a service holding large projections). Reference counting still frees everything
    acyclic at once; collection resumes at the end of the block. Never hold it across an await."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class LogMismatch(RuntimeError):
    """The positions stored with the projection do not fit the log: it was built from another one. Reading on
    would skip events or apply a second log on top of the first; the runner reads nothing instead, and asks
    again after its pause (a new leader may briefly report an older end of the log)."""


class ConsumerRunner:
    def __init__(
        self,
        *,
        bootstrap: str,
        store: ProjectionStore,
        projection: Projection,
        topics: list[str],
        consumer_name: str,
        dlq_publisher: Publisher,
        registry: EventRegistry = REGISTRY,
        group_id: str | None = None,
        writes_topics: frozenset[str] = frozenset(),
        max_records: int = 5000,
        fetch_timeout_ms: int = 200,
        on_applied: Callable[[list[Delivery]], None] | None = None,
        broker_silent_s: float = BROKER_SILENT_S,
    ) -> None:
        self.store = store
        self.projection = projection
        self.topics = topics
        self.consumer_name = consumer_name
        self.registry = registry
        self.group_id = group_id
        self.writes_topics = writes_topics
        self.max_records = max_records
        self.fetch_timeout_ms = fetch_timeout_ms
        self.broker_silent_s = broker_silent_s
        self._listeners: list[Callable[[list[Delivery]], None]] = [on_applied] if on_applied else []
        self._dlq = dlq_publisher
        self._config = dict(
            bootstrap_servers=bootstrap,
            client_id=f"datacoop-{consumer_name}",
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="none",  # every position is set by a seek; outside the log is an error
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        self._consumer: AIOKafkaConsumer | None = None  # made in start(), on the loop
        self._positions: dict[TopicPartition, int] = {}
        self._unchecked: dict[TopicPartition, int] = {}  # stored positions not yet held against the log's end
        # pass_over moved these positions past the writer's events at this time (unix ms); until a fetch sent after
        # it answers (the second answer after it: `read_past`), a position past the high-water mark is expected
        self._passed_ms: dict[TopicPartition, int] = {}
        self._answered_after_pass: dict[TopicPartition, int] = {}
        # silence is counted from the later of a partition's last fetch answer and this (unix ms): the start, a seek
        # (fetches in flight are dropped), a poll that returned records (a partition with records buffered is
        # not fetched), a rebalance's assignment
        self._quiet_since_ms = 0
        self._started_ms = 2**62  # set by start(): until then no event counts as another instance's
        self._polled_ms = 0  # when the last poll returned (unix ms)
        self.own_writers: set[bytes] = set()  # the `dc_writer` ids of this process's writers (Writer adds its own)
        self.other_writer: str | None = None  # what another live instance wrote, once seen (it stays: restart)
        self.silent: str | None = None  # the broker's silence after the last poll (broker_silence), or None
        self._answered_ms: dict[TopicPartition, int] = {}  # each partition's last fetch answer seen (unix ms)
        # Records sent to the DLQ (acked) whose batch has not committed yet: a retry of the batch in this process
        # does not send them again. (A new process does: the DLQ is at least once; `dlq_id` tells the copies.)
        self._dead_sent: set[tuple[str, int, int]] = set()
        self._in_hand = False  # a fetched batch not yet committed: Kafka's positions run ahead of ours
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()
        self.applied_count = 0
        self.dead_count = 0  # records this process moved past with their dead letter sent (committed)
        self.failing: str | None = None  # why the last poll failed, until one succeeds

    @property
    def _kafka(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError(f"consumer {self.consumer_name} not started; call `await runner.start()` first")
        return self._consumer

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._quiet_since_ms = self._started_ms = _now_ms()
        self._consumer = AIOKafkaConsumer(**self._config)
        await self._consumer.start()
        if self.group_id is None:
            await self._kafka.topics()  # refreshes metadata so partitions are known
            tps = []
            for topic in self.topics:
                parts = self._kafka.partitions_for_topic(topic)
                if not parts:
                    raise RuntimeError(f"topic {topic} does not exist; create it first (ensure_topics)")
                tps += [TopicPartition(topic, p) for p in sorted(parts)]
            self._kafka.assign(tps)
            self.seek_to_stored(tps)
        else:
            self._kafka.subscribe(self.topics, listener=_SeekOnAssign(self))

    def add_listener(self, listener: Callable[[list[Delivery]], None]) -> None:
        """Call `listener` with the events of each committed batch (after COMMIT), after those added before."""
        self._listeners.append(listener)

    def seek_to_stored(self, tps: list[TopicPartition]) -> None:
        stored = self.store.offsets(self.consumer_name)
        for tp in tps:
            offset = stored.get((tp.topic, tp.partition), 0)
            self._kafka.seek(tp, offset)
            self._positions[tp] = offset
            self._unchecked[tp] = offset
        self._quiet_since_ms = _now_ms()

    def forget(self, revoked: set[TopicPartition]) -> None:
        """Group mode: another instance reads `revoked` now; a retry must not seek them, nor readiness wait on them."""
        for tp in revoked:
            self._positions.pop(tp, None)
            self._unchecked.pop(tp, None)
            self._passed_ms.pop(tp, None)
            self._answered_after_pass.pop(tp, None)
        self._dead_sent = {(topic, partition, offset) for topic, partition, offset in self._dead_sent
                           if TopicPartition(topic, partition) not in revoked}

    def recheck_caught_up(self, assigned: set[TopicPartition]) -> None:
        """Group mode: a partition just assigned starts at its stored position, which may lie far behind its end
        (another instance read it, or nobody did for a while). Unless every one is known to start at its end, the
        runner is not caught up until a fetch shows it has read them to the high-water mark (`_update_caught_up`)."""
        for tp in assigned:
            highwater = self._kafka.highwater(tp)
            if highwater is None or self._positions.get(tp, 0) < highwater:
                self.caught_up.clear()
                return

    def run_in_background(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name=f"consumer-{self.consumer_name}")
        return self._task

    @property
    def ended(self) -> bool:
        """Its background task (run_in_background) has ended: it no longer reads the log."""
        return self._task is not None and self._task.done()

    async def run(self) -> None:
        pause = RETRY_PAUSE_S
        while not self._stopping:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The batch in hand was abandoned before its transaction (or committed, when only what
                # follows COMMIT failed): read on from the stored positions, which say which.
                failing = f"{type(exc).__name__}: {exc}"
                again, self.failing = failing == self.failing, failing
                if isinstance(exc, LogMismatch):  # the operator's to mend, not a bug: the message says how
                    log.error("consumer %s reads nothing%s: %s; asking again in %.1f s", self.consumer_name,
                              " (still)" if again else "", failing, pause)
                elif isinstance(exc, KafkaError | OSError) or again:  # a traceback once per failure, not per retry
                    log.warning("consumer %s: %s%s; retrying from the stored positions in %.1f s", self.consumer_name,
                                failing, " (again)" if again else "", pause)
                else:
                    log.exception("consumer %s: a batch failed (%s); retrying from the stored positions in %.1f s",
                                  self.consumer_name, failing, pause)
                self._rewind()
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_PAUSE_MAX_S)
            else:
                silent = self.silent = self.broker_silence()
                was_silent = (self.failing or "").startswith("BrokerSilent")
                if silent is not None and not was_silent:  # once when it falls silent (the seconds change)
                    log.warning("consumer %s: %s", self.consumer_name, silent)
                elif silent is None and self.failing is not None and self.other_writer is None:
                    log.info("consumer %s reads the log again", self.consumer_name)
                self.failing = self.other_writer or silent
                pause = RETRY_PAUSE_S

    def _saw_other_writer(self, rec: ConsumerRecord[bytes, bytes], writer: bytes) -> None:
        if self.other_writer is None:
            when = datetime.fromtimestamp(rec.timestamp / 1000, UTC).isoformat(timespec="seconds")
            who = writer.decode(errors="replace")[:80]
            self.other_writer = (
                f"AnotherWriter: another instance of this service (host/pid/writer {who}) "
                f"wrote {rec.topic}[{rec.partition}]@{rec.offset} at {when}: only one instance of a service may run, "
                "as each decides commands on its own projection. Stop the other, then restart this one")
            log.error("consumer %s: %s", self.consumer_name, self.other_writer)

    def broker_silence(self) -> str | None:
        """Why the broker counts as unreachable, or None: no fetch of a partition it holds has been answered for
        BROKER_SILENT_S (aiokafka logs a failed fetch and returns nothing, so a poll alone never fails), counted
        per partition from the later of its last answer and `_quiet_since_ms` (no fetch is sent for a partition
        whose records are buffered, nor kept after a seek). (`broker_silent_s`, BROKER_SILENT_S by default.)"""
        if self._consumer is None or self._in_hand:
            return None
        now = _now_ms()
        for tp in self._kafka.assignment():  # remembered here: aiokafka may forget it (a reset partition state)
            answered = self._kafka.last_poll_timestamp(tp)
            if answered is not None and answered > self._answered_ms.get(tp, 0):
                self._answered_ms[tp] = answered
        silent = sorted(((now - max(self._answered_ms.get(tp, 0), self._quiet_since_ms), tp)
                         for tp in self._kafka.assignment()), key=lambda x: x[0], reverse=True)
        silent = [(age, tp) for age, tp in silent if age >= self.broker_silent_s * 1000]
        if not silent:
            return None
        which = ", ".join(f"{tp.topic}[{tp.partition}]" for _, tp in silent[:3]) + (" …" if len(silent) > 3 else "")
        servers = self._config["bootstrap_servers"]
        return (f"BrokerSilent: no fetch of {which} answered for {silent[0][0] / 1000:.0f} s: the broker ({servers}) "
                "is down or out of reach (aiokafka's log says which); reading goes on when it answers")

    def _rewind(self) -> None:
        """Seek every partition still assigned to its stored position (what was fetched beyond is read again)."""
        assigned = self._kafka.assignment()
        for tp, offset in self._positions.items():
            if tp in assigned:
                self._kafka.seek(tp, offset)
        self._quiet_since_ms = _now_ms()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in hand (or abandon it before its transaction), then close."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
            except asyncio.CancelledError:
                pass
            except Exception:  # it ended on an error it could not retry: say so, and close all the same
                log.exception("consumer %s had stopped on an error", self.consumer_name)
        if self._consumer is not None:
            try:
                await self._consumer.stop()
            except asyncio.CancelledError:  # aiokafka lets its own cancelled fetch out when the broker is gone
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this stop itself was cancelled
                log.warning("consumer %s: its Kafka client closed with a fetch cut short (the broker unreachable?)",
                            self.consumer_name)

    # -- one batch ---------------------------------------------------------------------------
    async def poll_once(self) -> int:
        now = _now_ms()
        if now - self._polled_ms > LOOP_HELD_MS:  # the event loop was held (or no one polled): answers may wait unread
            self._quiet_since_ms = now
        try:
            batch = await self._kafka.getmany(timeout_ms=self.fetch_timeout_ms, max_records=self.max_records)
        except OffsetOutOfRangeError as exc:  # Apache Kafka: a stored position outside the log
            tp, offset = next(iter(exc.args[0].items())) if exc.args and isinstance(exc.args[0], dict) else (None, None)
            raise LogMismatch(self._mismatch(tp, offset, "lies outside the log")) from exc
        self._polled_ms = _now_ms()
        if self._polled_ms - now > self.fetch_timeout_ms + LOOP_HELD_MS:  # held while it waited
            self._quiet_since_ms = self._polled_ms
        applied = 0
        if batch:
            self._in_hand = True
            try:
                with gc_paused():
                    fetched = self._decode([rec for msgs in batch.values() for rec in msgs])
                applied = await self._apply(fetched)
            finally:
                self._in_hand = False
                self._quiet_since_ms = _now_ms()
        self._update_caught_up()
        return applied

    def read_past(self, topic: str, since_ms: int, first_fetch: dict[int, int]) -> bool:
        """Whether every partition of `topic` it holds is applied up to the high-water mark of a fetch the broker
        answered for a request sent after `since_ms` (unix ms): a second fetch answered since then, as the first
        may have been sent before. A fetch that fails answers nothing (aiokafka only logs it), so a reader
        cut off from the broker never passes. Call again with the same `first_fetch` (partition -> the first
        answer's time) until True."""
        passed = True
        for tp in self._kafka.assignment():
            if tp.topic != topic:
                continue
            fetched_ms = self._kafka.last_poll_timestamp(tp)
            if fetched_ms is not None and fetched_ms > since_ms:
                first_fetch.setdefault(tp.partition, fetched_ms)
            fresh = fetched_ms is not None and fetched_ms > first_fetch.get(tp.partition, fetched_ms)
            highwater = self._kafka.highwater(tp)
            if not fresh or highwater is None or self._positions.get(tp, 0) < highwater:
                passed = False
        return passed

    def pass_over(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> set[TopicPartition]:
        """The writer of this process has just applied `deliveries` (at the offsets they landed at) in
        transaction `tx`. Where this runner's next offset on a partition is the first of them and they
        run on without a gap, its offset moves past them in `tx` and it seeks there after COMMIT: it
        never fetches, parses and drops what its own process wrote. Anything else (a batch in hand,
        another writer's event among them, a read already past them) is left to the normal read, which
        drops the duplicates. Returns the partitions passed over."""
        if self._consumer is None or self._in_hand or self._stopping:
            return set()
        landed: dict[tuple[str, int], set[int]] = {}
        for d in deliveries:
            landed.setdefault((d.topic, d.partition), set()).add(d.offset)
        assigned = self._kafka.assignment()
        moved: dict[TopicPartition, int] = {}
        # This trusts the offsets the publisher reports (a batch's base offset + the record's index in
        # it, as the broker assigns them): a wrong one could pass over another writer's event.
        for (topic, partition), offsets in landed.items():
            tp = TopicPartition(topic, partition)
            first, last = min(offsets), max(offsets)
            if tp in assigned and self._positions.get(tp) == first and last - first + 1 == len(offsets):
                moved[tp] = last + 1
        if moved:
            self.store.save_offsets(tx, self.consumer_name, {(tp.topic, tp.partition): o for tp, o in moved.items()})
            self.store.on_commit(partial(self._seek_past, moved))
        return set(moved)

    def _seek_past(self, moved: dict[TopicPartition, int]) -> None:
        now = self._quiet_since_ms = _now_ms()
        for tp, offset in moved.items():  # what was fetched for the old position is discarded by aiokafka
            self._positions[tp] = offset
            self._kafka.seek(tp, offset)
            self._passed_ms[tp] = now
            self._answered_after_pass.pop(tp, None)

    def _past_the_end_explained(self, tp: TopicPartition) -> bool:
        """Whether this runner's position on `tp` may lie past the high-water mark it last saw because the writer's
        pass_over moved it there and no fetch sent since then has answered yet (read_past's rule: the second
        answer after the move)."""
        passed = self._passed_ms.get(tp)
        if passed is None:
            return False
        fetched: int | None = self._kafka.last_poll_timestamp(tp)
        if fetched is None or fetched <= passed:
            return True
        first = self._answered_after_pass.setdefault(tp, fetched)
        return fetched <= first

    def _decode(self, records: list[ConsumerRecord[bytes, bytes]]) -> list[_Fetched]:
        """Each event's envelope and data in one validation when its `ce_type` header names a current
        type (the envelope's own `type` must agree); otherwise, or when that fails, the envelope alone
        (a bad one fails alone) and then the data of each type in one call, upcast where old, which
        also words the reason a bad event goes to the DLQ with. Events this process's writer has
        already applied are recognised by their `ce_id` header and not decoded at all (their offsets
        still move)."""
        fetched: list[_Fetched] = []
        by_type: dict[str, list[tuple[_Fetched, Envelope]]] = {}  # data not yet validated
        own = self.store.own_committed
        typed_envelope = self.registry.typed_envelope
        for rec in records:
            f = _Fetched(rec, None, None)
            fetched.append(f)
            event_id = ce_type = None
            for key, raw in rec.headers or ():
                if raw is None:  # Kafka allows a header without a value
                    continue
                if key == "ce_id":
                    event_id = raw.decode(errors="replace")
                elif key == "ce_type":
                    ce_type = raw.decode(errors="replace")
                elif key == WRITER_HEADER and raw not in self.own_writers and rec.topic in self.writes_topics \
                        and self.own_writers and rec.timestamp > self._started_ms + OTHER_WRITER_MARGIN_MS:
                    self._saw_other_writer(rec, raw)
            if own and event_id is not None and event_id in own:
                del own[event_id]  # applied already by the writer: only the offset moves
                continue
            if ce_type is not None and rec.value and (typed := typed_envelope(ce_type)):
                try:
                    env = typed.model_validate_json(rec.value)
                except ValidationError:
                    pass  # the two-step path below says what is wrong
                else:
                    if env.type == ce_type:
                        f.delivery = Delivery(rec.topic, rec.partition, rec.offset, env,
                                              env.data)  # type: ignore[arg-type]  # the event
                        continue
            try:
                env = decode(rec.value)
            except DecodeError as exc:
                f.error = f"DecodeError: {exc}"
                continue
            by_type.setdefault(env.type, []).append((f, env))
        for type_name, pending in by_type.items():
            results = self.registry.decode_many(type_name, [env.data for _, env in pending])
            for (f, env), result in zip(pending, results, strict=True):
                if isinstance(result, Exception):
                    f.error = f"{type(result).__name__}: {result}"
                else:
                    f.delivery = Delivery(f.record.topic, f.record.partition, f.record.offset, env, result)
        return fetched

    async def _apply(self, fetched: list[_Fetched]) -> int:
        dead = [f for f in fetched if f.error is not None]
        for f in dead:
            await self._dead_letter(f.record, f.error or "")
        async with self.store.lock:
            try:
                with gc_paused():
                    return self._commit(fetched)
            except DATABASE_FAULTS:
                raise  # not the events' fault: the whole batch is read again after a pause
            except Exception as exc:  # a projection bug: isolate the event that causes it
                log.warning("batch apply failed (%s); re-applying one event at a time", exc, exc_info=True)
        applied = 0
        for f in fetched:
            async with self.store.lock:
                try:
                    applied += self._commit([f])
                    continue
                except DATABASE_FAULTS:
                    raise
                except Exception as exc:
                    reason = f"projection failed: {type(exc).__name__}: {exc}"
            await self._dead_letter(f.record, reason)
            async with self.store.lock:
                self._commit([_Fetched(f.record, None, reason, dead=f.delivery)])
        return applied

    def _commit(self, fetched: list[_Fetched]) -> int:
        """One transaction: fresh events applied, their ids marked, the offsets moved past the batch."""
        candidates = [f.delivery for f in fetched if f.delivery is not None]
        seen = self.store.already_applied([d.envelope.id for d in candidates])
        for event_id in seen:  # read back before the writer remembered it: it need not wait for us
            self.store.own_committed.pop(event_id, None)
        fresh: list[Delivery] = []
        for d in candidates:
            if d.envelope.id not in seen:
                seen.add(d.envelope.id)
                fresh.append(d)
        offsets: dict[tuple[str, int], int] = {}
        dead_letters = 0
        for f in fetched:
            offsets[(f.record.topic, f.record.partition)] = f.record.offset + 1
            dead_letters += f.error is not None
        try:
            self._transaction(fetched, candidates, fresh, offsets)
        except AfterCommitFailed:  # the batch is in the database; only an in-memory cache missed it
            log.exception("consumer %s: a batch committed, but a callback after COMMIT failed", self.consumer_name)
        for (topic, partition), offset in offsets.items():
            self._positions[TopicPartition(topic, partition)] = offset
        self.applied_count += len(fresh)
        self.dead_count += dead_letters
        if self._dead_sent:  # what this transaction moved past needs no second send
            self._dead_sent = {(topic, partition, offset) for topic, partition, offset in self._dead_sent
                               if offset >= self._positions.get(TopicPartition(topic, partition), 0)}
        if fresh:
            for listener in self._listeners:
                try:
                    listener(fresh)
                except Exception:  # the batch is committed: each listener still gets it, the next batch too
                    log.exception("consumer %s: listener %r failed on a committed batch of %d event(s)",
                                  self.consumer_name, listener, len(fresh))
        return len(fresh)

    def _transaction(self, fetched: list[_Fetched], candidates: list[Delivery], fresh: list[Delivery],
                     offsets: dict[tuple[str, int], int]) -> None:
        with self.store.transaction() as tx:
            if fresh:
                self.projection.apply(tx, fresh)
                self.store.mark_applied(tx, [d.envelope.id for d in fresh])
            # Every seq the log holds on a topic this service writes, duplicates' and dead-lettered events'
            # too: a reaction re-sent under its derived id after a lost ack lands again with the next seq,
            # and a rebuild that forgot a seq would hand it out again.
            own = [(d.topic, d.envelope.subject, d.envelope.seq, d.partition, d.offset)
                   for d in [*candidates, *(f.dead for f in fetched if f.dead is not None)]
                   if d.topic in self.writes_topics]
            own += [row for f in fetched if f.error is not None and f.dead is None
                    and f.record.topic in self.writes_topics and (row := _seq_of_undecodable(f.record))]
            if own:
                self.store.save_subjects(tx, own)
            self.store.save_offsets(tx, self.consumer_name, offsets)

    async def _dead_letter(self, rec: ConsumerRecord[bytes, bytes], reason: str) -> None:
        """Send `rec` to its DLQ with the reason, unless this process already did since its batch last committed."""
        source = (rec.topic, rec.partition, rec.offset)
        if source in self._dead_sent:
            return
        headers = [
            *[(k, v) for k, v in (rec.headers or ()) if not k.startswith("dlq_")],
            ("dlq_error", reason.encode()[:4000].decode(errors="ignore").encode()),  # whole characters
            ("dlq_source_topic", rec.topic.encode()),
            ("dlq_source_partition", str(rec.partition).encode()),
            ("dlq_source_offset", str(rec.offset).encode()),
            ("dlq_consumer", self.consumer_name.encode()),
            ("dlq_id", dead_letter_id(self.consumer_name, *source).encode()),
        ]
        await self._dlq.send_raw(dlq(rec.topic), rec.value, key=rec.key, headers=headers)
        self._dead_sent.add(source)
        log.warning("dead-lettered %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, reason)

    def _update_caught_up(self) -> None:
        assignment = self._kafka.assignment()
        if not assignment:
            return
        behind = False
        for tp in assignment:
            hw = self._kafka.highwater(tp)
            if hw is not None and tp in self._unchecked:  # the first fetch since the seek to a stored position
                stored = self._unchecked.pop(tp)
                if stored > hw:  # the local broker answers a fetch past the end with nothing, no error
                    self._unchecked[tp] = stored  # and again on the retry
                    raise LogMismatch(self._mismatch(tp, stored, f"is past the log's end, offset {hw}"))
            position = self._positions.get(tp, 0)
            if hw is not None and position > hw and not self._past_the_end_explained(tp):
                # the log got shorter under the runner: a broker whose log was lost, a topic deleted and made again
                raise LogMismatch(self._mismatch(tp, position, f"is past the log's end, offset {hw}"))
            if hw is not None and position <= hw:
                self._passed_ms.pop(tp, None)  # the log holds what the writer passed over
            behind = behind or hw is None or position < hw
        if not behind:
            self.caught_up.set()

    def _mismatch(self, tp: TopicPartition | None, offset: int | None, how: str) -> str:
        where = f"{tp.topic}[{tp.partition}]" if tp is not None else "a partition"
        return (f"{where}: the position this projection stored, offset {offset}, {how}: its database "
                f"({self.store.path}) was built from another log (a broker whose log was lost or replaced?), or the "
                "topic's oldest events were deleted (an event-sourced topic must keep every event). Delete the "
                "database to rebuild the state from this log, or point DATACOOP_BOOTSTRAP at the broker that holds "
                "the log it was built from")

    def lag(self) -> dict[str, Any]:
        """Per partition: next offset to read and the last known high-water mark."""
        if self._consumer is None:
            return {}
        return {f"{tp.topic}[{tp.partition}]": {"position": self._positions.get(tp),
                                                "highwater": self._kafka.highwater(tp)}
                for tp in self._kafka.assignment()}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _seq_of_undecodable(rec: ConsumerRecord[bytes, bytes]) -> tuple[str, str, int, int, int] | None:
    """(topic, subject, seq, partition, offset) of an event that failed to decode or validate, read from
    its JSON without the models, where it holds a string subject and a positive integer seq: the log holds
    that seq whatever the rest says, and the writer must not hand it out again."""
    try:
        doc = orjson.loads(rec.value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    subject, seq = doc.get("subject"), doc.get("seq")
    if not isinstance(subject, str) or not subject or type(seq) is not int or seq < 1 or seq >= 2**63:
        return None
    return (rec.topic, subject, seq, rec.partition, rec.offset)


class _SeekOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    """Group mode (Apache Kafka scale-out): on assignment, seek to the offsets stored in DuckDB."""

    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.runner.forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.runner.seek_to_stored(sorted(assigned))
        self.runner.recheck_caught_up(assigned)
