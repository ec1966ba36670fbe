"""Exactly-once effects on a projection, against the real broker: crashes, duplicates, rebuilds."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datacoop.bus import Publisher, ensure_topics
from datacoop.store import ProjectionStore
from datacoop.testing.ledger import LEDGER_SQL, make_envelope, snapshot
from infra.local import Broker

EVENTS = 50_000
SUBJECTS = 500


async def _produce(bootstrap: str, topic: str, envelopes: list) -> None:
    async with Publisher(bootstrap) as pub:
        for i in range(0, len(envelopes), 5000):
            await pub.publish_many(topic, envelopes[i:i + 5000])


def _ledger_events() -> list:
    seqs: dict[str, int] = {}
    out = []
    for i in range(EVENTS):
        subject = f"acct-{i % SUBJECTS}"
        seqs[subject] = seqs.get(subject, 0) + 1
        out.append(make_envelope(subject, seqs[subject], amount_units=(i * 7919) % 1000 + 1))
    return out


def _spawn(bootstrap: str, topic: str, db: Path, name: str = "ledger") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "datacoop.testing.ledger", bootstrap, topic, str(db), name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_to_end(bootstrap: str, topic: str, db: Path) -> None:
    proc = _spawn(bootstrap, topic, db)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert "caught-up" in out


def _run_and_kill(bootstrap: str, topic: str, db: Path, kill_after: int) -> int:
    """Start a consumer, SIGKILL it once it has applied at least `kill_after` events; returns that count."""
    proc = _spawn(bootstrap, topic, db)
    assert proc.stdout is not None
    applied = 0
    for line in proc.stdout:
        if line.startswith("applied "):
            applied = int(line.split()[1])
            if applied >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the consumer finished before it could be killed"
    return applied


def _state(db: Path) -> dict[str, object]:
    store = ProjectionStore(db, LEDGER_SQL)
    try:
        return snapshot(store.conn)
    finally:
        store.close()


@pytest.fixture
def ledger_log(broker: Broker, prefix: str) -> tuple[str, list]:
    topic = f"{prefix}.ledger"
    envelopes = _ledger_events()

    async def setup() -> None:
        await ensure_topics(broker.bootstrap, [(topic, 3), (f"{topic}.dlq", 1)])
        await _produce(broker.bootstrap, topic, envelopes)

    asyncio.run(setup())
    return topic, envelopes


@pytest.mark.slow
def test_consumer_killed_mid_run_resumes_without_loss_or_double_apply(
        broker: Broker, ledger_log: tuple[str, list], tmp_path: Path) -> None:
    topic, envelopes = ledger_log
    clean_db, crashed_db = tmp_path / "clean.duckdb", tmp_path / "crashed.duckdb"
    _run_to_end(broker.bootstrap, topic, clean_db)

    first = _run_and_kill(broker.bootstrap, topic, crashed_db, kill_after=EVENTS // 5)
    assert 0 < first < EVENTS
    _run_and_kill(broker.bootstrap, topic, crashed_db, kill_after=first + EVENTS // 5)
    _run_to_end(broker.bootstrap, topic, crashed_db)

    clean, crashed = _state(clean_db), _state(crashed_db)
    assert clean["rows"] == (EVENTS, EVENTS)
    assert crashed == clean
    expected_total = sum(e.data["amount_units"] for e in envelopes)
    assert sum(t[1] for t in clean["totals"]) == expected_total  # type: ignore[union-attr]


@pytest.mark.slow
def test_resent_batch_in_the_log_is_applied_once(broker: Broker, ledger_log: tuple[str, list],
                                                  tmp_path: Path) -> None:
    topic, envelopes = ledger_log
    db = tmp_path / "dups.duckdb"
    _run_to_end(broker.bootstrap, topic, db)
    before = _state(db)
    # A producer that crashed before its acks re-sends the same events: same ids, now twice in the log.
    asyncio.run(_produce(broker.bootstrap, topic, envelopes[10_000:15_000]))
    _run_to_end(broker.bootstrap, topic, db)
    assert _state(db) == before
    fresh = tmp_path / "fresh.duckdb"
    _run_to_end(broker.bootstrap, topic, fresh)
    assert _state(fresh) == before


@pytest.mark.slow
def test_deleted_projection_is_rebuilt_identically_from_the_topic(
        broker: Broker, ledger_log: tuple[str, list], tmp_path: Path) -> None:
    topic, _ = ledger_log
    db = tmp_path / "p.duckdb"
    _run_to_end(broker.bootstrap, topic, db)
    before = _state(db)
    db.unlink()
    _run_to_end(broker.bootstrap, topic, db)
    assert _state(db) == before
