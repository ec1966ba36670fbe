"""The settlement service's root posting against races on a real anvil and the real broker: a refund that
lands between the service's refund check and its postRoot, and a postRoot whose receipt did not come in time.

The service runs as in production (its consumer and writer on the broker), with its loop's interval long, so
the test takes the watch, allocate and epoch steps itself, in order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import TimeExhausted

import services.settlement.service as settlement_service
from datacoop.chain import (
    ADMIN_KEY,
    ANVIL_KEYS,
    OPERATOR_KEY,
    ChainError,
    deploy_local_stack,
    order_id_from_uuid,
    pay_order,
    send_receipt,
)
from datacoop.events.orders import OrderPaid
from datacoop.topics import ORDERS
from infra.local import Broker, Chain, start_chain
from services.settlement import domain
from services.settlement.service import SettlementService
from services.settlement.settings import SettlementSettings
from tests.e2e.settlement_fixtures import publish, publish_order, publish_version

BUYER_KEY = ANVIL_KEYS[9]
MEMBER = Account.from_key(ANVIL_KEYS[5]).address
USD = 1_000_000
NOW = datetime(2031, 6, 1, 12, 0, tzinfo=UTC)


async def until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def started(env: dict[str, str], broker: Broker, prefix: str, data_dir: Path) -> SettlementService:
    settings = SettlementSettings(
        chain_url=env["DATACOOP_CHAIN_URL"], market_address=env["DATACOOP_MARKET_ADDRESS"],
        token_address=env["DATACOOP_TOKEN_ADDRESS"], settler_key=env["DATACOOP_SETTLER_KEY"],
        coop_address=env["DATACOOP_COOP_ADDRESS"], start_block=int(env["DATACOOP_START_BLOCK"]),
        confirmations=0, data_dir=data_dir, bootstrap=broker.bootstrap, topic_prefix=f"{prefix}.",
        poll_interval_s=3600, settlement_operator_token="t" * 32)
    s = SettlementService(settings, clock=lambda: NOW)
    await s.start()
    await until(lambda: s.ready, "the service to catch up")
    return s


@pytest.fixture
async def service(chain: Chain, broker: Broker, prefix: str, tmp_path: Path) -> AsyncIterator[SettlementService]:
    s = await started(deploy_local_stack(chain.url), broker, prefix, tmp_path)
    yield s
    await s.stop()


async def sell(service: SettlementService, order: uuid.UUID, price_units: int, tx_hash: str) -> None:
    """What the anonymizer and the marketplace tell settlement, on the topics: the version sold (one member's
    records), the order at its price, and the marketplace's OrderPaid call on its payment."""
    bootstrap, prefix = service.settings.bootstrap, service.settings.topic_prefix.removesuffix(".")
    await asyncio.to_thread(publish_version, bootstrap, prefix, "ds", 1, {MEMBER: 3})
    await asyncio.to_thread(publish_order, bootstrap, prefix, order, "ds", 1, price_units)
    paid = OrderPaid(order_id=str(order), payment_event_id=f"pay-{order}", amount_units=price_units, tx_hash=tx_hash,
                     paid_at=NOW)
    await asyncio.to_thread(publish, bootstrap, prefix, ORDERS, str(order), "datacoop/marketplace", paid)
    await until(lambda: service.runner.applied_count >= 3, "the sale to reach settlement")


