"""Fixtures for the settlement e2e tests: fresh contracts per test, the service as a process, and a
scenario that plays the anonymizer and the marketplace by publishing their events."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from web3 import Web3

from datacoop.bus import Publisher
from datacoop.bus.admin import ensure_topics, standard_topics
from datacoop.chain import ANVIL_KEYS, Contracts, deploy_local_stack, pay_order
from datacoop.events import Envelope
from datacoop.events.datasets import DatasetVersionPublished
from datacoop.events.orders import OrderPaid, OrderPlaced, PaymentRefused
from datacoop.events.registry import Event
from datacoop.topics import DATASETS, ORDERS, qualified
from infra.local import Broker, Chain
from tests.e2e.conftest import ServiceProcess, start_service

ADMIN_KEY = ANVIL_KEYS[0]
COOP_KEY = ANVIL_KEYS[2]
MEMBER_KEYS = ANVIL_KEYS[4:9]
BUYER_KEY = ANVIL_KEYS[9]
FEE_BPS = 250
OPERATOR_TOKEN = "e2e-settlement-operator-token"


def expected_split(price: int, weights: dict[str, int], fee_bps: int = FEE_BPS) -> tuple[dict[str, int], int]:
    """Written out independently of allocation.py: floor shares, the rest to the cooperative."""
    fee = price * fee_bps // 10_000
    total = sum(weights.values())
    members = {a: (price - fee) * w // total for a, w in weights.items()}
    return members, price - sum(members.values())


@dataclass
class Settlement:
    """The settlement process (restartable on the same data dir) and the chain it settles on."""

    env: dict[str, str]
    log_dir: Path
    w3: Web3
    contracts: Contracts
    coop: str
    proc: ServiceProcess | None = None
    starts: int = 0
    restarts_log: list[str] = field(default_factory=list)

    def start(self) -> ServiceProcess:
        self.starts += 1
        self.proc = start_service("settlement", self.env, self.log_dir / f"settlement-{self.starts}.log")
        return self.proc

    @property
    def url(self) -> str:
        assert self.proc is not None
        return self.proc.url

    def dead(self) -> bool:
        return self.proc is None or self.proc.proc.poll() is not None

    def wait_dead(self, timeout_s: float = 10) -> None:
        assert self.proc is not None
        self.proc.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def get(self, path: str) -> httpx.Response:
        """As the operator (GET /orders/{id} needs the token; the public routes ignore it)."""
        return httpx.get(f"{self.url}{path}", timeout=10, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})

    def post_epoch(self, token: str | None = OPERATOR_TOKEN) -> httpx.Response | None:
        """POST /epochs as the operator (or with `token`); None when the process died answering it (the
        crash hook)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            return httpx.post(f"{self.url}/epochs", headers=headers, timeout=30)
        except httpx.HTTPError:
            return None


@pytest.fixture
def settlement(broker: Broker, chain: Chain, prefix: str, tmp_path: Path) -> Settlement:
    chain_env = deploy_local_stack(chain.url)
    w3 = Web3(Web3.HTTPProvider(chain.url))
    env = {
        "DATACOOP_BOOTSTRAP": broker.bootstrap, "DATACOOP_TOPIC_PREFIX": f"{prefix}.",
        "DATACOOP_DATA_DIR": str(tmp_path / "data"), **chain_env,
        "DATACOOP_FEE_BPS": str(FEE_BPS), "DATACOOP_CONFIRMATIONS": "1", "DATACOOP_POLL_INTERVAL_S": "0.05",
        "DATACOOP_EPOCH_INTERVAL_S": "3600", "DATACOOP_SETTLEMENT_OPERATOR_TOKEN": OPERATOR_TOKEN,
    }
    asyncio.run(ensure_topics(broker.bootstrap, standard_topics(f"{prefix}.")))
    contracts = Contracts.at(w3, chain_env["DATACOOP_TOKEN_ADDRESS"], chain_env["DATACOOP_MARKET_ADDRESS"])
    s = Settlement(env, tmp_path, w3, contracts, chain_env["DATACOOP_COOP_ADDRESS"])
    yield s
    s.stop()


# -- playing the anonymizer and the marketplace ----------------------------------------------------
def publish(bootstrap: str, prefix: str, topic: str, subject: str, source: str, event: Event) -> None:
    async def go() -> None:
        async with Publisher(bootstrap) as pub:
            await pub.publish(qualified(f"{prefix}.", topic), Envelope(
                source=source, type=event.type_name(), subject=subject, seq=1,
                dataschema=f"schemas/events/{event.type_name()}.json", data=event.model_dump(mode="json")))

    asyncio.run(go())


def publish_version(bootstrap: str, prefix: str, dataset_id: str, version: int, weights: dict[str, int]) -> None:
    ev = DatasetVersionPublished(
        dataset_id=dataset_id, version=version, purpose="health-research", categories=["health"],
        location=f"s3://datasets/{dataset_id}/v{version}.parquet", sha256="0" * 64, rows=sum(weights.values()),
        suppressed_rows=0, k=5, l_diversity=2.0, privacy_model="distinct-l", information_loss=0.1, epsilon=1.0,
        columns={"age_band": "VARCHAR"}, contributor_weights=weights, published_at=datetime.now(UTC))
    publish(bootstrap, prefix, DATASETS, dataset_id, "datacoop/anonymizer", ev)


def publish_order(bootstrap: str, prefix: str, order: uuid.UUID, dataset_id: str, version: int,
                  price_units: int, offer: str = "download") -> None:
    now = datetime.now(UTC)
    ev = OrderPlaced(order_id=str(order), researcher_id="r-1", buyer=Account.from_key(BUYER_KEY).address,
                     dataset_id=dataset_id, version=version, offer=offer, price_units=price_units,
                     placed_at=now, expires_at=now + timedelta(hours=1))
    publish(bootstrap, prefix, ORDERS, str(order), "datacoop/marketplace", ev)


def buy(s: Settlement, order: uuid.UUID, amount_units: int, *, marketplace: str | None = "pays") -> str:
    """The researcher pays on chain; one more block is mined so one confirmation is reached. Then the
    marketplace's call on a payment that covers the price, as the marketplace would append it:
    `marketplace="pays"` (OrderPaid), "refuses" (PaymentRefused: the order had expired) or None (no call
    yet, or a short payment, on which the marketplace makes none). Returns the payment's tx hash."""
    receipt = pay_order(s.contracts, BUYER_KEY, order, amount_units, minter_key=ADMIN_KEY)
    s.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    tx_hash = "0x" + bytes(receipt["transactionHash"]).hex().removeprefix("0x")
    if marketplace is not None:
        decide_payment(s, order, amount_units, tx_hash, paid=marketplace == "pays")
    return tx_hash


def decide_payment(s: Settlement, order: uuid.UUID, amount_units: int, tx_hash: str, *, paid: bool) -> None:
    now = datetime.now(UTC)
    ev: Event = (OrderPaid(order_id=str(order), payment_event_id=f"pay-{order}", amount_units=amount_units,
                           tx_hash=tx_hash, paid_at=now) if paid else
                 PaymentRefused(order_id=str(order), payment_event_id=f"pay-{order}", amount_units=amount_units,
                                tx_hash=tx_hash, reason="order-expired", refused_at=now,
                                detail=f"order {order} expired before its payment arrived; to be refunded"))
    publish(s.env["DATACOOP_BOOTSTRAP"], s.env["DATACOOP_TOPIC_PREFIX"].removesuffix("."), ORDERS, str(order),
            "datacoop/marketplace", ev)
