"""DP aggregate queries through the marketplace API over a 1,000,000-row version, beside DuckDB alone.

Starts a local Tansu broker, writes a 1,000,000-row Parquet version (4 generalized attributes and a
numeric column), publishes it as the anonymizer would, and runs services.marketplace in-process: the
real app (FastAPI) called through httpx.ASGITransport (no sockets), its real projection, writer and
consumer on the broker. A researcher registers, orders the query offer, the payment is confirmed (a
PaymentConfirmed is published, playing settlement), then each timed query is the whole API path:
API-key check, query validation, budget pre-check, the DuckDB aggregate on the loaded version, Laplace
noise, the QueryAnswered spend produced with acks=all and projected, the JSON answer.

- query_p50_ms / query_p99_ms: that path, for a mean of `income` grouped by `age_band` with a filter
  (QUERIES runs after a warm-up that loads the version once);
- duckdb_p50_ms / duckdb_p99_ms: the same aggregate (same SQL, same in-memory table) in DuckDB directly;
- engine_p50_ms: the engine's answer alone (aggregate + noise, no HTTP, no event);
- load_s: loading the version into DuckDB (once per version, on its first query).
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datacoop.bus import Publisher
from datacoop.events import Envelope
from datacoop.events.datasets import DatasetDefined, DatasetVersionPublished
from datacoop.events.payouts import PaymentConfirmed
from datacoop.events.registry import Event
from datacoop.kit import create_app
from datacoop.topics import DATASETS, PAYOUTS, qualified
from infra.local import start_broker
from services.marketplace.api import build_router
from services.marketplace.query import Query, plan
from services.marketplace.service import MarketplaceService
from services.marketplace.settings import MarketplaceSettings

ROWS = 1_000_000
MEMBERS = 10_000
QUERIES = 300
QUERY = {"aggregate": "mean", "column": "income", "bounds": [0, 200_000], "group_by": ["age_band"],
         "filters": [{"column": "sex", "op": "=", "value": "F"}], "epsilon": 0.01}
OFFERS = ("defaults:\n  order_ttl_s: 3600\n  download: {price_units: 5}\n"
          "  query: {price_units: 5, budget_epsilon: 100}\n  compute: {price_units: 5}\n")


def _write_version(path: Path) -> str:
    rng = np.random.default_rng(1)
    bands = np.array(["18-24", "25-34", "35-44", "45-54", "55-64", "65+"])
    regions = np.array([f"region-{i}" for i in range(10)])
    pq.write_table(pa.table({
        "pseudonym": [f"p{i % MEMBERS:05d}" for i in range(ROWS)],
        "age_band": bands[rng.integers(0, len(bands), ROWS)],
        "sex": np.array(["F", "M"])[rng.integers(0, 2, ROWS)],
        "region": regions[rng.integers(0, len(regions), ROWS)],
        "income": rng.gamma(2.0, 25_000, ROWS),
    }), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _publish(bootstrap: str, prefix: str, topic: str, subject: str, event: Event) -> None:
    async with Publisher(bootstrap) as pub:
        await pub.publish(qualified(prefix, topic), Envelope(
            source="bench", type=event.type_name(), subject=subject, seq=1, data=event.model_dump(mode="json")))


async def _wait(check: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]) * 1000


async def _bench(bootstrap: str, root: Path) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    parquet = root / "objects" / "v1.parquet"
    parquet.parent.mkdir(parents=True)
    sha = _write_version(parquet)
    members = {"0x" + hashlib.sha256(str(i).encode()).hexdigest()[:40]: ROWS // MEMBERS for i in range(MEMBERS)}
    offers = root / "offers.yaml"
    offers.write_text(OFFERS)
    settings = MarketplaceSettings(bootstrap=bootstrap, topic_prefix=prefix, data_dir=root / "data",
                                   offers_file=offers, object_store_dir=root / "objects", log_json=False,
                                   payment_poll_s=0.05)
    service = MarketplaceService(settings)
    app = create_app(service, [build_router(service)], title="bench")
    await service.start()
    try:
        await _publish(bootstrap, prefix, DATASETS, "bench-ds", DatasetDefined(  # what queries may group by
            dataset_id="bench-ds", definition_version=1, purpose="health-research", categories=["health"],
            definition={"columns": {"age_band": {"type": "categorical"}, "sex": {"type": "categorical"},
                                    "region": {"type": "categorical"}, "income": {"type": "number"}},
                        "quasi_identifiers": {"age_band": "age-bands"}, "sensitive": ["region"]},
            source="api", defined_at=datetime.now(UTC)))
        await _publish(bootstrap, prefix, DATASETS, "bench-ds", DatasetVersionPublished(
            dataset_id="bench-ds", version=1, purpose="health-research", categories=["health"],
            location=parquet.as_uri(), sha256=sha, rows=ROWS, suppressed_rows=0, k=10, l_diversity=2, epsilon=1,
            privacy_model="distinct-l", information_loss=0.1, contributor_weights=members,
            columns={"pseudonym": "VARCHAR", "age_band": "VARCHAR", "sex": "VARCHAR", "region": "VARCHAR",
                     "income": "DOUBLE"}, published_at=datetime.now(UTC)))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://market") as http:
            await _wait(lambda: _has_version(http), "the version in the catalog")
            reg = (await http.post("/researchers", json={"name": "bench", "wallet": "0x" + "1" * 40})).json()
            http.headers["authorization"] = f"Bearer {reg['api_key']}"
            order = (await http.post("/orders", json={"dataset_id": "bench-ds", "version": 1, "offer": "query"}))
            order_id = order.json()["order_id"]
            await _publish(bootstrap, prefix, PAYOUTS, order_id, PaymentConfirmed(
                order_id=order_id, chain_order_id="0x" + "ab" * 32, buyer="0x" + "1" * 40, amount_units=5,
                tx_hash="0x" + "cd" * 32, block_number=1, log_index=0, confirmed_at=datetime.now(UTC)))
            await _wait(lambda: _paid(http, order_id), "the order to turn paid")
            started = time.perf_counter()
            first = await http.post(f"/orders/{order_id}/queries", json=QUERY)
            load_s = time.perf_counter() - started
            assert first.status_code == 200, first.text
            for _ in range(20):
                await http.post(f"/orders/{order_id}/queries", json=QUERY)
            api: list[float] = []
            for _ in range(QUERIES):
                t = time.perf_counter()
                resp = await http.post(f"/orders/{order_id}/queries", json=QUERY)
                api.append(time.perf_counter() - t)
                assert resp.status_code == 200, resp.text
        found = service.projection.version("bench-ds", 1)
        assert found is not None
        loaded = await service.load_version(found[0])
        query = Query.model_validate(QUERY)
        p = plan(query, loaded.columns, loaded.table)
        direct: list[float] = []
        engine: list[float] = []
        rng = np.random.default_rng(0)
        for _ in range(QUERIES):
            t = time.perf_counter()
            service.engine._db.cursor().execute(p.sql, p.params).fetchall()
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            service.engine.answer(loaded, query, rng)
            engine.append(time.perf_counter() - t)
    finally:
        await service.stop()
    return {"rows": ROWS, "queries": QUERIES, "transport": "httpx.ASGITransport (in-process app)",
            "query_p50_ms": round(_pct(api, 0.5), 2), "query_p99_ms": round(_pct(api, 0.99), 2),
            "duckdb_p50_ms": round(_pct(direct, 0.5), 2), "duckdb_p99_ms": round(_pct(direct, 0.99), 2),
            "engine_p50_ms": round(_pct(engine, 0.5), 2),
            "api_over_duckdb_p50": round(statistics.median(api) / statistics.median(direct), 2),
            "load_s": round(load_s, 2)}


async def _has_version(http: httpx.AsyncClient) -> bool:
    resp = await http.get("/catalog")
    return resp.status_code == 200 and bool(resp.json()["versions"])


async def _paid(http: httpx.AsyncClient, order_id: str) -> bool:
    return bool((await http.get(f"/orders/{order_id}")).json()["status"] == "paid")


def run() -> dict[str, Any]:
    broker = start_broker()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return asyncio.run(_bench(broker.bootstrap, Path(tmp)))
    finally:
        broker.stop()
