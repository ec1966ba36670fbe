"""Bad records go to `<topic>.dlq` with the reason; the runner goes on with the events after them."""

from __future__ import annotations

from typing import Any

from datacoop.bus import ConsumerRunner, Publisher
from datacoop.events.codec import encode, header
from datacoop.store import ProjectionStore
from datacoop.testing.ledger import LEDGER_REGISTRY, LEDGER_SQL, LedgerProjection, make_envelope
from infra.local import Broker
from tests.integration.bus.ledger_helpers import ledger_topic, read_back, read_partition


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[Any]:
    return await read_partition(bootstrap, topic, until=lambda records: len(records) >= expected)


async def test_malformed_and_unknown_records_are_dead_lettered_and_later_events_applied(
        broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish(topic, make_envelope("a", 1, 10))
        await pub.send_raw(topic, b"{not json", key=b"a", headers=[])
        unknown = make_envelope("a", 2, 5).model_copy(update={"type": "datacoop.test.unheard_of.v1"})
        await pub.publish(topic, unknown)
        invalid = make_envelope("a", 3, 5).model_copy(update={"data": {"amount_units": "lots"}})
        await pub.publish(topic, invalid)
        await pub.publish(topic, make_envelope("a", 4, 32))

        await read_back(broker, pub, store, topic, "dlq-test")

    assert store.conn.execute("SELECT total_units, events FROM totals WHERE subject='a'").fetchone() == (42, 2)
    dead = await _read_all(broker.bootstrap, f"{topic}.dlq", 3)
    reasons = [header(r.headers, "dlq_error") or "" for r in dead]
    assert len(dead) == 3
    assert "DecodeError" in reasons[0] and "Invalid JSON" in reasons[0]
    assert "UnknownEventType" in reasons[1] and "unheard_of" in reasons[1]
    assert "EventDataInvalid" in reasons[2] and "amount_units" in reasons[2]
    assert [header(r.headers, "dlq_source_offset") for r in dead] == ["1", "2", "3"]
    assert dead[0].value == b"{not json"
    assert store.offsets("dlq-test") == {(topic, 0): 5}


async def test_event_that_breaks_the_projection_is_dead_lettered_not_retried_forever(
        broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many(topic, [make_envelope("b", i + 1, amt) for i, amt in enumerate([1, 666, 2, 3])])
        await read_back(broker, pub, store, topic, "bug", LedgerProjection(fail_on_amount=666))
    assert store.conn.execute("SELECT total_units, events FROM totals").fetchone() == (6, 3)
    dead = await _read_all(broker.bootstrap, f"{topic}.dlq", 1)
    assert len(dead) == 1
    assert "projection failed" in (header(dead[0].headers, "dlq_error") or "")
    assert "666" in (header(dead[0].headers, "dlq_error") or "")


class WordyBug(LedgerProjection):
    """Fails on 666 and 667 with long reasons in three-byte characters, after one and two x: the DLQ header is
    cut at 4,000 bytes, and for one of the two the cut falls inside a character."""

    def apply(self, tx: Any, deliveries: list[Any]) -> None:
        for d in deliveries:
            if d.event.amount_units in (666, 667):
                raise ValueError("x" * (d.event.amount_units - 665) + "\u20ac" * 2000)
        super().apply(tx, deliveries)


async def test_a_long_reason_is_cut_to_whole_characters_in_the_dlq_header(broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many(topic, [make_envelope("w", i + 1, amt) for i, amt in enumerate([1, 666, 667, 2])])
        await read_back(broker, pub, store, topic, "wordy", WordyBug())
    dead = await _read_all(broker.bootstrap, f"{topic}.dlq", 2)
    for record, xs in zip(dead, ["x", "xx"], strict=True):
        raw = dict(record.headers)["dlq_error"]
        text = raw.decode()  # strict: a cut inside a character would raise here
        assert 3990 < len(raw) <= 4000 and text.endswith(xs + "\u20ac" * text.count("\u20ac")), raw[-20:]
    assert store.conn.execute("SELECT total_units FROM totals").fetchone() == (3,)


async def test_a_dead_lettered_event_of_the_services_own_topic_keeps_its_seq(broker: Broker, prefix: str) -> None:
    """The log holds its seq whether or not the projection could apply it: a writer must not reuse it."""
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many(topic, [make_envelope("b", i + 1, amt) for i, amt in enumerate([1, 2, 666])])
        await read_back(broker, pub, store, topic, "bug", LedgerProjection(fail_on_amount=666),
                        writes_topics=frozenset([topic]))
    assert store.conn.execute("SELECT total_units, events FROM totals").fetchone() == (3, 2)
    assert store.last_seq(topic, "b") == 3


async def test_an_undecodable_event_of_the_services_own_topic_keeps_the_seq_its_json_names(
        broker: Broker, prefix: str) -> None:
    """An event of its own topic that no model reads (an unknown type, invalid data) still holds its seq in the
    log: the runner reads subject and seq from the JSON alone. Garbage names none and moves nothing."""
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish(topic, make_envelope("c", 1, 10))
        unknown = make_envelope("c", 7, 5).model_copy(update={"type": "datacoop.test.unheard_of.v1"})
        await pub.publish(topic, unknown)
        invalid = make_envelope("d", 4, 5).model_copy(update={"data": {"amount_units": "lots"}})
        await pub.publish(topic, invalid)
        await pub.send_raw(topic, b'{"subject": "e", "seq": true}', key=b"e", headers=[])
        await pub.send_raw(topic, b"[1, 2]", key=b"e", headers=[])
        await read_back(broker, pub, store, topic, "seqs", writes_topics=frozenset([topic]))
    assert (store.last_seq(topic, "c"), store.last_seq(topic, "d"), store.last_seq(topic, "e")) == (7, 4, 0)
    assert store.conn.execute("SELECT total_units, events FROM totals").fetchone() == (10, 1)


async def test_runner_seeks_to_offsets_stored_with_the_projection(broker: Broker, prefix: str) -> None:
    topic = await ledger_topic(broker, prefix, 2)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many(topic, [make_envelope(f"s{i}", 1, 1) for i in range(20)])
        for round_ in range(2):
            await read_back(broker, pub, store, topic, "seek")
            if round_ == 0:
                await pub.publish_many(topic, [make_envelope(f"s{i}", 2, 100) for i in range(5)])
    assert store.conn.execute("SELECT sum(total_units), sum(events) FROM totals").fetchone() == (520, 25)
    assert sum(store.offsets("seek").values()) == 25




async def test_group_mode_seeks_to_offsets_stored_in_duckdb_on_assignment(broker: Broker, prefix: str) -> None:
    """Scale-out mode (consumer groups): on assignment the runner seeks to its own stored offsets,
    not to Kafka's committed ones (it never commits to Kafka)."""
    topic = await ledger_topic(broker, prefix, 2)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many(topic, [make_envelope(f"g{i}", 1, 2) for i in range(10)])
        with store.transaction() as tx:  # pretend an earlier instance applied partition 0 up to offset 2
            store.save_offsets(tx, "grp", {(topic, 0): 2})
        first_partition_0 = await _read_partition(broker.bootstrap, topic, 0, at_least=2)
        runner = ConsumerRunner(bootstrap=broker.bootstrap, store=store, projection=LedgerProjection(),
                                topics=[topic], consumer_name="grp", dlq_publisher=pub,
                                registry=LEDGER_REGISTRY, group_id=f"{prefix}-group")
        await runner.start()
        for _ in range(300):
            await runner.poll_once()
            if runner.applied_count >= 10 - 2:
                break
        await runner.stop()
    assert runner.applied_count == 10 - 2
    skipped = {r.key.decode() for r in first_partition_0[:2]}
    assert len(skipped) == 2
    applied = {row[0] for row in store.conn.execute("SELECT subject FROM totals").fetchall()}
    assert applied.isdisjoint(skipped) and len(applied) == 8


async def _read_partition(bootstrap: str, topic: str, partition: int, at_least: int) -> list[Any]:
    """The partition's records from offset 0, read until there are at least `at_least` of them."""
    return await read_partition(bootstrap, topic, partition, until=lambda records: len(records) >= at_least)


async def test_a_ce_type_header_that_disagrees_with_the_envelope_does_not_decide_the_type(
        broker: Broker, prefix: str) -> None:
    """The one-pass decode trusts the header only as a hint: the envelope's own type decides."""
    topic = await ledger_topic(broker, prefix)
    store = ProjectionStore(":memory:", LEDGER_SQL)
    good = make_envelope("h", 1, 10)
    liar = make_envelope("h", 2, 5).model_copy(update={"type": "datacoop.test.unheard_of.v1"})
    liar_record = encode(liar)
    lying_headers = [(k, good.type.encode() if k == "ce_type" else v) for k, v in liar_record.headers]
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish(topic, good)
        await pub.send_raw(topic, liar_record.value, key=liar_record.key, headers=lying_headers)
        await pub.publish(topic, make_envelope("h", 3, 32))
        await read_back(broker, pub, store, topic, "liar")
    assert store.conn.execute("SELECT total_units, events FROM totals WHERE subject='h'").fetchone() == (42, 2)
    dead = await _read_all(broker.bootstrap, f"{topic}.dlq", 1)
    assert len(dead) == 1 and "unheard_of" in (header(dead[0].headers, "dlq_error") or "")
