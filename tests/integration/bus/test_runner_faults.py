"""The consumer runner keeps reading through what is not an event's fault, and says when it cannot.

A record with null header values, an upcaster that raises, a listener that raises, a database that fails
for a while, a fetch error after a rebalance took partitions away: each once ended the runner's task in
silence (every partition stopped, /readyz still 200) or dead-lettered good events.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from datacoop.bus import ConsumerRunner, Publisher
from datacoop.bus.consumer import Delivery
from datacoop.events.codec import header
from datacoop.events.envelope import Envelope
from datacoop.events.registry import Event, EventRegistry, event
from datacoop.kit.app import create_app
from datacoop.kit.runtime import ServiceRuntime
from datacoop.kit.settings import ServiceSettings
from datacoop.store import ProjectionStore
from datacoop.testing.ledger import LEDGER_REGISTRY, LEDGER_SQL, LedgerProjection, make_envelope
from datacoop.topics import MEMBERS, qualified
from infra.local import Broker, start_broker
from tests.integration.bus.ledger_helpers import drain, ledger_topic, read_back
from tests.integration.bus.test_dead_letters import _read_all


async def _send_raw(bootstrap: str, topic: str, value: bytes, headers: list[tuple[str, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k", headers=headers)
    finally:
        await producer.stop()


async def _until(condition: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_null_header_values_are_read_past_and_the_record_dead_lettered(broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish(topic, make_envelope("a", 1, 5))
        await _send_raw(broker.bootstrap, topic, b"{}", [("ce_id", None), ("ce_type", None)])
        await pub.publish(topic, make_envelope("a", 2, 7))
        runner = await read_back(broker, pub, store, topic, "nulls")
    assert store.conn.execute("SELECT total_units, events FROM totals").fetchone() == (12, 2)
    assert runner.dead_count == 1
    (dead,) = await _read_all(broker.bootstrap, f"{topic}.dlq", 1)
    assert "DecodeError" in (header(dead.headers, "dlq_error") or "")
    assert header(dead.headers, "ce_id") is None


REGISTRY = EventRegistry()


@event("datacoop.test.thing", 1, topic="t", registry=REGISTRY)
class ThingV1(Event):
    a: int | None = None


@event("datacoop.test.thing", 2, topic="t", registry=REGISTRY)
class ThingV2(Event):
    b: int


REGISTRY.register_upcaster("datacoop.test.thing", 1, lambda d: {"b": d["a"] + 1})  # a bug: `a` may be null


class Things:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
        self.seen += [d.event.b for d in deliveries]  # type: ignore[attr-defined]


async def test_an_upcaster_that_raises_dead_letters_its_event_alone(broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    things = Things()
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many(topic, [Envelope(source="test", type=ThingV1.type_name(), subject="s", seq=seq,
                                                data={"a": a}) for seq, a in [(1, 1), (2, None), (3, 5)]])
        runner = ConsumerRunner(bootstrap=broker.bootstrap, store=ProjectionStore(":memory:"), projection=things,
                                topics=[topic], consumer_name="up", dlq_publisher=pub, registry=REGISTRY)
        await runner.start()
        await drain(runner)
        await runner.stop()
    assert things.seen == [2, 6]
    (dead,) = await _read_all(broker.bootstrap, f"{topic}.dlq", 1)
    reason = header(dead.headers, "dlq_error") or ""
    assert "EventDataInvalid" in reason and "upcaster to v2 failed" in reason and "TypeError" in reason


async def test_a_listener_that_raises_neither_hides_the_batch_from_the_next_nor_dead_letters_it(
        broker: Broker, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    later: list[int] = []

    def broken(deliveries: list[Delivery]) -> None:
        raise RuntimeError("a listener's bug")

    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many(topic, [make_envelope("a", i, i) for i in range(1, 6)])
        runner = ConsumerRunner(bootstrap=broker.bootstrap, store=store, projection=LedgerProjection(),
                                topics=[topic], consumer_name="listen", dlq_publisher=pub, registry=LEDGER_REGISTRY)
        runner.add_listener(broken)
        runner.add_listener(lambda ds: later.extend(d.event.amount_units for d in ds))  # type: ignore[attr-defined]
        await runner.start()
        with caplog.at_level(logging.ERROR, logger="datacoop.bus"):
            await drain(runner)
        await runner.stop()
    assert later == [1, 2, 3, 4, 5]
    assert runner.dead_count == 0 and runner.applied_count == 5
    assert store.conn.execute("SELECT total_units, events FROM totals").fetchone() == (15, 5)
    assert any("listener" in r.getMessage() and r.exc_info for r in caplog.records)


class FailingDisk(LedgerProjection):
    """A projection whose database fails (as a full or lost disk would) while `broken` is set."""

    broken = True

    def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
        if self.broken:
            raise duckdb.IOException("could not write: No space left on device")
        super().apply(tx, deliveries)


async def test_a_failing_database_is_retried_whole_and_readyz_says_why_meanwhile(
        broker: Broker, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Not the events' fault: nothing goes to the DLQ; /readyz answers 503 with the reason until a retry
    succeeds, then 200 with every event applied. The log has the traceback once, not once per retry."""
    settings = ServiceSettings(bootstrap=broker.bootstrap, topic_prefix=prefix + ".", data_dir=tmp_path)
    projection = FailingDisk()
    runtime = ServiceRuntime("probe", settings, lambda store: projection, reads=[MEMBERS], schema_sql=LEDGER_SQL)
    runtime.runner.registry = LEDGER_REGISTRY
    app = create_app(runtime, [], title="probe")
    topic = qualified(prefix + ".", MEMBERS)
    await runtime.start()
    try:
        await runtime.publisher.publish_many(topic, [make_envelope("m", i, 10) for i in range(1, 4)])
        await _until(lambda: runtime.runner.failing is not None, "the failing batch")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            refused = await client.get("/readyz")
            assert refused.status_code == 503 and not runtime.ready
            assert "No space left on device" in refused.json()["detail"]
            assert "IOException" in refused.json()["failing"]
            with caplog.at_level(logging.WARNING, logger="datacoop"):
                await _until(lambda: "(again)" in caplog.text, "the second failure")
            failed = [r for r in caplog.records if "No space left on device" in r.getMessage()]
            assert [r.exc_info is not None for r in failed][-1] is False, "a repeat is one line"
            projection.broken = False
            await _until(lambda: runtime.runner.applied_count == 3 and runtime.ready, "the retry", 40)
            ok = await client.get("/readyz")
        assert ok.status_code == 200 and ok.json()["failing"] is None
        assert runtime.runner.dead_count == 0
        assert runtime.store.conn.execute("SELECT total_units FROM totals").fetchone() == (30,)
    finally:
        await runtime.stop()