async def test_a_refund_landing_between_the_refund_check_and_the_post_puts_no_root_on_chain(
        service: SettlementService, chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """Escrow holds more than the root (a payment settlement has no order for yet), so the contract's escrow
    check alone would let a root through that still pays out an order refunded after the service checked."""
    sold, waiting = uuid.uuid4(), uuid.uuid4()
    receipt = pay_order(service.contracts, BUYER_KEY, sold, 5 * USD, minter_key=ADMIN_KEY)
    pay_order(service.contracts, BUYER_KEY, waiting, 10 * USD, minter_key=ADMIN_KEY)
    await sell(service, sold, 5 * USD, "0x" + bytes(receipt["transactionHash"]).hex().removeprefix("0x"))
    assert await service.watch_once() == 2
    assert await service.allocate_once() == 1
    real_send = settlement_service.send

    def refund_then_send(*args: Any, **kwargs: Any) -> Any:
        """The operator's refund of the allocated order is mined just before the root is sent."""
        send_receipt(service.w3, service.contracts.market.functions.refund(order_id_from_uuid(sold)), OPERATOR_KEY)
        monkeypatch.setattr(settlement_service, "send", real_send)
        return real_send(*args, **kwargs)

    monkeypatch.setattr(settlement_service, "send", refund_then_send)
    with pytest.raises(ChainError, match="refunded on chain while epoch 1 was being posted"):
        await service.run_epoch(forced=True)
    market = service.contracts.market.functions
    assert market.currentEpoch().call() == 0, "no root pays out the refunded order"
    with pytest.raises(domain.SettlementRefused) as refused:
        await service.run_epoch(forced=True)
    assert refused.value.slug == "refunded-after-allocation"
    assert market.currentEpoch().call() == 0


async def test_a_refund_mined_before_the_allocation_but_not_yet_confirmed_stops_the_allocation(
        service: SettlementService) -> None:
    """Settlement learns of a refund from its log `confirmations` blocks deep; one mined before the allocation but
    not that deep yet (the operator refunded while GET /orders/{id} showed no allocation, as docs/payments.md
    says) must still keep the order from being allocated, else every later root would be refused."""
    order = uuid.uuid4()
    receipt = pay_order(service.contracts, BUYER_KEY, order, 5 * USD, minter_key=ADMIN_KEY)
    assert await service.watch_once() == 1
    view = service.projection.order_view(str(order))
    assert view is not None and view["allocation"] is None
    send_receipt(service.w3, service.contracts.market.functions.refund(order_id_from_uuid(order)), OPERATOR_KEY)
    await sell(service, order, 5 * USD, "0x" + bytes(receipt["transactionHash"]).hex().removeprefix("0x"))
    # the refund's log is not read yet (as with confirmations still to come): the allocation asks the chain
    assert await service.allocate_once() == 0
    assert service.projection.balances() == {}
    assert await service.watch_once() == 1  # the PaymentRefunded
    assert service.projection.payment_refunded(str(order))
    assert await service.allocate_once() == 0
    other = uuid.uuid4()  # a second sale: its root is posted, since nothing refunded was allocated
    pay_order(service.contracts, BUYER_KEY, other, 5 * USD, minter_key=ADMIN_KEY)
    assert await service.watch_once() == 1
    bootstrap, prefix = service.settings.bootstrap, service.settings.topic_prefix.removesuffix(".")
    await asyncio.to_thread(publish_order, bootstrap, prefix, other, "ds", 1, 5 * USD)
    await asyncio.to_thread(publish, bootstrap, prefix, ORDERS, str(other), "datacoop/marketplace", OrderPaid(
        order_id=str(other), payment_event_id=f"pay-{other}", amount_units=5 * USD, tx_hash="0x" + "ab" * 32,
        paid_at=NOW))
    await until(lambda: len(service.projection.ready_to_allocate()) == 1, "the second sale to reach settlement")
    assert await service.allocate_once() == 1
    posted = await service.run_epoch(forced=True)
    assert posted is not None and posted["posted"]


async def test_no_second_post_root_is_sent_while_the_first_is_still_pending(
        broker: Broker, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its receipt did not come within the wait (the chain mines nothing here): the next attempt sends
    nothing more, and once the first is mined the epoch is recorded from its RootPosted log. An anvil of its
    own, since mining is switched off on it."""
    chain = start_chain(log_path=tmp_path / "anvil.log")
    try:
        env = deploy_local_stack(chain.url)
        service = await started(env, broker, prefix, tmp_path)
        try:
            pay_order(service.contracts, BUYER_KEY, uuid.uuid4(), 5 * USD, minter_key=ADMIN_KEY)
            prepared, _ = domain.prepare_epoch(domain.EpochState(), {env["DATACOOP_COOP_ADDRESS"]: 5 * USD}, NOW)
            assert service.writer is not None
            await service.writer.execute("epoch-1", lambda: [prepared])
            w3: Web3 = service.w3
            settler = Account.from_key(env["DATACOOP_SETTLER_KEY"]).address

            def in_flight() -> int:
                return int(w3.eth.get_transaction_count(settler, "pending") -
                           w3.eth.get_transaction_count(settler, "latest"))

            w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
            monkeypatch.setattr(settlement_service, "RECEIPT_TIMEOUT_S", 0.5)
            with pytest.raises(TimeExhausted):
                await service.run_epoch(forced=False)
            assert in_flight() == 1
            with pytest.raises(ChainError, match="still pending"):
                await service.run_epoch(forced=False)
            assert in_flight() == 1, "one postRoot in flight, not one more per attempt"
            w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            assert in_flight() == 0
            posted = await service.run_epoch(forced=False)
            assert posted is not None and posted["posted"] and posted["root"] == prepared.root
            assert service.contracts.market.functions.currentEpoch().call() == 1
        finally:
            await service.stop()
    finally:
        chain.stop()
