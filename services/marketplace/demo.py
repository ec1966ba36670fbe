"""The marketplace chapter of the demo: a researcher buys a download and a query budget, pays on chain,
downloads the Parquet, asks DP queries until the budget is gone; members see who bought their data; an
order paid short is refunded by the operator.

    from services.marketplace.demo import researcher_buys
    researcher_buys(market_url, rpc_url, buyer_key, console, minter_key=admin_key)

Needs the settlement service running (it confirms the payments). When no anonymizer has published a
version yet, `publish_sample_version(...)` writes a small Parquet version and publishes it as the
anonymizer would, so the chapter can run on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from eth_account import Account
from rich.console import Console
from rich.table import Table

from datacoop.bus import Publisher
from datacoop.events import Envelope
from datacoop.events.datasets import DatasetVersionPublished
from datacoop.http import check
from datacoop.topics import DATASETS, qualified
from services.consent.client import MemberWallet
from services.marketplace.client import ResearcherClient, pay, refund, register_researcher


def publish_sample_version(bootstrap: str, topic_prefix: str, object_store_dir: Path, members: Sequence[str],
                           dataset_id: str = "demo-survey", version: int = 1, rows_per_member: int = 40) -> str:
    """Write a generalized sample table (rows_per_member rows per member) and publish its version. No dataset
    definition is published (an anonymizer on the same topics would take it up), so the marketplace knows
    no column it may group by: queries on this version are ungrouped."""
    bands = ["18-29", "30-44", "45-64", "65+"]
    n = rows_per_member * len(members)
    table = pa.table({"age_band": [bands[i % 4] for i in range(n)], "sex": ["F" if i % 3 else "M" for i in range(n)],
                      "region": [f"region-{i % 5}" for i in range(n)],
                      "income": [float((i * 7919) % 120_000) for i in range(n)]})
    path = object_store_dir / dataset_id / f"v{version}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    event = DatasetVersionPublished(
        dataset_id=dataset_id, version=version, purpose="health-research", categories=["demographics"],
        location=path.resolve().as_uri(), sha256=hashlib.sha256(path.read_bytes()).hexdigest(), rows=n,
        suppressed_rows=0, k=5, l_diversity=2.0, privacy_model="distinct-l", information_loss=0.1, epsilon=1.0,
        columns={"age_band": "VARCHAR", "sex": "VARCHAR", "region": "VARCHAR", "income": "DOUBLE"},
        contributor_weights=dict.fromkeys(members, rows_per_member), published_at=datetime.now(UTC))

    async def go() -> None:
        async with Publisher(bootstrap) as pub:
            await pub.publish(qualified(topic_prefix, DATASETS), Envelope(
                source="datacoop/anonymizer", type=event.type_name(), subject=dataset_id, seq=1,
                dataschema=f"schemas/events/{event.type_name()}.json", data=event.model_dump(mode="json")))

    asyncio.run(go())
    return dataset_id


T = TypeVar("T")


def _mining_until(rpc_url: str, found: Callable[[], T | None], failure: str, timeout_s: float = 60) -> T:
    """What `found()` gives once it gives something, mining a block between tries (settlement confirms logs a
    block deep); RuntimeError(`failure`) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (value := found()) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        httpx.post(rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "evm_mine", "params": []}, timeout=5)
        time.sleep(0.3)
    return value


def _wait_paid(client: ResearcherClient, order_id: str, rpc_url: str, timeout_s: float = 60) -> None:
    _mining_until(rpc_url, lambda: True if client.get_order(order_id)["status"] == "paid" else None,
                  f"order {order_id} was not confirmed paid within {timeout_s} s; is settlement running?", timeout_s)