async def test_a_fetch_error_after_a_rebalance_does_not_seek_a_partition_given_away(
        broker: Broker, prefix: str) -> None:
    """Group mode: the partitions a rebalance takes away leave the runner's positions, so the retry after a
    fetch error seeks only what it still holds, and it reads on."""
    topic = await ledger_topic(broker, prefix, 2)

    def runner(pub: Publisher) -> ConsumerRunner:
        return ConsumerRunner(bootstrap=broker.bootstrap, store=ProjectionStore(":memory:", LEDGER_SQL),
                              projection=LedgerProjection(), topics=[topic], consumer_name="g", dlq_publisher=pub,
                              registry=LEDGER_REGISTRY, group_id=f"{prefix}-g")

    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many(topic, [make_envelope(f"s{i}", 1, 1) for i in range(20)])
        first, second = runner(pub), runner(pub)
        await first.start()
        task = first.run_in_background()
        try:
            await _until(lambda: len(first._kafka.assignment()) == 2 and first.applied_count == 20, "both partitions",
                         60)
            await second.start()
            second.run_in_background()
            await _until(lambda: len(first._kafka.assignment()) == 1 and len(second._kafka.assignment()) == 1,
                         "the rebalance", 60)
            assert set(first._positions) == first._kafka.assignment()
            fetch, failed = first._kafka.getmany, []

            async def flaky(*args: Any, **kwargs: Any) -> Any:
                if not failed:
                    failed.append(True)
                    raise KafkaConnectionError("connection reset")
                return await fetch(*args, **kwargs)

            first._kafka.getmany = flaky  # type: ignore[method-assign]
            await _until(lambda: bool(failed) and first.failing is None, "a poll after the error", 30)
            assert not task.done()
        finally:
            await second.stop()
            await first.stop()


