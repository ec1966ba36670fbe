"""Stand-ins for the marketplace and the anonymizer: publish what they would (a researcher, a paid
compute order, a published version whose Parquet lies in a local folder), so the jobs service and
its workers can be exercised alone: by the e2e tests, the benchmark, and a demo without the others."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from eth_account import Account

from datacoop.bus import Publisher
from datacoop.bus.admin import ensure_topics, standard_topics
from datacoop.events import Envelope
from datacoop.events.datasets import DatasetVersionPublished
from datacoop.events.orders import Offer, OrderPaid, OrderPlaced, ResearcherRegistered
from datacoop.events.registry import Event
from datacoop.kit.problems import secret_sha256
from datacoop.topics import DATASETS, ORDERS, qualified
from services.worker.analytics import schema_of


@dataclass(frozen=True)
class ComputeAccess:
    api_key: str
    researcher_id: str
    order_id: str
    location: str


def publish(bootstrap: str, prefix: str, items: list[tuple[str, str, Event]]) -> None:
    """(topic, subject, event) as their writers would append them (new subjects, seq from 1)."""
    async def go() -> None:
        await ensure_topics(bootstrap, standard_topics(prefix))
        seqs: dict[str, int] = {}
        async with Publisher(bootstrap) as pub:
            for topic, subject, ev in items:
                seqs[subject] = seqs.get(subject, 0) + 1
                env = Envelope(source="datacoop/stand-in", type=ev.type_name(), subject=subject, seq=seqs[subject],
                               data=ev.model_dump(mode="json"))
                await pub.publish(qualified(prefix, topic), env)
    asyncio.run(go())


def publish_compute_market(bootstrap: str, prefix: str, objects: Path, table: pa.Table, *,
                           dataset_id: str = "health-survey", offer: Offer = "compute",
                           paid: bool = True) -> ComputeAccess:
    """Write `table` as version 1 of `dataset_id`, publish it, a researcher and an order of `offer`."""
    objects.mkdir(parents=True, exist_ok=True)
    path = objects / f"{dataset_id}-v1.parquet"
    if not path.exists():
        pq.write_table(table, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    api_key = "dcr_" + uuid.uuid4().hex
    researcher_id, order_id = f"r-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    now = datetime.now(UTC)
    buyer = Account.create().address
    items: list[tuple[str, str, Event]] = [
        (DATASETS, dataset_id, DatasetVersionPublished(
            dataset_id=dataset_id, version=1, purpose="health-research", categories=["health"],
            location=path.as_uri(), sha256=sha, rows=table.num_rows, suppressed_rows=0, k=5, l_diversity=2.0,
            privacy_model="distinct", information_loss=0.1, epsilon=1.0, columns=schema_of(table),
            contributor_weights={Account.create().address: 3}, published_at=now)),
        (ORDERS, researcher_id, ResearcherRegistered(
            researcher_id=researcher_id, name="Dr Stand-in", wallet=buyer,
            api_key_sha256=secret_sha256(api_key), registered_at=now)),
        (ORDERS, order_id, OrderPlaced(order_id=order_id, researcher_id=researcher_id, buyer=buyer,
                                       dataset_id=dataset_id, version=1, offer=offer, price_units=5_000_000,
                                       placed_at=now, expires_at=now + timedelta(hours=1))),
    ]
    if paid:
        items.append((ORDERS, order_id, OrderPaid(order_id=order_id, payment_event_id=str(uuid.uuid4()),
                                                  amount_units=5_000_000, tx_hash="0x" + "ab" * 32, paid_at=now)))
    publish(bootstrap, prefix, items)
    return ComputeAccess(api_key, researcher_id, order_id, path.as_uri())
