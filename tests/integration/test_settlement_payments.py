"""The settlement service's chain watch on a real anvil: each PaymentConfirmed says when the payment was
made (its block's timestamp), apart from when settlement confirmed it (its own clock)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from datacoop.chain import ADMIN_KEY, ANVIL_KEYS, Contracts, deploy_local_stack, pay_order
from datacoop.events.payouts import PaymentConfirmed
from datacoop.events.registry import Event
from infra.local import Chain, start_chain
from services.settlement.service import SettlementService, read_payments
from services.settlement.settings import SettlementSettings

BUYER_KEY = ANVIL_KEYS[9]
PRICE = 5_000_000
# settlement's clock, years away from the chain's: a confirmed_at or paid_at taken from it shows
SETTLEMENT_NOW = datetime(2031, 6, 1, 12, 0, tzinfo=UTC)


class RecordingWriter:
    """Stands in for the service's Writer: runs each decision and keeps what it would append."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def execute(self, subject: str, decide: Callable[[], Sequence[Event]], **_: Any) -> list[Any]:
        self.events += decide()
        return []


@pytest.fixture
def stack(chain: Chain) -> dict[str, str]:
    """Fresh contracts on the session chain; the service environment deploy_local_stack returns."""
    return deploy_local_stack(chain.url)


@pytest.fixture
def service(stack: dict[str, str], tmp_path: Path) -> Iterator[SettlementService]:
    """The service, not started (no broker): its watch step runs against the chain, its writer records."""
    settings = SettlementSettings(
        chain_url=stack["DATACOOP_CHAIN_URL"], market_address=stack["DATACOOP_MARKET_ADDRESS"],
        token_address=stack["DATACOOP_TOKEN_ADDRESS"], settler_key=stack["DATACOOP_SETTLER_KEY"],
        coop_address=stack["DATACOOP_COOP_ADDRESS"], start_block=int(stack["DATACOOP_START_BLOCK"]),
        confirmations=0, data_dir=tmp_path, bootstrap="127.0.0.1:9", settlement_operator_token="t" * 32)
    s = SettlementService(settings, clock=lambda: SETTLEMENT_NOW)
    s.writer = RecordingWriter()  # type: ignore[assignment]
    yield s
    s.store.close()


def block_time(w3: Web3, block_number: int) -> datetime:
    return datetime.fromtimestamp(w3.eth.get_block(block_number)["timestamp"], UTC)


def pay(service: SettlementService, order: uuid.UUID) -> int:
    """Pay `order` on chain; the block number of the payment."""
    receipt = pay_order(service.contracts, BUYER_KEY, order, PRICE, minter_key=ADMIN_KEY)
    return int(receipt["blockNumber"])


async def test_a_confirmed_payment_carries_its_blocks_timestamp_and_settlements_confirmation_time(
        service: SettlementService) -> None:
    orders = [uuid.uuid4(), uuid.uuid4()]
    blocks = [pay(service, o) for o in orders]
    assert await service.watch_once() == 2
    writer = service.writer
    assert isinstance(writer, RecordingWriter)
    confirmed = [e for e in writer.events if isinstance(e, PaymentConfirmed)]
    assert [(e.order_id, e.block_number) for e in confirmed] == [(str(o), b) for o, b in zip(orders, blocks,
                                                                                             strict=True)]
    for e in confirmed:
        assert e.paid_at == block_time(service.w3, e.block_number), "paid when its block was made"
        assert e.confirmed_at == SETTLEMENT_NOW, "confirmed on settlement's clock"
    # the event as it goes on the log: the time survives the round trip through JSON
    assert PaymentConfirmed.model_validate_json(confirmed[0].model_dump_json()).paid_at == confirmed[0].paid_at


def test_block_times_are_read_once_per_block(service: SettlementService) -> None:
    """A block whose time is known (several payments in it, a range read again) is not asked for again."""
    first, second = pay(service, uuid.uuid4()), pay(service, uuid.uuid4())
    second_time = block_time(service.w3, second)
    known = datetime(2030, 1, 1, tzinfo=UTC)
    cache = {first: known}
    calls: list[int] = []
    real_get_block = service.w3.eth.get_block

    def counting_get_block(number: int) -> Any:
        calls.append(number)
        return real_get_block(number)

    service.w3.eth.get_block = counting_get_block  # type: ignore[method-assign]
    found = read_payments(service.w3, service.contracts.market, first, second, cache)
    assert [(p.block_number, p.paid_at) for p in found] == [(first, known), (second, second_time)]
    assert calls == [second] and cache[second] == second_time
    assert read_payments(service.w3, service.contracts.market, first, second, cache) == found
    assert calls == [second], "read again: nothing asked for"


def test_a_payment_made_long_before_it_is_read_keeps_its_blocks_time(tmp_path: Path) -> None:
    """The chain moves on (its clock pushed an hour ahead for the blocks after the payment; an anvil of
    its own, so the session chain's clock stays real time): the payment is still dated by its own block,
    not by the head's nor by the reader's clock."""
    chain = start_chain(log_path=tmp_path / "anvil.log")
    try:
        env = deploy_local_stack(chain.url)
        w3 = Web3(Web3.HTTPProvider(chain.url))
        contracts = Contracts.at(w3, env["DATACOOP_TOKEN_ADDRESS"], env["DATACOOP_MARKET_ADDRESS"])
        receipt = pay_order(contracts, BUYER_KEY, uuid.uuid4(), PRICE, minter_key=ADMIN_KEY)
        paid_block = int(receipt["blockNumber"])
        w3.provider.make_request("evm_increaseTime", [3600])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        head = w3.eth.block_number
        assert block_time(w3, head) - block_time(w3, paid_block) >= timedelta(hours=1)
        [found] = read_payments(w3, contracts.market, int(env["DATACOOP_START_BLOCK"]), head, {})
        assert found.block_number == paid_block and found.paid_at == block_time(w3, paid_block)
    finally:
        chain.stop()
