"""Bootstrap of the consent service: settings, store, bus, the expiry sweeper, the app; `main()`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import FastAPI

from datacoop.events.envelope import derived_event_id
from datacoop.events.members import ConsentExpired
from datacoop.events.registry import Event
from datacoop.keys import load_or_create_key
from datacoop.kit import ServiceRuntime, create_app, serve
from datacoop.topics import MEMBERS
from services.consent import domain
from services.consent.api import build_router
from services.consent.catalog import load_catalog
from services.consent.eip712 import Domain
from services.consent.projection import SCHEMA_SQL, MembersProjection
from services.consent.settings import ConsentSettings

log = logging.getLogger("datacoop.consent")


def utcnow() -> datetime:
    return datetime.now(UTC)


class ConsentService(ServiceRuntime[MembersProjection]):
    def __init__(self, settings: ConsentSettings, clock: Callable[[], datetime] = utcnow) -> None:
        super().__init__("consent", settings, MembersProjection, writes=MEMBERS,
                         schema_sql=SCHEMA_SQL)
        self.clock = clock
        self.catalog = load_catalog()
        self.receipt_key = load_or_create_key(settings.receipt_key_file
                                              or settings.data_dir / "consent-receipt-key.pem")
        self.sweep_interval_s = settings.sweep_interval_s
        self.add_background(self.sweep_forever)

    async def sweep_once(self) -> int:
        """Emit ConsentExpired for every active consent whose expiry has passed; returns how many."""
        if not self.ready or self.writer is None:
            return 0
        now = self.clock()
        expired = 0
        for member in self.projection.due_for_expiry(now):
            def decide(member: str = member) -> list[Event]:
                return domain.decide(domain.ExpireDue(member, now), self.projection.get(member), self.catalog, now)

            expired += len(await self.writer.execute(member, decide, id_for=_expiry_id))
        return expired

    async def sweep_forever(self) -> None:
        while True:
            try:
                count = await self.sweep_once()
                if count:
                    log.info("expired %d consent(s)", count)
            except Exception:
                log.exception("expiry sweep failed; retrying next interval")
            await asyncio.sleep(self.sweep_interval_s)


def _expiry_id(event: Event) -> str:
    """One expiry per consent, whatever sweep emits it: a re-sent expiry is a duplicate."""
    assert isinstance(event, ConsentExpired)
    return derived_event_id(f"{event.member}:{event.consent_id}", event.type_name())


def build_app(settings: ConsentSettings | None = None, clock: Callable[[], datetime] = utcnow) -> FastAPI:
    settings = settings or ConsentSettings()
    service = ConsentService(settings, clock)
    domain_sep = Domain(chain_id=settings.chain_id, verifying_contract=settings.market_address)
    return create_app(service, [build_router(service, service.catalog, domain_sep, clock)], title="datacoop consent",
                      description="Members, their signed consents per purpose, receipts and erasure requests.")


def main() -> None:
    serve("consent", ConsentSettings, build_app)


if __name__ == "__main__":
    main()
