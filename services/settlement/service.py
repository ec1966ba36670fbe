"""Bootstrap of the settlement service: settings, store, bus, the chain, the settlement loop; `main()`.

One loop (after the projection has caught up with the log) does, in order:
1. watch: read OrderPaid and OrderRefunded logs up to head - confirmations from the stored cursor, with
   the timestamps of their blocks (when each was paid or refunded); in chain order, PaymentConfirmed per
   payment and PaymentRefunded per refund (ids derived from tx hash + log index); then move the cursor;
2. allocate: every payment short of its known order's price is flagged (PaymentFlagged, allocated=false)
   and held for a refund, never allocated; every confirmed payment the marketplace paid (OrderPaid) whose
   order and version are known gets its RevenueAllocated (ids derived from the order id), so each order
   is split once whatever happens;
3. epoch: finish an epoch that was prepared and not posted; else, when due, record EpochPrepared
   (the whole tree) *before* sending postRoot, then EpochPosted once the receipt (or, after a crash,
   the contract's RootPosted log for that epoch) shows it landed.

`DATACOOP_SETTLEMENT_CRASH_AT=<step>` SIGKILLs the process once at that step (tests); steps are
CRASH_STEPS. A marker file in data_dir makes it once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from eth_account import Account
from fastapi import FastAPI
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.types import BlockData, BlockIdentifier

from datacoop.chain import (
    ChainError,
    Contracts,
    TxReverted,
    market_mismatch,
    order_id_from_uuid,
    order_paid_logs,
    order_refunded_logs,
    root_posted_log,
    send,
)
from datacoop.events.envelope import derived_event_id
from datacoop.events.payouts import EpochPosted, PaymentFlagged
from datacoop.events.registry import Event
from datacoop.kit import ServiceRuntime, create_app, serve
from datacoop.kit.settings import DEV_OPERATOR_TOKEN, SettingRefused, dev_default_warned
from datacoop.topics import DATASETS, JOBS, ORDERS, PAYOUTS
from services.settlement import domain
from services.settlement.api import build_router
from services.settlement.merkle import StandardMerkleTree
from services.settlement.projection import SCHEMA_SQL, SettlementProjection
from services.settlement.settings import SettlementSettings

log = logging.getLogger("datacoop.settlement")

ORDER_REFUNDED = 2  # DatacoopMarket.OrderStatus.Refunded
RECEIPT_TIMEOUT_S = 60  # how long a postRoot's receipt is waited for before the next interval looks again
BLOCKS_PER_BATCH = 100  # block headers asked for in one JSON-RPC batch (providers cap batch sizes)
CRASH_STEPS = ("after_payment", "after_allocation", "after_prepare", "after_send", "after_receipt")


def utcnow() -> datetime:
    return datetime.now(UTC)


class SettlementService(ServiceRuntime[SettlementProjection]):
    def __init__(self, settings: SettlementSettings, clock: Callable[[], datetime] = utcnow) -> None:
        super().__init__("settlement", settings, lambda store: SettlementProjection(store.conn),
                         reads=[DATASETS, ORDERS, JOBS], writes=PAYOUTS, schema_sql=SCHEMA_SQL)
        self.cfg = settings
        self.clock = clock
        self.started_at = clock()
        self.w3 = Web3(Web3.HTTPProvider(settings.chain_url, request_kwargs={"timeout": 10}))
        self.contracts = Contracts.at(self.w3, settings.token_address, settings.market_address)
        # for reads an API answer waits on (what an account has claimed): one try, a short timeout
        quick = Web3(Web3.HTTPProvider(settings.chain_url, request_kwargs={"timeout": 2},
                                       exception_retry_configuration=None))
        self.quick_market = Contracts.at(quick, settings.token_address, settings.market_address).market
        self.coop_address = Web3.to_checksum_address(settings.coop_address)
        self.operator_token = dev_default_warned(settings.settlement_operator_token, DEV_OPERATOR_TOKEN,
                                                 "DATACOOP_SETTLEMENT_OPERATOR_TOKEN", dev_secrets=settings.dev_secrets)
        self._epoch_lock = asyncio.Lock()
        self._trees: dict[int, StandardMerkleTree] = {}
        self._block_times: dict[int, datetime] = {}  # block number -> timestamp, for blocks not yet behind the cursor
        self.add_background(self.loop_forever)

    # -- the loop -----------------------------------------------------------------------------
    async def loop_forever(self) -> None:
        last_refusal = ""
        while True:
            try:
                await self.tick()
                last_refusal = ""
            except domain.SettlementRefused as exc:
                if str(exc) != last_refusal:  # said once, not every poll
                    log.error("%s", exc)
                    last_refusal = str(exc)
            except Exception:
                log.exception("settlement step failed; retrying next interval")
            await asyncio.sleep(self.cfg.poll_interval_s)

    async def tick(self) -> None:
        if not self.ready:
            return
        await self.watch_once()
        await self.allocate_once()
        await self.pay_jobs_once()
        await self.run_epoch(forced=False)

    def crash_point(self, step: str) -> None:
        if os.environ.get("DATACOOP_SETTLEMENT_CRASH_AT") != step:
            return
        marker = self.settings.data_dir / f"settlement-crashed-at-{step}"
        if marker.exists():
            return
        marker.touch()
        log.warning("crash hook: SIGKILL at %s", step)
        os.kill(os.getpid(), signal.SIGKILL)

    # -- 1. payments --------------------------------------------------------------------------
    async def watch_once(self) -> int:
        """Confirm the payments and record the refunds of the next block range, in chain order; returns how
        many logs were read."""
        assert self.writer is not None
        head = await asyncio.to_thread(lambda: self.w3.eth.block_number)
        start = self.projection.cursor(self.cfg.start_block)
        end = min(head - self.cfg.confirmations, start + self.cfg.max_blocks_per_poll - 1)
        if end < start:
            return 0
        for number in [n for n in self._block_times if n < start]:  # behind the cursor: never read again
            del self._block_times[number]
        logs = await asyncio.to_thread(read_payments, self.w3, self.contracts.market, start, end, self._block_times)
        for found in logs:
            subject, _ = domain.order_subject(found.chain_order_id)
            kind = "refund" if isinstance(found, domain.RefundedLog) else "payment"
            cause = f"{kind}:{found.tx_hash.lower()}:{found.log_index}"
            await self.writer.execute(subject, self._watched(found, subject), causation_id=cause,
                                      id_for=_derived(cause))
            self.crash_point("after_payment")
        async with self.store.lock:
            with self.store.transaction() as tx:
                self.projection.save_cursor(tx, end + 1)
        return len(logs)

    def _watched(self, found: domain.PaidLog | domain.RefundedLog, subject: str) -> Callable[[], list[Event]]:
        """What one log of the chain gives, decided under the subject's lock (a re-read gives nothing)."""
        if isinstance(found, domain.RefundedLog):
            return lambda: domain.record_refund(found, self.projection.payment_refunded(subject))
        return lambda: domain.confirm_payment(found, self.projection.payment_confirmed(subject), self.clock())

    # -- 2. allocations -----------------------------------------------------------------------
    async def allocate_once(self) -> int:
        """Hold the short payments (a flag each), then split the paid orders; returns the events appended."""
        assert self.writer is not None
        done = await self.hold_short_once()
        ready = self.projection.ready_to_allocate()
        # a refund mined before the allocation but not yet `confirmations` deep (its PaymentRefunded comes later)
        # must still stop it: allocated and then refunded, it would stop every later root
        refunded = set(await asyncio.to_thread(self._refunded_on_chain, [o.order_id for _, o, _ in ready], "latest")
                       ) if ready else set()
        for payment, order, weights in ready:
            if order.order_id in refunded:
                log.info("order %s was refunded on chain before its allocation; it is never allocated", order.order_id)
                continue
            cause = f"allocation:{order.order_id}"

            def decide(payment: domain.Payment = payment, order: domain.Order = order,
                       weights: dict[str, int] = weights) -> list[Event]:
                return domain.allocate_order(payment, order, weights, self.cfg.fee_bps, self.coop_address,
                                             self.projection.allocated(order.order_id),
                                             self.cfg.compute_reserve_bps)

            try:
                done += len(await self.writer.execute(order.order_id, decide, causation_id=cause,
                                                      id_for=_derived(cause)))
            except ValueError as exc:
                log.error("order %s cannot be allocated: %s", order.order_id, exc)
                continue
            self.crash_point("after_allocation")
        return done

    def _refunded_on_chain(self, order_ids: list[str], block: BlockIdentifier) -> list[str]:
        """Which of `order_ids` (UUIDs) the market contract holds as refunded at `block`. Blocking."""
        market = self.contracts.market.functions
        return [o for o in order_ids
                if market.orders(order_id_from_uuid(uuid.UUID(o))).call(block_identifier=block)[1] == ORDER_REFUNDED]

    async def hold_short_once(self) -> int:
        """Flag each payment short of its order's price once: it is held for a refund and never allocated.
        Same cause as an allocation of the order, so a flag re-sent after a crash is a duplicate."""
        assert self.writer is not None
        done = 0
        for payment, order in self.projection.short_payments():
            cause = f"allocation:{order.order_id}"

            def decide(payment: domain.Payment = payment, order: domain.Order = order) -> list[Event]:
                return domain.hold_short_payment(payment, order,
                                                 self.projection.flagged(order.order_id, "amount-mismatch"),
                                                 self.projection.payment_refunded(order.order_id))

            done += len(await self.writer.execute(order.order_id, decide, causation_id=cause, id_for=_derived(cause)))
        return done

    async def pay_jobs_once(self) -> int:
        """A fee for every completed job (JobCompleted on datacoop.jobs), out of its order's compute reserve."""
        paid = 0
        for job_id, order_id, provider, fee_units, _ in self.projection.jobs_to_pay():
            paid += await self.allocate_job_fee(job_id, provider, fee_units, order_id, from_reserve=True)
        return paid

    async def allocate_job_fee(self, job_id: str, provider: str, fee_units: int,
                               order_id: str | None = None, *, from_reserve: bool = False) -> int:
        """Pay one job's fee to its provider, once (the id derives from the job); `from_reserve` caps it by
        what the order's compute reserve holds at that moment (read under the writer's lock)."""
        assert self.writer is not None
        cause = f"job-fee:{job_id}"

        def decide() -> list[Event]:
            left = self.projection.reserve_left(order_id) if from_reserve and order_id else None
            if left is not None and fee_units > left:
                log.warning("job %s: fee %d capped at the %d units left in order %s's compute reserve",
                            job_id, fee_units, left, order_id)
            return domain.allocate_job_fee(job_id, Web3.to_checksum_address(provider), fee_units,
                                           self.projection.allocated(job_id), order_id,
                                           0 if from_reserve and left is None else left)

        return len(await self.writer.execute(job_id, decide, causation_id=cause, id_for=_derived(cause)))

    # -- 3. epochs ----------------------------------------------------------------------------
    async def run_epoch(self, forced: bool) -> dict[str, Any] | None:
        """Finish an unposted epoch, or prepare and post a new one when due; the epoch touched or None."""
        assert self.writer is not None
        async with self._epoch_lock:
            state = self.projection.epoch_state()
            if not state.last_posted:
                return await self._post(state.last_epoch)
            balances = self.projection.balances()
            now = self.clock()
            since = state.last_posted_at or self.started_at
            if not domain.epoch_due(state, sum(balances.values()), now, since, self.cfg.epoch_interval_s,
                                    self.cfg.epoch_threshold_units, forced):
                return None
            await self._refuse_refunded()
            prepared, tree = domain.prepare_epoch(state, balances, now)
            self._trees[prepared.epoch] = tree
            cause = f"epoch:{prepared.epoch}"

            def decide() -> list[Event]:
                return [prepared] if self.projection.epoch_state().last_epoch < prepared.epoch else []

            await self.writer.execute(f"epoch-{prepared.epoch}", decide, causation_id=cause, id_for=_derived(cause))
            self.crash_point("after_prepare")
            return await self._post(prepared.epoch)

    async def _post(self, epoch: int) -> dict[str, Any]:
        """Put prepared `epoch` on chain unless it is there already, then record EpochPosted."""
        assert self.writer is not None
        row = self.projection.epoch(epoch)
        assert row is not None
        root = bytes.fromhex(row["root"][2:])
        market = self.contracts.market
        current = await asyncio.to_thread(market.functions.currentEpoch().call)
        if current >= epoch:
            found = await asyncio.to_thread(root_posted_log, market, epoch, self.cfg.start_block)
            if found is None or found.root != root:
                raise ChainError(f"epoch {epoch} on chain is not the prepared root {row['root']}; "
                                 "another settler posts to this market: stop one of them")
            tx_hash, block_number = found.tx_hash, found.block_number
        else:
            await self._refuse_pending()
            refunded_units = await self._refuse_refunded()
            post = market.functions.postRoot(epoch, root, row["total_units"], refunded_units)
            try:
                sent = await asyncio.to_thread(send, self.w3, post, self.cfg.settler_key, wait=False)
            except TxReverted as exc:
                if exc.error != "RefundsChanged":
                    raise
                raise ChainError(f"an order was refunded on chain while epoch {epoch} was being posted; nothing was "
                                 "posted, the refunds are checked again next interval") from exc
            assert isinstance(sent, HexBytes | bytes)
            self.crash_point("after_send")
            receipt = await asyncio.to_thread(self.w3.eth.wait_for_transaction_receipt, sent, RECEIPT_TIMEOUT_S)
            if receipt["status"] != 1:
                raise ChainError(f"postRoot of epoch {epoch} reverted (tx 0x{bytes(sent).hex()}); retrying")
            self.crash_point("after_receipt")
            tx_hash, block_number = "0x" + bytes(sent).hex(), int(receipt["blockNumber"])
        cause = f"epoch:{epoch}"
        posted = EpochPosted(epoch=epoch, root=row["root"], total_units=row["total_units"], accounts=row["accounts"],
                             tx_hash=tx_hash, block_number=block_number, posted_at=self.clock())

        def decide() -> list[Event]:
            current_row = self.projection.epoch(epoch)
            return [] if current_row is None or current_row["posted"] else [posted]

        await self.writer.execute(f"epoch-{epoch}", decide, causation_id=cause, id_for=_derived(cause))
        log.info("epoch %d posted: root %s, %d units over %d accounts", epoch, row["root"], row["total_units"],
                 row["accounts"])
        return self.projection.epoch(epoch) or row

    async def _refuse_refunded(self) -> int:
        """Never post a root that includes an order refunded after it was allocated: the buyer got the
        money back, so paying it out too would be paid from other orders' escrow. Only orders paid since
        the last posted root can have been refunded (the contract refuses refunds of settled orders).
        Reversing such allocations is not implemented: the operator must not refund allocated orders
        (docs/payments.md, "Refunds").

        Returns the contract's `totalRefunded` read at the same block as the orders' states: `postRoot`
        takes it and reverts (`RefundsChanged`) when a refund landed after this check."""
        last = self.projection.epoch(posted_only=True)
        since = int(last["block_number"]) if last and last["block_number"] is not None else self.cfg.start_block
        candidates = self.projection.allocated_orders_paid_since(since)

        def refunded() -> tuple[list[str], int]:
            block = self.w3.eth.block_number
            total = int(self.contracts.market.functions.totalRefunded().call(block_identifier=block))
            return self._refunded_on_chain(candidates, block), total

        found, refunded_units = await asyncio.to_thread(refunded)
        if found:
            raise domain.SettlementRefused(
                f"order(s) {', '.join(found)} were refunded on chain after settlement allocated them; no root is "
                "posted until an operator resolves it (see docs/payments.md, Refunds)",
                slug="refunded-after-allocation")
        return refunded_units

    async def _refuse_pending(self) -> None:
        """Send nothing while a transaction of the settler's is still pending (a postRoot whose receipt
        did not come in time, say): each retry would queue one more postRoot behind it, with the next
        nonce, all reverting (and paying gas) once the first lands. The next interval looks again."""
        settler = Account.from_key(self.cfg.settler_key).address

        def in_flight() -> int:
            return int(self.w3.eth.get_transaction_count(settler, "pending")) - \
                int(self.w3.eth.get_transaction_count(settler, "latest"))

        if await asyncio.to_thread(in_flight) > 0:
            raise ChainError(f"a transaction of the settler {settler} is still pending; no root is sent until it "
                             "is mined (or replaced)")

    def tree(self, epoch: int) -> StandardMerkleTree | None:
        tree = self._trees.get(epoch)
        if tree is None:
            row = self.projection.epoch(epoch)
            if row is None:
                return None
            tree = self._trees[epoch] = StandardMerkleTree.of(sorted(row["leaves"].items()))
        return tree