async def test_a_projection_built_from_another_log_is_refused_not_caught_up(
        broker: Broker, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """Stored positions past the log's end (a broker whose log was lost, a database from elsewhere): the local
    broker answers such a fetch with nothing, and the runner called itself caught up while it skipped every
    event the log would get up to that offset. It says what is wrong, without a traceback (it is not a bug),
    and reads nothing."""
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    with store.transaction() as tx:
        store.save_offsets(tx, "elsewhere", {(topic, 0): 100})
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many(topic, [make_envelope("a", i, i) for i in range(1, 6)])
        runner = ConsumerRunner(bootstrap=broker.bootstrap, store=store, projection=LedgerProjection(),
                                topics=[topic], consumer_name="elsewhere", dlq_publisher=pub, registry=LEDGER_REGISTRY)
        await runner.start()
        runner.run_in_background()
        try:
            with caplog.at_level(logging.WARNING, logger="datacoop"):
                await _until(lambda: "(still)" in caplog.text, "the refusal, twice")
        finally:
            await runner.stop()
    said = [r for r in caplog.records if "reads nothing" in r.getMessage()]
    assert len(said) >= 2 and all(r.levelno == logging.ERROR and r.exc_info is None for r in said), said
    assert runner.failing is not None
    assert "LogMismatch" in runner.failing and "offset 100, is past the log's end, offset 5" in runner.failing
    assert "Delete the database to rebuild" in runner.failing
    assert not runner.caught_up.is_set() and runner.applied_count == 0


async def test_a_log_lost_under_a_running_runner_is_named_not_skipped(prefix: str) -> None:
    """The broker comes back with an empty log (Tansu keeps it in memory; a topic deleted and made again is the
    same): its offsets start again below the runner's position. Only the first fetch after a seek was checked,
    so the runner read on from its old position, skipped every event the new log held below it, and stayed
    ready. Now any fetch whose end lies below the position (no write of this process explains it) stops it."""
    broker = start_broker()
    store = ProjectionStore(":memory:", LEDGER_SQL)
    runner: ConsumerRunner | None = None
    try:
        topic = await ledger_topic(broker, prefix)
        async with Publisher(broker.bootstrap) as pub:
            await pub.publish_many(topic, [make_envelope("a", i, 1) for i in range(1, 6)])
        async with Publisher(broker.bootstrap) as dlq_pub:
            runner = ConsumerRunner(bootstrap=broker.bootstrap, store=store, projection=LedgerProjection(),
                                    topics=[topic], consumer_name="lost", dlq_publisher=dlq_pub,
                                    registry=LEDGER_REGISTRY)
            await runner.start()
            runner.run_in_background()
            await _until(lambda: runner is not None and runner.applied_count == 5, "the first log read")
            port = broker.port
            broker.stop()
            broker = start_broker(port=port)  # the same address, an empty log
            await ledger_topic(broker, prefix)
            async with Publisher(broker.bootstrap) as pub:
                await pub.publish_many(topic, [make_envelope("b", i, 100) for i in range(1, 4)])
            await _until(lambda: "LogMismatch" in (runner.failing or ""), "the mismatch to be named", 60)
            assert "offset 5, is past the log's end, offset 3" in (runner.failing or ""), runner.failing
            assert runner.applied_count == 5, "nothing of the new log is applied on top of the old one"
            await runner.stop()
            runner = None
    finally:
        if runner is not None:
            await runner.stop()
        broker.stop()
        store.close()


async def test_a_broker_that_answers_no_fetch_is_named_until_it_answers_again(
        prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka logs a failed fetch and returns nothing, so a poll never failed: /readyz answered 200 while
    the broker was down. A runner whose partitions have had no fetch answered for `broker_silent_s` says so in
    `failing` (readiness reads it), and clears it once the broker answers again."""
    broker = start_broker()
    store = ProjectionStore(":memory:", LEDGER_SQL)
    try:
        topic = await ledger_topic(broker, prefix)
        async with Publisher(broker.bootstrap) as dlq_pub:
            runner = ConsumerRunner(bootstrap=broker.bootstrap, store=store, projection=LedgerProjection(),
                                    topics=[topic], consumer_name="silent", dlq_publisher=dlq_pub,
                                    registry=LEDGER_REGISTRY, broker_silent_s=1.5)
            await runner.start()
            runner.run_in_background()
            caplog.set_level(logging.WARNING, logger="datacoop.bus")
            try:
                await _until(runner.caught_up.is_set, "the empty topic read")
                await asyncio.sleep(3)
                assert runner.failing is None, "a broker answering fetches of an idle topic is not silent"
                port = broker.port
                await asyncio.to_thread(broker.stop)  # the loop polls on meanwhile, as a service's would
                await _until(lambda: (runner.failing or "").startswith("BrokerSilent"), "the silence named", 30)
                assert f"no fetch of {topic}[0] answered for" in (runner.failing or "")
                assert f"the broker (127.0.0.1:{port}) is down or out of reach" in (runner.failing or "")
                await asyncio.sleep(2.5)
                said = [r for r in caplog.records if "BrokerSilent" in r.getMessage()]
                assert len(said) == 1, "said once when it falls silent, not once a second"
                broker = start_broker(port=port)
                await ledger_topic(broker, prefix)
                await _until(lambda: runner.failing is None, "reading again once the broker answers", 60)
            finally:
                await runner.stop()
    finally:
        broker.stop()
        store.close()


async def test_a_slow_catch_up_is_not_taken_for_a_silent_broker(broker: Broker, prefix: str) -> None:
    """No fetch is sent for a partition while its records are buffered: a projection slower than the silence
    bound made the first empty poll after a long catch-up count the whole of it as the broker's silence."""
    class Slow(LedgerProjection):
        def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
            time.sleep(0.8)  # the event loop is held, as a heavy projection holds it
            super().apply(tx, deliveries)

    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many(topic, [make_envelope(f"s{i % 50}", i // 50 + 1, 1) for i in range(6000)])
        runner = ConsumerRunner(bootstrap=broker.bootstrap, store=store, projection=Slow(), topics=[topic],
                                consumer_name="slow", dlq_publisher=pub, registry=LEDGER_REGISTRY, max_records=1000,
                                broker_silent_s=1.5)
        await runner.start()
        runner.run_in_background()
        seen: list[str] = []
        try:
            deadline = time.monotonic() + 60
            while not (runner.caught_up.is_set() and runner.applied_count == 6000):
                assert time.monotonic() < deadline, "the catch-up did not end"
                seen.append(runner.failing or "")
                await asyncio.sleep(0.05)
            for _ in range(20):  # and the empty polls after it
                seen.append(runner.failing or "")
                await asyncio.sleep(0.05)
        finally:
            await runner.stop()
            store.close()
    assert not [s for s in seen if s], f"a healthy broker was called silent: {set(seen)}"


async def test_a_command_while_the_broker_is_silent_is_refused_at_once_with_nothing_written(
        prefix: str, tmp_path: Path) -> None:
    """A command sent while the broker was down waited out the producer's 40 s request timeout before its 503.
    Once the runner has found the broker silent, the writer refuses at once (503 event-log-unavailable), before
    deciding or taking a seq; /readyz says the same."""
    from datacoop.errors import EventLogSilent
    from datacoop.testing.ledger import AmountRecorded

    broker = start_broker()
    settings = ServiceSettings(bootstrap=broker.bootstrap, topic_prefix=prefix + ".", data_dir=tmp_path)
    runtime = ServiceRuntime("probe", settings, lambda store: LedgerProjection(), writes=MEMBERS, schema_sql=LEDGER_SQL)
    runtime.runner.registry = LEDGER_REGISTRY
    runtime.runner.broker_silent_s = 1.5
    await runtime.start()
    try:
        await _until(lambda: runtime.ready, "the runtime to be ready")
        assert runtime.writer is not None
        await runtime.writer.execute("a", lambda: [AmountRecorded(amount_units=1)])
        await asyncio.to_thread(broker.stop)
        await _until(lambda: (runtime.runner.failing or "").startswith("BrokerSilent"), "the silence named", 30)
        assert not runtime.ready
        decided: list[bool] = []
        started = time.monotonic()
        with pytest.raises(EventLogSilent, match="nothing was written: retry once it is back") as refused:
            await runtime.writer.execute("a", lambda: decided.append(True) or [AmountRecorded(amount_units=2)])
        assert time.monotonic() - started < 1.0 and decided == [] and refused.value.status == 503
        assert refused.value.slug == "event-log-unavailable"
    finally:
        await asyncio.wait_for(runtime.stop(), 60)
        broker.stop()


async def test_a_commit_the_disk_refuses_is_retried_whole_never_dead_lettered(
        broker: Broker, prefix: str, tmp_path: Path) -> None:
    """The database's log could not be written (an operator found it with a folder it could not write): COMMIT
    failed, the runner took the batch for a projection bug, re-applied it event by event and dead-lettered a
    valid event. A failed COMMIT is the database's fault: the batch waits and is read again whole."""
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(tmp_path / "p.duckdb", LEDGER_SQL)
    store.conn.execute("CHECKPOINT")  # no log file: the next commit makes one, where a folder now stands
    blocker = tmp_path / "p.duckdb.wal"
    blocker.mkdir()
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many(topic, [make_envelope("a", i, 1) for i in range(1, 4)])
        runner = ConsumerRunner(bootstrap=broker.bootstrap, store=store, projection=LedgerProjection(), topics=[topic],
                                consumer_name="disk", dlq_publisher=pub, registry=LEDGER_REGISTRY)
        dead: list[str] = []
        send = runner._dead_letter

        async def counted(rec: Any, reason: str) -> None:
            dead.append(reason)
            await send(rec, reason)

        runner._dead_letter = counted  # type: ignore[method-assign]
        await runner.start()
        runner.run_in_background()
        try:
            await _until(lambda: "CommitFailed" in (runner.failing or ""), "the commit failure named")
            assert runner.applied_count == 0 and runner.dead_count == 0
            blocker.rmdir()
            await _until(lambda: runner.applied_count == 3 and runner.failing is None, "the batch applied", 40)
            assert runner.dead_count == 0 and dead == [], dead
        finally:
            await runner.stop()
    store.close()


async def test_a_second_live_instance_is_found_and_commands_refused(
        broker: Broker, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two instances of a service on their own data folders both accepted one nonce: each decides on its own
    projection. A writer stamps its records with its instance id; a reader that finds another live instance's id
    on its own service's topic says so (failing, /readyz 503) and its writer refuses commands. A previous run's
    events (stamped before this one started) are no such sign."""
    from datacoop.bus import consumer
    from datacoop.errors import AnotherInstance
    from datacoop.testing.ledger import AmountRecorded

    def runtime(folder: str) -> ServiceRuntime:
        settings = ServiceSettings(bootstrap=broker.bootstrap, topic_prefix=prefix + ".", data_dir=tmp_path / folder)
        made = ServiceRuntime("probe", settings, lambda store: LedgerProjection(), writes=MEMBERS,
                              schema_sql=LEDGER_SQL)
        made.runner.registry = LEDGER_REGISTRY
        return made

    earlier = runtime("earlier")
    await earlier.start()
    try:
        await _until(lambda: earlier.ready, "the first run ready")
        assert earlier.writer is not None
        await earlier.writer.execute("a", lambda: [AmountRecorded(amount_units=1)])
    finally:
        await earlier.stop()
    monkeypatch.setattr(consumer, "OTHER_WRITER_MARGIN_MS", 0)  # no clock skew here
    first, second = runtime("first"), runtime("second")
    await first.start()
    await second.start()
    try:
        await _until(lambda: first.ready and second.ready, "both ready")
        assert first.runner.failing is None and first.runner.applied_count == 1, "a previous run's event is no sign"
        assert second.writer is not None and first.writer is not None
        await second.writer.execute("b", lambda: [AmountRecorded(amount_units=2)])
        await _until(lambda: (first.runner.failing or "").startswith("AnotherWriter"), "the other instance found")
        assert not first.ready and "only one instance of a service may run" in (first.runner.failing or "")
        assert f"(host/pid/writer {socket.gethostname()[:40]}/{os.getpid()}/" in (first.runner.failing or ""), \
            "names the process to stop"
        with pytest.raises(AnotherInstance, match="Stop the other, then restart this one; nothing was written"):
            await first.writer.execute("b", lambda: [AmountRecorded(amount_units=3)])
    finally:
        await second.stop()
        await first.stop()
