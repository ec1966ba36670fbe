"""Fixtures for the marketplace e2e tests: one stack per module (fresh contracts, the settlement and
marketplace services as processes on the session's broker and anvil), versions written as Parquet and
published the way the anonymizer publishes them (after the dataset's definition, which names the
columns queries may group by), researchers driven through the CLI and the client."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from eth_account import Account
from typer.testing import CliRunner, Result
from web3 import Web3

from datacoop.bus.admin import ensure_topics, standard_topics
from datacoop.chain import ANVIL_KEYS, LOCAL_CHAIN_ID, Contracts, deploy_local_stack, pay_order, send_receipt
from datacoop.cli import market as market_cli
from datacoop.events.datasets import DatasetDefined, DatasetVersionPublished, DatasetVersionSuperseded
from datacoop.topics import DATASETS
from infra.local import Broker, Chain
from services.consent import eip712
from services.consent.client import MemberWallet
from tests.e2e.conftest import ServiceProcess, start_service
from tests.e2e.settlement_fixtures import publish
from tests.e2e.waiting import wait_for

ADMIN_KEY = ANVIL_KEYS[0]
MEMBER_KEYS = ANVIL_KEYS[4:9]
MEMBERS = [Account.from_key(k).address for k in MEMBER_KEYS]
BUYER_KEYS = (ANVIL_KEYS[9], ANVIL_KEYS[3])
FEE_BPS = 250
OFFERS = """
defaults:
  order_ttl_s: 3600
  download: {price_units: 5000000}
  query: {price_units: 2000000, budget_epsilon: 1.0}
  compute: {price_units: 3000000}
datasets:
  fleeting:
    order_ttl_s: 1
  lapsing:
    order_ttl_s: 1
  refunding:
    order_ttl_s: 1
