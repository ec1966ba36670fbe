"""`datacoop dlq`: an operator reads what the consumers dead-lettered, and why, from the real broker."""

from __future__ import annotations

import asyncio
import re

from typer.testing import CliRunner

from datacoop.bus import Publisher, ensure_topics
from datacoop.bus.admin import standard_topics
from datacoop.cli import app
from datacoop.store import ProjectionStore
from datacoop.testing.ledger import LEDGER_SQL, make_envelope
from datacoop.topics import MEMBERS, qualified
from infra.local import Broker
from tests.integration.bus.ledger_helpers import read_back


async def _dead_letter_two(broker: Broker, topic: str) -> None:
    """A record that is not JSON and an event whose data is invalid, after a good one, through a runner."""
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish(topic, make_envelope("a", 1, 10))
        await pub.send_raw(topic, b"{not json", key=b"a", headers=[("ce_type", b"datacoop.x.v1")])
        await pub.publish(topic, make_envelope("a", 2, 5).model_copy(update={"data": {"amount_units": "lots"}}))
        await read_back(broker, pub, ProjectionStore(":memory:", LEDGER_SQL), topic, "ops-test")


def test_dead_letters_are_listed_with_their_source_and_reason(broker: Broker, prefix: str) -> None:
    asyncio.run(ensure_topics(broker.bootstrap, standard_topics(f"{prefix}.")))
    topic = qualified(f"{prefix}.", MEMBERS)
    asyncio.run(_dead_letter_two(broker, topic))

    runner = CliRunner()
    common = ["--bootstrap", broker.bootstrap, "--topic-prefix", f"{prefix}."]
    shown = runner.invoke(app, ["dlq", "members", *common])
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert f"{topic}.dlq: 2 dead-lettered" in out, out
    assert re.search(rf"{re.escape(topic)}\[\d\]@1", out) and re.search(rf"{re.escape(topic)}\[\d\]@2", out), out
    assert "ops-test" in out
    assert "DecodeError" in out and "EventDataInvalid" in out and "datacoop.x.v1" in out

    quiet = runner.invoke(app, ["dlq", "datacoop.jobs", *common])
    assert quiet.exit_code == 0 and "nothing dead-lettered on datacoop.jobs" in quiet.output, quiet.output
    unknown = runner.invoke(app, ["dlq", "nope", *common])
    assert unknown.exit_code == 2 and "'nope' is not a datacoop topic" in unknown.output, unknown.output
