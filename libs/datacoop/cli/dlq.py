"""Operator: what the services' consumers set aside in the dead-letter topics, and why.

    datacoop dlq [TOPIC ...] [--bootstrap HOST:PORT] [--topic-prefix P] [--limit 20] [--full]

TOPIC is a datacoop topic (`datacoop.members`, or `members`); every topic when none is named. The broker
comes from --bootstrap, DATACOOP_BOOTSTRAP or the running local stack. Each record a consumer set aside is
listed once: the copies a runner sent again (it died before the transaction past the record) are counted.
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import typer
from rich.table import Table

from datacoop.cli import stack as stack_mod
from datacoop.cli.common import console, fail, print_table
from datacoop.topics import DLQ_SUFFIX, TOPICS, dlq, qualified

REASON_CHARS = 200  # a reason's first characters in the listing (--full: all of it)


def _topic(name: str) -> str:
    """A datacoop topic from what a user typed (`datacoop.members`, `members`, `datacoop.members.dlq`)."""
    bare = name.removesuffix(DLQ_SUFFIX)
    for candidate in (bare, f"datacoop.{bare}"):
        if candidate in TOPICS:
            return candidate
    fail(f"{name!r} is not a datacoop topic; name one of {', '.join(TOPICS)} (or none for all)", code=2)


def _bootstrap(given: str | None) -> str:
    from datacoop.kit.settings import bootstrap_problem

    for value, where in ((given, "--bootstrap"), (os.environ.get("DATACOOP_BOOTSTRAP"), "DATACOOP_BOOTSTRAP")):
        if value:
            problem = bootstrap_problem(value)
            if problem:
                fail(f"{where}: {problem}", code=2)
            return value
    broker = ((stack_mod.running_stack() or {}).get("broker") or {}).get("bootstrap")
    if broker:
        return str(broker)
    fail("no broker to read: pass --bootstrap HOST:PORT or set DATACOOP_BOOTSTRAP (with a local stack up, "
         "`datacoop up`, its broker is used)", code=2)


def dlq_cmd(
    topics: Annotated[list[str] | None, typer.Argument(metavar="TOPIC", show_default=False,
                                                       help="datacoop topics (default: all)")] = None,
    bootstrap: Annotated[str | None, typer.Option("--bootstrap", help="Kafka bootstrap HOST:PORT (default: "
                                                  "DATACOOP_BOOTSTRAP, else the local stack's broker)")] = None,
    topic_prefix: Annotated[str, typer.Option("--topic-prefix", help="the services' DATACOOP_TOPIC_PREFIX")] = "",
    limit: Annotated[int, typer.Option("--limit", min=1, help="the newest this many of each topic")] = 20,
    full: Annotated[bool, typer.Option("--full", help="each reason whole (else its first 200 characters)")] = False,
) -> None:
    """What the consumers dead-lettered (`<topic>.dlq`): when, from where, which consumer, and why."""
    from datacoop.bus.deadletters import read_dead_letters
    from datacoop.kit.app import broker_unreachable

    wanted = [_topic(t) for t in topics] if topics else list(TOPICS)
    server = _bootstrap(bootstrap)
    names = {qualified(topic_prefix, dlq(t)): t for t in wanted}
    unreachable = broker_unreachable(server, 0)
    if unreachable:  # before aiokafka, which logs its own lines and warnings about the failed client
        fail(f"no Kafka broker answers at {server} ({unreachable}); start the stack (`datacoop up`) or pass "
             "--bootstrap HOST:PORT of yours")
    try:
        letters = asyncio.run(read_dead_letters(server, list(names)))
    except Exception as exc:  # a timeout, a broker that went away meanwhile: one line, not aiokafka's traceback
        said = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
        fail(f"cannot read the dead-letter topics from the broker at {server} ({said}); is it up (`datacoop up`), "
             "or pass --bootstrap")
    total = sum(len(found) for found in letters.values())
    if total == 0:
        console.print(f"nothing dead-lettered on {', '.join(wanted)}: every event read was applied", highlight=False,
                      soft_wrap=True)
        return
    for dlq_topic, found in letters.items():
        if not found:
            continue
        shown = found[-limit:]
        records = sum(d.copies for d in found)
        sent_again = records > len(found)
        table = Table(title=f"{dlq_topic}: {len(found)} dead-lettered"
                            + (f" in {records} records (some sent again)" if sent_again else "")
                            + (f", the newest {len(shown)}" if len(shown) < len(found) else ""))
        columns = ["offset", "when (UTC)", "source", "consumer", "event", "reason"]
        for col in [*columns, "copies"] if sent_again else columns:
            table.add_column(col)
        for d in shown:
            reason = d.reason if full or len(d.reason) <= REASON_CHARS else d.reason[:REASON_CHARS] + "…"
            event = f"{d.event_type or '?'} {d.event_id or ''}".strip()
            row = [str(d.offset), f"{d.dead_lettered_at:%Y-%m-%d %H:%M:%S}", d.source, d.consumer, event, reason]
            table.add_row(*[*row, str(d.copies)] if sent_again else row)
        print_table(table, whole=(0, 2))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root CLI."""
    app.command("dlq")(dlq_cmd)
