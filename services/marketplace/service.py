"""Bootstrap of the marketplace: settings, store, bus, the payment reactor and expiry sweeper, the
query engine, the app; `main()`.

Reacting to payments: PaymentConfirmed events land in the `payments` table (with the consumed
offsets, as every input does); a background loop turns each payment that covers an unpaid order into
OrderPaid, or into PaymentRefused when it was made after the order expired (by its block's timestamp,
domain.payment_late) or the order's version is no longer on sale; the
reaction's id is derived from the PaymentConfirmed's id, so a re-sent reaction after a crash is a
duplicate every consumer drops.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import FastAPI

from datacoop.chain import market_mismatch
from datacoop.events.datasets import DatasetVersionPublished
from datacoop.events.envelope import derived_event_id
from datacoop.events.orders import MICRO_EPSILON, OrderExpired, OrderPaid, PaymentRefused
from datacoop.events.registry import Event
from datacoop.keys import load_or_create_key
from datacoop.kit import ServiceRuntime, create_app, serve
from datacoop.kit.settings import SettingRefused
from datacoop.topics import DATASETS, ORDERS, PAYOUTS
from services.consent import eip712
from services.marketplace import domain
from services.marketplace.api import build_router
from services.marketplace.engine import LoadedVersion, QueryEngine, selection_threshold
from services.marketplace.files import VersionFiles
from services.marketplace.offers import VersionOffers, load_offers
from services.marketplace.projection import SCHEMA_SQL, MarketProjection, PendingPayment
from services.marketplace.settings import MarketplaceSettings

log = logging.getLogger("datacoop.marketplace")


def utcnow() -> datetime:
    return datetime.now(UTC)


class MarketplaceService(ServiceRuntime[MarketProjection]):
    def __init__(self, settings: MarketplaceSettings, clock: Callable[[], datetime] = utcnow) -> None:
        super().__init__("marketplace", settings, lambda store: MarketProjection(store.conn),
                         reads=[DATASETS, PAYOUTS], writes=ORDERS, schema_sql=SCHEMA_SQL)
        self.settings: MarketplaceSettings = settings
        self.clock = clock
        self.offers = load_offers(settings.offers_file, settings.compute_min_rows)
        self.grant_key = load_or_create_key(settings.grant_key_file
                                            or settings.data_dir / "marketplace-grant-key.pem")
        self.files = VersionFiles(settings.object_store_dir)
        # members sign reads of their own sales with the consent service's domain (the same chain and market)
        self.eip712_domain = eip712.Domain(chain_id=settings.chain_id, verifying_contract=settings.market_address)
        self.engine = QueryEngine(settings.query_memory_limit)
        self._loading: dict[tuple[str, int], asyncio.Task[LoadedVersion]] = {}
        self.add_background(self.react_to_payments_forever)
        self.add_background(self.sweep_forever)

    def payment_info(self) -> dict[str, Any]:
        return {"chain_id": self.settings.chain_id, "market": self.settings.market_address,
                "token": self.settings.token_address, "decimals": 6,
                "how": "approve the market for the price, then call purchase(chain_order_id, price_units)"}

    @staticmethod
    def new_rng() -> np.random.Generator:
        return np.random.default_rng(secrets.randbits(128))

    def rows_per_member(self, v: DatasetVersionPublished) -> int:
        """Rows one member can add or take away (DP sensitivity): the definition's public bound, not the
        data's largest weight (which would make the noise depend on the data); the larger of the two for a
        version published before bounds existed."""
        bound = self.projection.row_bound(v.dataset_id, v.version)
        return max(bound or 1, max(v.contributor_weights.values(), default=1))

    def version_offers(self, v: DatasetVersionPublished) -> VersionOffers:
        """What `v` sells, checked against its columns and rows, with the notes a researcher reads before
        paying (a query offer on a version too small for a group-by cell to show)."""
        cell_rows = None
        if self.projection.groupable(v.dataset_id, v.version):
            terms = self.offers.for_dataset(v.dataset_id)
            budget = terms.budget_micro() / MICRO_EPSILON
            m = self.rows_per_member(v)
            cell_rows = selection_threshold(m, m / budget, budget, self.settings.query_delta)
        return self.offers.for_version(v.dataset_id, v.version, v.columns, v.rows, cell_rows)

    async def load_version(self, v: DatasetVersionPublished) -> LoadedVersion:
        """The version in the query engine (loaded once, after its file's sha256 is checked)."""
        key = (v.dataset_id, v.version)
        task = self._loading.get(key)
        if task is None or (task.done() and task.exception() is not None):
            async def go() -> LoadedVersion:
                path = await asyncio.to_thread(self.files.verified, v.location, v.sha256)
                weights = self.rows_per_member(v)
                groupable = self.projection.groupable(v.dataset_id, v.version)
                return await asyncio.to_thread(functools.partial(
                    self.engine.load, v.dataset_id, v.version, path, weights, groupable=groupable))

            task = self._loading[key] = asyncio.ensure_future(go())
        return await asyncio.shield(task)

    # -- reactions --------------------------------------------------------------------------
    async def react_to_payments_once(self) -> int:
        if not self.ready or self.writer is None:
            return 0
        paid = 0
        for payment in self.projection.payments_to_apply():
            def decide(payment: PendingPayment = payment) -> list[Event]:
                return decide_payment(self.projection, payment, self.clock())

            paid += len(await self.writer.execute(payment.order_id, decide, causation_id=payment.payment_event_id,
                                                  id_for=_payment_reaction_id))
        return paid

    async def sweep_once(self) -> int:
        """OrderExpired for every placed order past its expiry; returns how many."""
        if not self.ready or self.writer is None:
            return 0
        now = self.clock()
        expired = 0
        for order_id in self.projection.due_for_expiry(now):
            def decide(order_id: str = order_id) -> list[Event]:
                return domain.decide(domain.ExpireDue(order_id), self.projection.order(order_id), now)

            expired += len(await self.writer.execute(order_id, decide, id_for=_expiry_id))
        return expired

    async def react_to_payments_forever(self) -> None:
        await self._forever(self.react_to_payments_once, self.settings.payment_poll_s, "paid")

    async def sweep_forever(self) -> None:
        await self._forever(self.sweep_once, self.settings.sweep_interval_s, "expired")

    @staticmethod
    async def _forever(step: Callable[[], Any], interval_s: float, what: str) -> None:
        while True:
            try:
                count = await step()
                if count:
                    log.info("%s %d order(s)", what, count)
            except Exception:
                log.exception("%s loop failed; retrying next interval", what)
            await asyncio.sleep(interval_s)


def decide_payment(projection: MarketProjection, payment: PendingPayment, now: datetime) -> list[Event]:
    """The reactor's call on one confirmed payment, on what the projection knows of its order now: late or
    not by the payment's block time (domain.payment_late), `now` being the marketplace's clock."""
    order = projection.order(payment.order_id)
    info = projection.version_info(order.dataset_id, order.version) if order else None
    cmd = domain.ConfirmPayment(payment.order_id, payment.payment_event_id, payment.amount_units, payment.tx_hash,
                                version_superseded=info is None or info.superseded, paid_at=payment.paid_at)
    return domain.decide(cmd, order, now)


def _payment_reaction_id(event: Event) -> str:
    """Derived from the PaymentConfirmed: one OrderPaid or PaymentRefused per payment, whoever re-sends it."""
    assert isinstance(event, OrderPaid | PaymentRefused)
    return derived_event_id(event.payment_event_id, event.type_name())


def _expiry_id(event: Event) -> str:
    assert isinstance(event, OrderExpired)
    return derived_event_id(event.order_id, event.type_name())


def build_app(settings: MarketplaceSettings | None = None, clock: Callable[[], datetime] = utcnow) -> FastAPI:
    """The service's app; SettingRefused when the chain answers and the market or token address it shows
    researchers (where to pay) is wrong."""
    settings = settings or MarketplaceSettings()
    if settings.market_address and settings.token_address:
        wrong = market_mismatch(settings.chain_url, settings.market_address, settings.token_address)
        if wrong:
            raise SettingRefused(wrong)
    service = MarketplaceService(settings, clock)
    return create_app(service, [build_router(service)], title="datacoop marketplace",
                      description="The catalog of dataset versions; orders paid on chain; signed download "
                                  "grants; differentially private queries with a per-order budget.")


def main() -> None:
    serve("marketplace", MarketplaceSettings(), build_app)


if __name__ == "__main__":
    main()
