"""The command path: per-subject lock, gap-free seq, produce-and-wait, apply with the offset."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError

from datacoop import command
from datacoop.bus import ConsumerRunner, Publisher
from datacoop.command import Writer
from datacoop.errors import EarlierWriteUnsettled
from datacoop.store import ProjectionStore
from datacoop.testing.ledger import LEDGER_REGISTRY, LEDGER_SQL, AmountRecorded, LedgerProjection, make_envelope
from infra.local import Broker
from tests.integration.bus.ledger_helpers import drain, ledger_topic, read_back


async def test_concurrent_commands_on_one_subject_get_gap_free_seqs_and_land_in_the_projection(
        broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix, 3)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t")
        results = await asyncio.gather(*[
            writer.execute("acct-1", lambda i=i: [AmountRecorded(amount_units=i)]) for i in range(1, 41)])
        await writer.execute("acct-2", lambda: [AmountRecorded(amount_units=5), AmountRecorded(amount_units=6)])
    seqs = sorted(d.envelope.seq for r in results for d in r)
    assert seqs == list(range(1, 41))
    assert store.last_seq(topic, "acct-1") == 40
    assert store.last_seq(topic, "acct-2") == 2
    assert store.conn.execute("SELECT total_units FROM totals WHERE subject='acct-1'").fetchone() == (820,)
    offsets = store.conn.execute("SELECT partition, \"offset\" FROM ledger WHERE subject='acct-1'").fetchall()
    assert len({p for p, _ in offsets}) == 1, "one subject's events must share a partition"
    assert sorted(o for _, o in offsets) == sorted({o for _, o in offsets})


async def test_own_events_read_back_are_not_applied_twice_and_rebuild_restores_seq(
        broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix, 3)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    rebuilt = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t")
        for amount in (3, 4, 5):
            await writer.execute("acct", lambda a=amount: [AmountRecorded(amount_units=a)])
        for target in (store, rebuilt):
            await read_back(broker, pub, target, topic, "svc", writes_topics=frozenset([topic]))
    for target in (store, rebuilt):
        assert target.conn.execute("SELECT total_units, events FROM totals").fetchone() == (12, 3)
        assert target.last_seq(topic, "acct") == 3
    assert store.own_committed == {}, "the consumer read its writer's events back and let go of their ids"


async def test_a_cancelled_caller_keeps_its_subject_until_its_events_are_applied(broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t")
        seen_by_second: list[int] = []

        def second() -> list[AmountRecorded]:
            row = store.conn.execute("SELECT total_units FROM totals WHERE subject='acct'").fetchone()
            seen_by_second.append(row[0] if row else 0)
            return [AmountRecorded(amount_units=2)]

        first = asyncio.create_task(writer.execute("acct", lambda: [AmountRecorded(amount_units=7)]))
        await asyncio.sleep(0)  # decided and submitted; the ack is still on its way
        first.cancel()
        later = asyncio.create_task(writer.execute("acct", second))
        await asyncio.sleep(0)
        assert not seen_by_second, "the second command decided while the first one's event was in flight"
        applied = await later
    assert first.cancelled()
    assert seen_by_second == [7], "the second command must decide on the state the first one's event made"
    assert [d.envelope.seq for d in applied] == [2]
    assert store.conn.execute("SELECT total_units, events FROM totals").fetchone() == (9, 2)


async def test_a_refused_command_frees_its_subject_and_keeps_the_seq(broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t")
        await writer.execute("acct", lambda: [AmountRecorded(amount_units=1)])

        def refuse() -> list[AmountRecorded]:
            raise ValueError("refused")

        results = await asyncio.gather(writer.execute("acct", refuse),
                                       writer.execute("acct", lambda: [AmountRecorded(amount_units=2)]),
                                       writer.execute("acct", lambda: []), return_exceptions=True)
        after = await writer.execute("acct", lambda: [AmountRecorded(amount_units=3)])
    assert isinstance(results[0], ValueError)
    assert [d.envelope.seq for d in results[1]] == [2] and results[2] == []  # type: ignore[union-attr]
    assert [d.envelope.seq for d in after] == [3]


async def test_after_a_lost_ack_the_next_seq_skips_past_the_one_that_may_have_landed(
        broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t")
        for amount in (1, 2, 3):
            await writer.execute("acct", lambda a=amount: [AmountRecorded(amount_units=a)])
        writer.warm()  # as a service does once caught up
        real_submit = pub.submit

        def ack_lost(topic_: str, envelopes: list, *, then: Callable[[Any], None], headers: Any = ()) -> asyncio.Future:
            lost: asyncio.Future = asyncio.get_running_loop().create_future()  # the event lands; its ack doesn't

            def instead(_: object) -> None:
                lost.set_exception(KafkaError("ack lost"))
                then(KafkaError("ack lost"))

            real_submit(topic_, envelopes, then=instead, headers=headers)
            return lost

        pub.submit = ack_lost  # type: ignore[method-assign]
        try:
            await writer.execute("acct", lambda: [AmountRecorded(amount_units=4)])
        except KafkaError:
            pass
        else:
            raise AssertionError("the lost ack must reach the caller")
        pub.submit = real_submit  # type: ignore[method-assign]
        nxt = await writer.execute("acct", lambda: [AmountRecorded(amount_units=5)])
        seqs: list[int] = []
        await read_back(broker, pub, ProjectionStore(":memory:", LEDGER_SQL), topic, "check",
                        on_applied=lambda ds: seqs.extend(d.envelope.seq for d in ds))
    assert [d.envelope.seq for d in nxt] == [5], "seq 4 may be in the log: it must not be used again"
    assert seqs == [1, 2, 3, 4, 5], "the log holds each seq once"


async def test_a_rebuild_remembers_the_seq_of_a_resent_reaction_it_drops(broker: Broker, prefix: str) -> None:
    """A reaction re-sent under its derived id after a lost ack lands twice, the second time with the next
    seq. A projection rebuilt from the log drops that copy as a duplicate, yet must still count its seq:
    the writer's next command on the subject takes the one after it."""
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t")
        await writer.execute("acct", lambda: [AmountRecorded(amount_units=1)])
        for _ in range(2):  # the same reaction twice: one id, seqs 2 and 3
            await writer.execute("acct", lambda: [AmountRecorded(amount_units=7)], id_for=lambda _: "reaction-1")
        rebuilt = ProjectionStore(":memory:", LEDGER_SQL)
        await read_back(broker, pub, rebuilt, topic, "svc", writes_topics=frozenset([topic]))
        assert rebuilt.conn.execute("SELECT total_units, events FROM totals").fetchone() == (8, 2)
        assert rebuilt.last_seq(topic, "acct") == 3
        again = Writer(store=rebuilt, publisher=pub, projection=LedgerProjection(), topic=topic, source="t")
        again.warm()
        nxt = await again.execute("acct", lambda: [AmountRecorded(amount_units=5)])
    assert [d.envelope.seq for d in nxt] == [4], "seq 3 is in the log: it must not be used again"


