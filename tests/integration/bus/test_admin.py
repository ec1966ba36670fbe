"""Topic creation at start-up: a topic a sibling made meanwhile is fine, one the broker refuses is an error
naming it, the broker's reason and what to change (the broker answers refusals per topic, not by failing)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.admin import CreateTopicsResponse_v0, CreateTopicsResponse_v3

from datacoop.bus import ensure_topics
from datacoop.bus.admin import TopicsRefused, _created
from infra.local import Broker


async def _topics(broker: Broker, prefix: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        return {t for t in await admin.list_topics() if t.startswith(prefix)}
    finally:
        await admin.close()


async def test_a_topic_a_sibling_created_meanwhile_is_there_not_created(
        broker: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two services start together: both list the topics, one creates them first; the broker answers the
    other's create with "already exists" for those, which is no error."""
    assert await ensure_topics(broker.bootstrap, [(f"{prefix}.a", 1)]) == [f"{prefix}.a"]

    async def listed_before_the_sibling_created_it(self: AIOKafkaAdminClient) -> list[str]:
        return []

    monkeypatch.setattr(AIOKafkaAdminClient, "list_topics", listed_before_the_sibling_created_it)
    created = await ensure_topics(broker.bootstrap, [(f"{prefix}.a", 1), (f"{prefix}.b", 2)])
    assert created == [f"{prefix}.b"]
    monkeypatch.undo()
    assert await _topics(broker, prefix) == {f"{prefix}.a", f"{prefix}.b"}


async def test_a_topic_the_broker_refuses_is_an_error_naming_it_the_reason_and_the_fix(
        broker: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local broker refuses no topic (any partition count or replication factor goes), so the refusal
    an Apache Kafka cluster of one broker gives a replication factor of 3 stands in for its answer."""
    real_create = AIOKafkaAdminClient.create_topics

    async def one_refused(self: AIOKafkaAdminClient, new_topics: list[NewTopic], **options: Any) -> Any:
        await real_create(self, [t for t in new_topics if t.name != f"{prefix}.a"], **options)
        return CreateTopicsResponse_v3(throttle_time_ms=0, topic_errors=[
            (f"{prefix}.a", 38, "Replication factor: 3 larger than available brokers: 1."),
            (f"{prefix}.b", 0, None)])

    monkeypatch.setattr(AIOKafkaAdminClient, "create_topics", one_refused)
    with pytest.raises(TopicsRefused) as refused:
        await ensure_topics(broker.bootstrap, [(f"{prefix}.a", 3), (f"{prefix}.b", 1)], replication=3)
    said = str(refused.value)
    assert f"{prefix}.a (3 partitions, replication factor 3)" in said
    assert "Replication factor: 3 larger than available brokers: 1." in said
    assert "create the topic yourself with the replication factor your cluster requires" in said
    assert f"{prefix}.b" not in said, "only the refused topic is named"


def test_every_refusal_is_named_also_from_a_response_without_messages() -> None:
    """CreateTopics v0 answers (topic, code) only: the reason is then the error code's own description."""
    wanted = [NewTopic("x", 3, 1), NewTopic("y", 1, 1), NewTopic("z", 1, 1)]
    response = CreateTopicsResponse_v0(topic_errors=[("x", 29), ("y", 36), ("z", 0)])
    with pytest.raises(TopicsRefused, match=r"x \(3 partitions, replication factor 1\): "
                                            r"TOPIC_AUTHORIZATION_FAILED \(29\): .*not authorized.*grant it CREATE"):
        _created("kafka:9092", wanted, 1, response)
    ok = CreateTopicsResponse_v0(topic_errors=[("y", 36), ("z", 0)])
    assert _created("kafka:9092", wanted, 1, ok) == ["z"]