"""
DEFINITION: dict[str, Any] = {
    "columns": {"age_band": {"type": "integer", "min": 18, "max": 90}, "sex": {"type": "categorical"},
                "income": {"type": "integer"}},
    "quasi_identifiers": {"age_band": {"numeric_bands": {"min": 18, "max": 90, "widths": [10]}}},
    "sensitive": ["sex"], "privacy": {"k": 5, "l": 2}}

__all__ = ["MEMBERS", "Stack", "cli", "stack", "wait_for"]


@dataclass
class Stack:
    broker: Broker
    chain: Chain
    prefix: str
    root: Path
    chain_env: dict[str, str]
    contracts: Contracts
    settlement: ServiceProcess
    market_env: dict[str, str]
    market: ServiceProcess | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        assert self.market is not None
        return self.market.url

    def start_market(self) -> ServiceProcess:
        self.starts += 1
        self.market = start_service("marketplace", self.market_env, self.root / f"marketplace-{self.starts}.log")
        return self.market

    def stop_market(self, wipe: bool = False) -> None:
        assert self.market is not None
        self.market.stop()
        if wipe:
            shutil.rmtree(self.market_env["DATACOOP_DATA_DIR"])

    def publish_version(self, dataset_id: str, version: int, rows: int = 300, seed: int = 1,
                        weights: dict[str, int] | None = None) -> tuple[Path, pa.Table]:
        """Write a Parquet version into the object store and publish it as the anonymizer would."""
        table = version_table(rows, seed)
        path = self.root / "objects" / dataset_id / f"v{version}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        weights = weights or {m: rows // len(MEMBERS) for m in MEMBERS}
        if version == 1:
            publish(self.broker.bootstrap, self.prefix, DATASETS, dataset_id, "datacoop/anonymizer", DatasetDefined(
                dataset_id=dataset_id, definition_version=1, purpose="health-research", categories=["health"],
                definition={"name": dataset_id, **DEFINITION}, source="file", defined_at=datetime.now(UTC)))
        ev = DatasetVersionPublished(
            dataset_id=dataset_id, version=version, purpose="health-research", categories=["health"],
            location=path.as_uri(), sha256=hashlib.sha256(path.read_bytes()).hexdigest(), rows=rows,
            suppressed_rows=3, k=5, l_diversity=2.0, privacy_model="distinct-l", information_loss=0.12, epsilon=1.0,
            columns={"pseudonym": "VARCHAR", "age_band": "VARCHAR", "sex": "VARCHAR", "income": "DOUBLE"},
            contributor_weights=weights, published_at=datetime.now(UTC))
        publish(self.broker.bootstrap, self.prefix, DATASETS, dataset_id, "datacoop/anonymizer", ev)
        wait_for(lambda: any(v["dataset_id"] == dataset_id and v["version"] == version
                             for v in self.get("/catalog").json()["versions"]), f"{dataset_id} v{version} listed")
        return path, table

    def supersede(self, dataset_id: str, version: int, reason: str = "a member revoked their consent") -> None:
        ev = DatasetVersionSuperseded(dataset_id=dataset_id, version=version, superseded_by=version + 1,
                                      reason=reason, superseded_at=datetime.now(UTC))
        publish(self.broker.bootstrap, self.prefix, DATASETS, dataset_id, "datacoop/anonymizer", ev)
        wait_for(lambda: self.get(f"/catalog/{dataset_id}/{version}").json()["status"] == "superseded",
                 f"{dataset_id} v{version} superseded")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30, **kwargs)

    def settlement_get(self, path: str) -> Any:
        """GET `path` of the settlement service with its (development) operator token, as JSON."""
        from datacoop.kit.settings import DEV_OPERATOR_TOKEN

        return httpx.get(f"{self.settlement.url}{path}", timeout=30,
                         headers={"Authorization": f"Bearer {DEV_OPERATOR_TOKEN}"}).json()

    def pay(self, buyer_key: str, order_id: str, price_units: int) -> None:
        """Buy on chain (minting the mock stablecoin first) and mine one block for the confirmation."""
        pay_order(self.contracts, buyer_key, uuid.UUID(order_id), price_units, minter_key=ADMIN_KEY)
        self.contracts.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    def mint(self, buyer_key: str, units: int) -> None:
        buyer = Account.from_key(buyer_key).address
        send_receipt(self.contracts.w3, self.contracts.stablecoin.functions.mint(buyer, units), ADMIN_KEY)

    def mine(self) -> None:
        self.contracts.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def version_table(rows: int, seed: int) -> pa.Table:
    bands = ["20-29", "30-39", "40-49", "50-59"]
    return pa.table({
        "pseudonym": [f"p{(i * 7 + seed) % 97:03d}" for i in range(rows)],
        "age_band": [bands[(i + seed) % 4] for i in range(rows)],
        "sex": ["F" if (i * seed) % 3 else "M" for i in range(rows)],
        "income": [float((i * 7919 + seed * 104729) % 150_000) for i in range(rows)],
    })


@pytest.fixture(scope="module")
def stack(broker: Broker, chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("market")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    chain_env = deploy_local_stack(chain.url)
    w3 = Web3(Web3.HTTPProvider(chain.url))
    contracts = Contracts.at(w3, chain_env["DATACOOP_TOKEN_ADDRESS"], chain_env["DATACOOP_MARKET_ADDRESS"])
    asyncio.run(ensure_topics(broker.bootstrap, standard_topics(f"{prefix}.")))
    common = {"DATACOOP_BOOTSTRAP": broker.bootstrap, "DATACOOP_TOPIC_PREFIX": f"{prefix}.", **chain_env}
    settlement = start_service("settlement", {
        **common, "DATACOOP_DATA_DIR": str(root / "settlement"), "DATACOOP_FEE_BPS": str(FEE_BPS),
        "DATACOOP_CONFIRMATIONS": "1", "DATACOOP_POLL_INTERVAL_S": "0.05", "DATACOOP_EPOCH_INTERVAL_S": "3600",
    }, root / "settlement.log")
    offers = root / "offers.yaml"
    offers.write_text(OFFERS)
    market_env = {**common, "DATACOOP_DATA_DIR": str(root / "market"), "DATACOOP_OFFERS_FILE": str(offers),
                  "DATACOOP_OBJECT_STORE_DIR": str(root / "objects"),
                  "DATACOOP_GRANT_KEY_FILE": str(root / "grant-key.pem"), "DATACOOP_SWEEP_INTERVAL_S": "0.2",
                  "DATACOOP_PAYMENT_POLL_S": "0.05"}
    s = Stack(broker, chain, prefix, root, chain_env, contracts, settlement, market_env)
    s.start_market()
    yield s
    if s.market is not None:
        s.market.stop()
    settlement.stop()


_CLI = typer.Typer()
market_cli.register(_CLI)


def cli(stack: Stack, *args: str, api_key_file: Path | None = None, env: dict[str, str] | None = None) -> Result:
    """`datacoop <args>` against the stack's marketplace (the area's commands on their own Typer)."""
    extra = ["--market-url", stack.url]
    if api_key_file is not None:
        extra += ["--api-key-file", str(api_key_file)]
    from datacoop.kit.settings import DEV_OPERATOR_TOKEN

    return CliRunner().invoke(_CLI, [*args, *extra], env={
        "DATACOOP_CHAIN_URL": stack.chain.url, "DATACOOP_SETTLEMENT_URL": stack.settlement.url,
        "DATACOOP_SETTLEMENT_OPERATOR_TOKEN": DEV_OPERATOR_TOKEN, **(env or {})})


def member_wallet(stack: Stack, key: str) -> MemberWallet:
    """A member's wallet that signs reads with the stack's EIP-712 domain (its chain and market contract)."""
    domain = eip712.Domain(chain_id=LOCAL_CHAIN_ID, verifying_contract=stack.chain_env["DATACOOP_MARKET_ADDRESS"])
    return MemberWallet(key, "http://127.0.0.1:9", domain=domain)  # the consent service is not asked