async def test_a_command_whose_events_share_an_id_is_refused_before_anything_is_written(
        broker: Broker, prefix: str) -> None:
    """A reader of the log applies one event per id: the writer must not apply two (its projection would
    differ from one rebuilt from the log), so such a command is a programming error, refused up front."""
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t")
        with pytest.raises(ValueError, match=r"have the id cause\|type .*discriminator to derived_event_id"):
            await writer.execute("acct", lambda: [AmountRecorded(amount_units=1), AmountRecorded(amount_units=2)],
                                 id_for=lambda _: "cause|type")
        nxt = await asyncio.wait_for(writer.execute("acct", lambda: [AmountRecorded(amount_units=3)]), 10)
        seqs: list[int] = []
        await read_back(broker, pub, ProjectionStore(":memory:", LEDGER_SQL), topic, "check",
                        on_applied=lambda ds: seqs.extend(d.envelope.seq for d in ds))
    assert [d.envelope.seq for d in nxt] == [1], "the refused command took no seq"
    assert seqs == [1], "nothing of the refused command was written"
    assert store.conn.execute("SELECT total_units, events FROM totals").fetchone() == (3, 1)


async def test_one_id_in_commands_of_one_group_commit_is_applied_once_as_a_rebuild_does(
        broker: Broker, prefix: str) -> None:
    """Commands whose acks arrive together share a transaction; two of them may carry one derived id
    (one cause, two subjects). The writer applies the first in the log, as a consumer reading it does."""
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t")
        done = await asyncio.gather(*[writer.execute(s, lambda a=a: [AmountRecorded(amount_units=a)],
                                                     id_for=lambda _: "cause|type")
                                      for a, s in enumerate("abcde", start=1)])
        rebuilt = ProjectionStore(":memory:", LEDGER_SQL)
        await read_back(broker, pub, rebuilt, topic, "svc", writes_topics=frozenset([topic]))
    assert all(len(d) == 1 for d in done), "every command is answered with its delivery"
    live = store.conn.execute("SELECT subject, total_units FROM totals ORDER BY 1").fetchall()
    first = min((d[0] for d in done), key=lambda d: d.offset)
    assert isinstance(first.event, AmountRecorded)
    assert live == [(first.envelope.subject, first.event.amount_units)]
    assert rebuilt.conn.execute("SELECT subject, total_units FROM totals ORDER BY 1").fetchall() == live
    assert [rebuilt.last_seq(topic, s) for s in "abcde"] == [store.last_seq(topic, s) for s in "abcde"] == [1] * 5


