"""Consumer-group mode splits a topic's partitions among instances, so each instance's projection holds
only some subjects. A service that decides commands on its projection refuses it (a replayed signature
could pass on an instance that never saw the subject); the library's runner keeps it for consumers that
write nothing (tests/integration/bus/test_dead_letters.py runs one in a group). A rebalance that hands it
partitions to read up makes it not caught up until it has read them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from datacoop.bus import ConsumerRunner, Publisher
from datacoop.bus.consumer import _SeekOnAssign
from datacoop.kit.settings import SettingRefused
from datacoop.store import ProjectionStore
from datacoop.testing.ledger import LEDGER_SQL, LedgerProjection
from infra.local import REPO_ROOT
from services.consent.service import build_app
from services.consent.settings import ConsentSettings


def test_a_writer_service_refuses_group_mode(tmp_path: Path) -> None:
    with pytest.raises(SettingRefused, match="DATACOOP_GROUP_ID: the consent service writes"):
        build_app(ConsentSettings(bootstrap="127.0.0.1:1", data_dir=tmp_path, dev_secrets=True, group_id="consent"))
    assert not list(tmp_path.glob("*.duckdb")), "refused before any file is made"


def test_the_process_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATACOOP_DATA_DIR": str(tmp_path), "DATACOOP_DEV_SECRETS": "true",
           "DATACOOP_GROUP_ID": "consent"}
    result = subprocess.run([sys.executable, "-m", "services.consent.service"], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot start" in result.stderr and "DATACOOP_GROUP_ID" in result.stderr
    assert "Traceback" not in result.stderr


class _Kafka:
    """What the runner asks of its AIOKafkaConsumer around a rebalance: the assignment, the high-water mark of the
    last fetch (None until a fetch since the assignment), and its seeks."""

    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()
        self.highwaters: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass


def _runner_in_a_group(stored: dict[tuple[str, int], int]) -> tuple[ConsumerRunner, _Kafka, _SeekOnAssign]:
    store = ProjectionStore(":memory:", LEDGER_SQL)
    with store.transaction() as tx:
        store.save_offsets(tx, "grp", stored)
    runner = ConsumerRunner(bootstrap="127.0.0.1:1", store=store, projection=LedgerProjection(), topics=["t"],
                            consumer_name="grp", dlq_publisher=Publisher("127.0.0.1:1"), group_id="g")
    kafka = _Kafka()
    runner._consumer = kafka  # type: ignore[assignment]
    return runner, kafka, _SeekOnAssign(runner)


async def _rebalance(listener: _SeekOnAssign, kafka: _Kafka, assigned: set[TopicPartition]) -> None:
    """As aiokafka does it (eager): all revoked, then the new assignment, whose partitions' states are new."""
    await listener.on_partitions_revoked(kafka.assigned)
    kafka.assigned, kafka.highwaters = assigned, {}
    await listener.on_partitions_assigned(assigned)


async def test_a_rebalance_that_hands_over_a_partition_behind_is_not_caught_up_until_it_is_read() -> None:
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    runner, kafka, listener = _runner_in_a_group({("t", 0): 10, ("t", 1): 3})
    await _rebalance(listener, kafka, {p0})
    kafka.highwaters = {p0: 10}  # the first fetch: partition 0 is read to its end
    runner._update_caught_up()
    assert runner.caught_up.is_set()

    await _rebalance(listener, kafka, {p0, p1})  # partition 1, from an instance that left, stored at 3
    assert not runner.caught_up.is_set(), "its new partition is not read yet"
    kafka.highwaters = {p0: 10, p1: 8}
    runner._update_caught_up()
    assert not runner.caught_up.is_set(), "partition 1 is at 3 of 8"
    runner._positions[p1] = 8  # what a committed batch does
    runner._update_caught_up()
    assert runner.caught_up.is_set()


async def test_revoked_partitions_leave_the_runners_tracking() -> None:
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    runner, kafka, listener = _runner_in_a_group({("t", 0): 10, ("t", 1): 3})
    await _rebalance(listener, kafka, {p0, p1})
    assert set(runner._unchecked) == set(runner._positions) == {p0, p1}
    await _rebalance(listener, kafka, {p0})
    assert set(runner._unchecked) == set(runner._positions) == {p0}


async def test_readyz_follows_the_runner_back_to_not_ready_after_a_rebalance_in_group_mode() -> None:
    from types import SimpleNamespace

    from datacoop.kit.runtime import ServiceRuntime

    runner, kafka, listener = _runner_in_a_group({("t", 0): 0})
    runner.caught_up.set()
    runtime = SimpleNamespace(_warmed=True, runner=runner)  # the state `ready` reads, of a runtime warmed long ago
    assert ServiceRuntime.ready.fget(runtime)  # type: ignore[attr-defined]
    kafka.assigned = {TopicPartition("t", 0)}
    await listener.on_partitions_assigned({TopicPartition("t", 0)})
    assert not ServiceRuntime.ready.fget(runtime), "503 until the partition handed over is read to its end"  # type: ignore[attr-defined]
    runner.group_id = None  # a runner that owns its partitions: caught_up is never cleared after the start
    assert ServiceRuntime.ready.fget(runtime)  # type: ignore[attr-defined]
