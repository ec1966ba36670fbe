"""DATACOOP_TOPIC_REPLICATION: the replication factor of the topics a service creates (1 was fixed in the code,
so a three-broker cluster got topics on one broker)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from datacoop.bus.admin import ensure_topics
from datacoop.kit import runtime as runtime_mod
from datacoop.kit.runtime import ServiceRuntime
from datacoop.kit.settings import ServiceSettings


def test_topic_replication_is_1_unless_set_and_at_least_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATACOOP_TOPIC_REPLICATION", raising=False)
    assert ServiceSettings().topic_replication == 1
    monkeypatch.setenv("DATACOOP_TOPIC_REPLICATION", "3")
    assert ServiceSettings().topic_replication == 3
    monkeypatch.setenv("DATACOOP_TOPIC_REPLICATION", "0")
    with pytest.raises(ValidationError, match="topic_replication"):
        ServiceSettings()


def test_a_service_creates_its_topics_with_the_replication_set() -> None:
    asked: dict[str, Any] = {}

    class Stop(Exception):
        pass

    async def ensure(bootstrap: str, names: Any, replication: int = 1) -> list[str]:
        asked.update(bootstrap=bootstrap, replication=replication)
        raise Stop  # what start() does after the topics is not this test's

    settings = ServiceSettings(bootstrap="kafka:9092", topic_replication=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime_mod, "ensure_topics", ensure)
        with pytest.raises(Stop):
            asyncio.run(ServiceRuntime.start(SimpleNamespace(settings=settings)))  # type: ignore[arg-type]
    assert asked == {"bootstrap": "kafka:9092", "replication": 3}


def test_a_replication_below_1_is_refused_before_the_broker_is_asked() -> None:
    with pytest.raises(ValueError, match="DATACOOP_TOPIC_REPLICATION"):
        asyncio.run(asyncio.wait_for(ensure_topics("127.0.0.1:9", [("t", 1)], replication=0), timeout=10))