class _Boom(BaseException):
    """Not an Exception: the group commit's error handling does not catch it."""


async def test_a_commit_that_dies_answers_its_commands_and_frees_their_subjects(broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)

    class Exploding(LedgerProjection):
        armed = True

        def apply(self, tx, deliveries):  # type: ignore[no-untyped-def]
            if self.armed:
                self.armed = False
                raise _Boom()
            super().apply(tx, deliveries)

    async with Publisher(broker.bootstrap) as pub:
        writer = Writer(store=store, publisher=pub, projection=Exploding(), topic=topic, source="t")
        first = await asyncio.wait_for(asyncio.gather(*[writer.execute(s, lambda: [AmountRecorded(amount_units=1)])
                                                        for s in ("a", "b")], return_exceptions=True), 10)
        again = await asyncio.wait_for(writer.execute("a", lambda: [AmountRecorded(amount_units=2)]), 10)
    assert all(isinstance(r, RuntimeError) and "writer stopped" in str(r) for r in first), first
    assert [d.envelope.seq for d in again] == [2]
    assert store.conn.execute("SELECT total_units FROM totals WHERE subject='a'").fetchone() == (2,)


async def test_the_reader_in_the_writers_process_passes_over_its_events_but_reads_a_foreign_one(
        broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        runner = ConsumerRunner(bootstrap=broker.bootstrap, store=store, projection=LedgerProjection(), topics=[topic],
                                consumer_name="svc", dlq_publisher=pub, registry=LEDGER_REGISTRY,
                                writes_topics=frozenset([topic]))
        await runner.start()
        await drain(runner)
        writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t",
                        reader=runner)
        for amount in (1, 2, 3):
            await writer.execute("acct", lambda a=amount: [AmountRecorded(amount_units=a)])
        assert store.offsets("svc") == {(topic, 0): 3}, "the reader's offset moves with the writer's commit"
        assert store.own_committed == {}, "nothing is left for the reader to fetch and drop"
        await pub.publish(topic, make_envelope("other", 1, 100))  # another writer's event, then ours
        await writer.execute("acct", lambda: [AmountRecorded(amount_units=4)])
        assert store.offsets("svc") == {(topic, 0): 3}, "a foreign event before ours: the reader must read both"
        await drain(runner)
        await runner.stop()
        assert runner.applied_count == 1, "the reader applies the foreign event only; ours it drops by id"
        assert store.offsets("svc") == {(topic, 0): 5}
        rebuilt = ProjectionStore(":memory:", LEDGER_SQL)
        await read_back(broker, pub, rebuilt, topic, "svc")
    for target in (store, rebuilt):
        assert target.conn.execute("SELECT subject, total_units FROM totals ORDER BY subject").fetchall() == [
            ("acct", 10), ("other", 100)]


async def _service(broker: Broker, pub: Publisher, store: ProjectionStore, topic: str) -> tuple[ConsumerRunner, Writer]:
    """A writer and its reader in one process, as a service runs them; the reader caught up."""
    runner = ConsumerRunner(bootstrap=broker.bootstrap, store=store, projection=LedgerProjection(), topics=[topic],
                            consumer_name="svc", dlq_publisher=pub, registry=LEDGER_REGISTRY,
                            writes_topics=frozenset([topic]))
    writer = Writer(store=store, publisher=pub, projection=LedgerProjection(), topic=topic, source="t", reader=runner)
    runner.add_listener(writer.observe)
    await runner.start()
    runner.run_in_background()
    await runner.caught_up.wait()
    return runner, writer