def read_payments(w3: Web3, market: Contract, start: int, end: int,
                  block_times: dict[int, datetime]) -> list[domain.PaidLog | domain.RefundedLog]:
    """The OrderPaid and OrderRefunded logs of blocks start..end in chain order (block, log index), each at
    its block's timestamp: a refund always comes after the payment it returns.

    Blocking, for one worker thread: one eth_getLogs per event, then the headers of the blocks holding a
    log whose time `block_times` (a cache, filled here) does not know yet, in JSON-RPC batches; blocks
    without a payment or refund are never read. A block's timestamp never changes under `confirmations`
    (reorgs deeper are not handled anyway), so a range read again after a failure asks for nothing more."""
    found = order_paid_logs(market, start, end)
    refunds = order_refunded_logs(market, start, end)
    missing = sorted(({p.block_number for p in found} | {r.block_number for r in refunds}) - block_times.keys())
    for i in range(0, len(missing), BLOCKS_PER_BATCH):
        numbers = missing[i:i + BLOCKS_PER_BATCH]
        with w3.batch_requests() as batch:
            for number in numbers:
                batch.add(w3.eth.get_block(number))
            blocks = batch.execute()
        for number, block in zip(numbers, blocks, strict=True):
            block_times[number] = datetime.fromtimestamp(int(cast(BlockData, block)["timestamp"]), UTC)
    logs: list[domain.PaidLog | domain.RefundedLog] = [
        domain.PaidLog(p.order_id, p.buyer, p.amount_units, p.tx_hash, p.block_number, p.log_index,
                       block_times[p.block_number]) for p in found]
    logs += [domain.RefundedLog(r.order_id, r.buyer, r.amount_units, r.tx_hash, r.block_number, r.log_index,
                                block_times[r.block_number]) for r in refunds]
    return sorted(logs, key=lambda log: (log.block_number, log.log_index))


def _derived(cause: str) -> Callable[[Event], str]:
    """Ids from the cause: a reaction re-sent after a crash is a duplicate every consumer drops. Each
    event of one reaction needs its own (a consumer applies one event per id): an allocation may flag
    the payment twice, so a flag's id also takes its reason; the other events are one of their type per
    reaction and keep the id of (cause, type)."""
    return lambda event: derived_event_id(cause, event.type_name(),
                                          event.reason if isinstance(event, PaymentFlagged) else "")


def build_app(settings: SettlementSettings | None = None, clock: Callable[[], datetime] = utcnow) -> FastAPI:
    """The service's app; SettingRefused when the chain answers and its market or token address is wrong."""
    settings = settings or SettlementSettings()
    wrong = market_mismatch(settings.chain_url, settings.market_address, settings.token_address)
    if wrong:
        raise SettingRefused(wrong)
    service = SettlementService(settings, clock)
    return create_app(service, [build_router(service)], title="datacoop settlement",
                      description="Payments seen on chain, revenue allocations, payout epochs and proofs.")


def main() -> None:
    serve("settlement", SettlementSettings, build_app)


if __name__ == "__main__":
    main()