def researcher_buys(market_url: str, rpc_url: str, buyer_key: str, console: Console, *,
                    minter_key: str | None = None, dataset_id: str | None = None,
                    member: MemberWallet | None = None, operator_key: str | None = None) -> dict[str, Any]:
    """Register, buy a download and a query order of the newest current version, pay both on chain,
    download, query until the budget is spent; print what happened. `minter_key` mints the mock
    stablecoin to the buyer first (local chains); `member` (a contributor's wallet, which signs the read)
    is shown the sales that used their records; with `operator_key` (OPERATOR_ROLE), a third order is paid
    short and refunded (`underpaid_and_refunded`). Returns a summary."""
    buyer = Account.from_key(buyer_key).address
    reg = register_researcher(market_url, "Dr. Demo", buyer, "Demo University")
    client = ResearcherClient(market_url, reg["api_key"])
    catalog = client.catalog()
    current = [v for v in catalog["versions"] if v["status"] == "current"
               and (dataset_id is None or v["dataset_id"] == dataset_id)]
    if not current:
        raise RuntimeError("no dataset version on sale yet; publish one (anonymizer) first")
    v = max(current, key=lambda x: (x["published_at"], x["version"]))
    console.print(f"researcher {reg['researcher_id']} buys from {v['dataset_id']} v{v['version']} "
                  f"({v['rows']:,} rows, k={v['guarantees']['k']}, l={v['guarantees']['l_diversity']:g})")
    if minter_key is not None:
        from web3 import Web3

        from datacoop.chain import Contracts, send_receipt

        contracts = Contracts.at(Web3(Web3.HTTPProvider(rpc_url)), catalog["payment"]["token"],
                                 catalog["payment"]["market"])
        total = sum(o["price_units"] for o in v["offers"] if o["offer"] in ("download", "query"))
        total += next((o["price_units"] for o in v["offers"] if o["offer"] == "download"), 0)  # the short one
        send_receipt(contracts.w3, contracts.stablecoin.functions.mint(buyer, total), minter_key)
    orders = {}
    for offer in ("download", "query"):
        o = client.order_current(v["dataset_id"], offer)  # a rebuild meanwhile replaces v: buy its successor
        tx = pay(rpc_url, catalog["payment"]["token"], catalog["payment"]["market"], buyer_key, o["order_id"],
                 o["price_units"])
        _wait_paid(client, o["order_id"], rpc_url)
        console.print(f"  {offer} order {o['order_id']} paid {o['price_units']:,} units (tx {tx[:18]}…)")
        orders[offer] = o["order_id"]
    with tempfile.TemporaryDirectory() as tmp:
        got = client.download(orders["download"], Path(tmp) / "bought.parquet")
        rows = pq.read_metadata(got["path"]).num_rows
    console.print(f"  downloaded {got['bytes']:,} bytes, {rows:,} rows, sha256 as published")
    table = Table(title="DP queries (Laplace; each spends epsilon from the order's budget)")
    for col in ("query", "epsilon", "noise scale", "left", "first cell"):
        table.add_column(col)
    numeric = next((c for c, t in v["columns"].items() if t.upper() in ("DOUBLE", "BIGINT", "INTEGER")), None)
    group_by = v.get("query_group_by", [])[:1]  # a generalized or declared attribute, never the pseudonym
    whole: dict[str, Any] = {"aggregate": "count", "group_by": [], "epsilon": 0.25}  # one cell: always shown
    if numeric:
        whole = {"aggregate": "mean", "column": numeric, "bounds": [0, 100_000], "group_by": [], "epsilon": 0.25}
    grouped = {**whole, "group_by": group_by}  # cells shown only above the partition-selection threshold
    refused = ""
    for i in range(5):
        query = whole if i % 2 == 0 or not group_by else grouped
        try:
            a = client.query(orders["query"], query)
        except Exception as exc:  # the budget is spent: refused before it runs
            refused = str(exc)
            break
        scale = a["noise"].get("sum_scale") or a["noise"].get("count_scale")
        selection = a["noise"].get("partition_selection") or {}
        cell = a["cells"][0] if a["cells"] else {}
        words = [f"{column}={value}" for column, value in (cell.get("group") or {}).items()]
        for name in (name for name in ("count", "sum", "mean") if name in cell):  # 1 decimal (3 digits below 1)
            figure = cell[name]
            words.append(f"{name} -" if figure is None else f"{name} ≈ {figure:,.1f}" if abs(figure) >= 1
                         else f"{name} ≈ {figure:.3g}")
        first = (", ".join(words) if cell else
                 f"no cell above the threshold ({selection.get('threshold', 0):,.0f} noisy rows) a group-by cell "
                 "needs to be shown")
        by = f" by {', '.join(query['group_by'])}" if query["group_by"] else ""
        table.add_row(f"#{i + 1} {query['aggregate']}{by}", f"{a['epsilon']:g}", f"{scale:,.1f}",
                      f"{a['budget_remaining']:g}", first)
    console.print(table)
    if refused:
        console.print(f"  next query refused: {refused}")
    sales: list[dict[str, Any]] = []
    if member is not None:
        sales = list(check(httpx.get(f"{market_url}/members/{member.address}/orders", timeout=30,
                                     headers=member.read_headers())))
        console.print(f"  member {member.address} sees {len(sales)} paid order(s) that used their records: "
                      + ", ".join(f"{s['offer']} of {s['dataset_id']} v{s['version']} ({s['your_records']} of "
                                  "their records)" for s in sales))
    short = underpaid_and_refunded(client, rpc_url, buyer_key, operator_key, catalog["payment"], v["dataset_id"],
                                   console) if operator_key is not None else None
    return {"researcher_id": reg["researcher_id"], "orders": orders, "rows": rows, "refused": refused,
            "version": (v["dataset_id"], v["version"]), "member_sales": sales, "refunded": short}


def underpaid_and_refunded(client: ResearcherClient, rpc_url: str, buyer_key: str, operator_key: str,
                           payment: dict[str, str], dataset_id: str, console: Console,
                           timeout_s: float = 60) -> dict[str, Any]:
    """A download order paid one unit short (the contract takes one payment per order id, so it can't be
    topped up): it opens nothing and settlement holds it instead of paying members; the operator refunds
    it on chain and the order reads `refunded`. Returns the order id, its status and the units refunded."""
    o = client.order_current(dataset_id, "download")
    pay(rpc_url, payment["token"], payment["market"], buyer_key, o["order_id"], o["price_units"] - 1)
    _mining_until(rpc_url, lambda: client.get_order(o["order_id"]).get("short_payments"),  # settlement, then market
                  f"the short payment of order {o['order_id']} was not confirmed within {timeout_s} s", timeout_s)
    console.print(f"  a download order {o['order_id']} paid {o['price_units'] - 1:,} of {o['price_units']:,} units "
                  "opens nothing (one payment per order id); the operator refunds it")
    tx, units, buyer = refund(rpc_url, payment["token"], payment["market"], operator_key, o["order_id"])

    def refunded_view() -> dict[str, Any] | None:
        view = client.get_order(o["order_id"])
        return view if view["status"] == "refunded" else None

    found = _mining_until(rpc_url, refunded_view,
                          f"order {o['order_id']} did not read refunded within {timeout_s} s of its refund", timeout_s)
    console.print(f"  refunded {units:,} units to {buyer} (tx {tx[:18]}…): the order reads {found['status']}, and "
                  "no member was paid for it")
    return {"order_id": o["order_id"], "status": found["status"], "units": units}