def _lose_the_first_ack(pub: Publisher) -> list[Any]:
    """The first request's events land, but its caller hears a timeout (a lost ack); returns what it lost."""
    submit, lost = pub.submit, []

    def ack_lost(topic: str, envelopes: Any, *, then: Callable[[Any], None] | None = None, headers: Any = ()) -> Any:
        def lose(outcome: Any) -> None:
            lost.append(outcome)
            assert then is not None
            then(KafkaError("the ack was lost"))
        return submit(topic, envelopes, then=lose if not lost else then, headers=headers)

    pub.submit = ack_lost  # type: ignore[method-assign]
    return lost


def _retry_unless_recorded(store: ProjectionStore, seen: list[Any]) -> Callable[[], list[AmountRecorded]]:
    """A command that records 7 units for 'acct' unless its state already holds them ("already recorded"),
    noting in `seen` the state it decided on."""
    def retry() -> list[AmountRecorded]:
        seen.append(store.conn.execute("SELECT total_units FROM totals WHERE subject = 'acct'").fetchone())
        return [] if seen[-1] is not None else [AmountRecorded(amount_units=7)]
    return retry


async def test_after_a_lost_ack_the_next_command_decides_on_state_holding_what_landed(
        broker: Broker, prefix: str) -> None:
    """A publish whose ack is lost fails the command though its event is in the log. A retry decided at once,
    on the projection without it, would be accepted twice (a nonce, an upload); the writer waits for its reader
    to read the log past it, so the retry sees it."""
    topic = await ledger_topic(broker, prefix, 2)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        runner, writer = await _service(broker, pub, store, topic)
        lost = _lose_the_first_ack(pub)
        with pytest.raises(KafkaError, match="the ack was lost"):
            await writer.execute("acct", lambda: [AmountRecorded(amount_units=7)])
        seen: list[Any] = []
        retry = _retry_unless_recorded(store, seen)

        assert await writer.execute("acct", retry) == []
        await runner.stop()
    assert isinstance(lost[0], list), "the first publish landed"
    assert seen == [(7,)], "the retry decided on state without the event that landed"
    assert store.conn.execute("SELECT total_units, events FROM totals").fetchone() == (7, 1)
    assert store.last_seq(topic, "acct") == 1


async def test_while_the_reader_cannot_fetch_a_retry_after_a_lost_ack_waits_then_refuses_unwritten(
        broker: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lost ack comes with a broker out of reach: the reader's fetches fail (aiokafka only logs them and its
    getmany returns nothing), so its high-water mark is old. The retry may not be decided on it: it waits for a
    fetch the broker answers, and with none in DOUBT_WAIT_S it is refused, nothing of it written; once fetches
    come back, the next retry sees the event that landed."""
    monkeypatch.setattr(command, "DOUBT_WAIT_S", 1.5)
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        runner, writer = await _service(broker, pub, store, topic)
        client, cut_off = runner._kafka._client, [True]
        send = client.send

        async def unreachable_for_fetches(node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
            if cut_off and type(request).__name__.startswith("FetchRequest"):
                raise KafkaConnectionError("broker unreachable (injected)")
            return await send(node_id, request, *args, **kwargs)

        client.send = unreachable_for_fetches
        await asyncio.sleep(1.0)  # the fetch in flight has come back; no new one is answered
        _lose_the_first_ack(pub)
        with pytest.raises(KafkaError, match="the ack was lost"):
            await writer.execute("acct", lambda: [AmountRecorded(amount_units=7)])
        seen: list[Any] = []
        retry = _retry_unless_recorded(store, seen)

        with pytest.raises(EarlierWriteUnsettled, match="nothing of this request was written"):
            await writer.execute("acct", retry)
        assert seen == [], "decided on a high-water mark from before the lost ack"
        cut_off.clear()
        assert await writer.execute("acct", retry) == []
        await runner.stop()
    assert seen == [(7,)]
    assert store.conn.execute("SELECT total_units, events FROM totals").fetchone() == (7, 1)
