"""Topic creation at start-up: every topic (and its DLQ) with its partition count, if missing.

The local broker applies partitions only at creation (no create_partitions), so they are set here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from datacoop.topics import TOPICS, dlq, qualified


async def ensure_topics(bootstrap: str, names: Iterable[tuple[str, int]], replication: int = 1) -> list[str]:
    """Create (name, partitions) topics that don't exist; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="datacoop-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(n, p, replication) for n, p in names if n not in existing]
        if not wanted:
            return []
        with contextlib.suppress(TopicAlreadyExistsError):  # a sibling service was faster
            await admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        await admin.close()


def standard_topics(prefix: str = "") -> list[tuple[str, int]]:
    """Every datacoop topic and its DLQ under `prefix`, with their partition counts."""
    out = []
    for spec in TOPICS.values():
        out.append((qualified(prefix, spec.name), spec.partitions))
        out.append((qualified(prefix, dlq(spec.name)), 1))
    return out
