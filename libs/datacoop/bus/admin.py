"""Topic creation at start-up: every topic (and its DLQ) with its partition count, if missing.

The local broker applies partitions only at creation (no create_partitions), so they are set here.
The broker answers a create with an error per topic (it does not fail the request): a topic that
already exists (a sibling service was faster) is fine; any other refusal is TopicsRefused, naming the
topic, the broker's reason and what to change, rather than "unknown topic" from the first read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from datacoop.topics import TOPICS, dlq, qualified

TOPIC_ALREADY_EXISTS = 36

_WHAT_TO_CHANGE = {
    37: "the partition count is datacoop's (datacoop.topics): create the topic yourself with a count the broker takes",
    38: "the broker refuses replication factor {replication}: set DATACOOP_TOPIC_REPLICATION to one it takes (at "
        "most the number of brokers), or create the topic yourself with the replication factor your cluster requires",
    29: "this client may not create topics: grant it CREATE on them (ACL), or create them yourself",
    44: "a create-topic policy of the broker refuses it: create the topic yourself as the policy allows",
}
_OTHERWISE = "create the topic yourself, or change what the broker names"


class TopicsRefused(RuntimeError):
    """The broker refused to create one or more topics a service needs."""


async def ensure_topics(bootstrap: str, names: Iterable[tuple[str, int]], replication: int = 1) -> list[str]:
    """Create (name, partitions) topics that don't exist; returns the names created. TopicsRefused when
    the broker refuses any (each with its reason); one that exists by then counts as there. ValueError for a
    replication factor below 1, before the broker is asked (it would answer with a less telling refusal)."""
    if replication < 1:
        raise ValueError(f"replication factor {replication}: a topic needs at least 1 replica; "
                         "set DATACOOP_TOPIC_REPLICATION to 1 or more")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="datacoop-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(n, p, replication) for n, p in names if n not in existing]
        if not wanted:
            return []
        response = await admin.create_topics(wanted)
    finally:
        await admin.close()
    return _created(bootstrap, wanted, replication, response)


def _created(bootstrap: str, wanted: list[NewTopic], replication: int, response: Any) -> list[str]:
    """The topics a CreateTopics response says were made; TopicsRefused naming every refusal in it."""
    partitions = {t.name: t.num_partitions for t in wanted}
    created: list[str] = []
    refusals: list[str] = []
    for topic, code, *rest in response.topic_errors:  # (topic, error_code[, error_message]) by version
        if code == 0:
            created.append(topic)
        elif code != TOPIC_ALREADY_EXISTS:  # a sibling service was faster
            error = for_code(code)
            said = (rest[0] if rest else None) or error.description
            hint = _WHAT_TO_CHANGE.get(code, _OTHERWISE).format(replication=replication)
            refusals.append(f"{topic} ({partitions.get(topic, '?')} partitions, replication factor {replication}): "
                            f"{error.message} ({code}): {said}; {hint}")
    if refusals:
        raise TopicsRefused(f"the broker at {bootstrap} refused to create topic(s): {'; '.join(refusals)}")
    return created


def standard_topics(prefix: str = "") -> list[tuple[str, int]]:
    """Every datacoop topic and its DLQ under `prefix`, with their partition counts."""
    out = []
    for spec in TOPICS.values():
        out.append((qualified(prefix, spec.name), spec.partitions))
        out.append((qualified(prefix, dlq(spec.name)), 1))
    return out
