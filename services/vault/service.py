"""Bootstrap of the vault: settings, KEK, key store, store, bus, the shredder, the app; `main()`.

The vault reads the members topic (registrations, erasure requests) and writes the records topic.
Erasure is a reaction: the shredder finds members erased but not yet shredded, destroys the data key
first, then appends KeysShredded with an id derived from the erasure request, so a re-run after a
crash (key already gone, event maybe sent) is a duplicate every consumer drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI

from datacoop.bus.consumer import Delivery
from datacoop.events.envelope import derived_event_id, new_event_id
from datacoop.events.members import ErasureRequested
from datacoop.events.records import KeysShredded, SealedRecord
from datacoop.events.registry import Event
from datacoop.keys import write_secret
from datacoop.kit import ServiceRuntime, create_app, serve
from datacoop.kit.logs import correlation_id
from datacoop.kit.problems import DomainError
from datacoop.kit.settings import SettingRefused, dev_default_warned
from datacoop.topics import MEMBERS, RECORDS, qualified
from services.consent.eip712 import Domain
from services.vault import domain
from services.vault.api import CatchingUp, build_router, catching_up_handler
from services.vault.categories import UploadRefused, check_rows, load_schemas, pad_to, parse_upload, sealed_length
from services.vault.crypto import Kek, RecordUnreadable, new_kek_b64, open_one, parse_kek, seal_many
from services.vault.keystore import KekMismatch, KeyShredded, KeyStore
from services.vault.projection import SCHEMA_SQL, VaultProjection
from services.vault.settings import DEV_SERVICE_TOKEN, VaultSettings

log = logging.getLogger("datacoop.vault")


def utcnow() -> datetime:
    return datetime.now(UTC)


def load_kek(settings: VaultSettings) -> Kek:
    if settings.vault_kek:
        try:
            return Kek(parse_kek(settings.vault_kek))
        except ValueError as exc:
            raise SettingRefused(f"DATACOOP_VAULT_KEK: {exc}") from exc
    path = settings.data_dir / "vault-kek"
    if not settings.dev_secrets:
        raise SettingRefused("DATACOOP_VAULT_KEK is unset: set it to the base64 of 32 random bytes from a secret "
                              "store, kept apart from the data directory (`python -c 'import base64, os; "
                              "print(base64.b64encode(os.urandom(32)).decode())'`), or set DATACOOP_DEV_SECRETS=true "
                              f"on a local development stack to have one generated into {path}")
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            write_secret(path, (new_kek_b64() + "\n").encode())
        log.warning("DATACOOP_VAULT_KEK is unset: generated a key-encryption key into %s (local development "
                    "only; set DATACOOP_VAULT_KEK in production and keep it out of the data directory)", path)
    else:
        log.warning("DATACOOP_VAULT_KEK is unset: using the development key-encryption key in %s", path)
    return Kek(parse_kek(path.read_text().strip()))


REGISTRATION_WAIT_S = 3.0
"""How long a request about a member the vault has no registration of waits for its reader of the members
topic to pass the log's end as it was when asked, before answering 503 (retry) rather than 404."""


def _shred_id(event: Event) -> str:
    assert isinstance(event, KeysShredded)
    return derived_event_id(event.cause_event_id, event.type_name())


class VaultService(ServiceRuntime[VaultProjection]):
    def __init__(self, settings: VaultSettings, clock: Callable[[], datetime] = utcnow) -> None:
        super().__init__("vault", settings, lambda store: VaultProjection(store.conn), reads=[MEMBERS],
                         writes=RECORDS, schema_sql=SCHEMA_SQL)
        self.clock = clock
        self.schemas = load_schemas()
        self.kek = load_kek(settings)
        try:
            self.keys = KeyStore(settings.vault_keys_file or settings.data_dir / "vault-keys.duckdb", self.kek)
        except KekMismatch as exc:
            self.store.close()
            raise SettingRefused(f"DATACOOP_VAULT_KEK: {exc}") from exc
        self.service_token = dev_default_warned(settings.vault_service_token, DEV_SERVICE_TOKEN,
                                                "DATACOOP_VAULT_SERVICE_TOKEN", dev_secrets=settings.dev_secrets)
        self.freshness = timedelta(seconds=settings.vault_freshness_s)
        self.max_rows = settings.vault_max_rows
        self.shred_interval_s = settings.vault_shred_interval_s
        self.registration_wait_s = REGISTRATION_WAIT_S
        self._wake = asyncio.Event()
        self._restored_checked = False  # keys of shredded members looked for since start
        self._deleted_uncompacted = False  # a key deleted and the store not compacted since
        self.runner.add_listener(self._on_applied)
        self.add_background(self.shred_forever)

    def _on_applied(self, deliveries: list[Delivery]) -> None:
        if any(isinstance(d.event, ErasureRequested) for d in deliveries):
            self._wake.set()

    async def stop(self) -> None:
        await super().stop()
        self.keys.close()

    # -- contributing ----------------------------------------------------------------------------
    async def contribute(self, *, member: str, signer: str, category: str, fmt: str, content: str, issued_at: int,
                         content_hash: bytes) -> dict[str, Any]:
        """Check, seal and append an upload; answers once the events are acked and projected."""
        schema = self.schemas.get(category)
        if schema is None:
            raise UploadRefused(f"unknown category {category!r}; categories: {', '.join(sorted(self.schemas))}")
        now = self.clock()
        tag = self.keys.upload_tag(member, content_hash)
        probe = domain.ContributeRecords(member, signer, category, datetime.fromtimestamp(issued_at, UTC),
                                         new_event_id(), tag, schema.version, ())
        # Refuse before any work or key creation; `decide` checks again under the member's lock.
        seen = self.projection.tag_seen(member, tag) is not None
        try:
            domain.authorize(probe, self.projection.get(member), now=now, freshness=self.freshness, tag_seen=seen)
        except domain.VaultRefused as refused:
            if refused.kind != "not_found":
                raise
            domain.authorize(probe, await self.settled_member(member), now=now, freshness=self.freshness,
                             tag_seen=seen)
        parsed = parse_upload(content, fmt)  # type: ignore[arg-type]
        if len(parsed) > self.max_rows:  # counted before the rows are checked: no work on a refused upload
            raise UploadRefused(f"upload has {len(parsed)} rows, at most {self.max_rows} per upload; split the file")
        rows = check_rows(schema, parsed)
        # compact UTF-8 JSON (the checked rows hold only str without lone surrogates, int, finite float, bool and
        # None): orjson, a tenth of the standard encoder's time a row (~0.5 against ~6 µs), the same text once
        # parsed; padded with spaces to the category's one sealed length, so no ciphertext's size tells what its
        # row holds. Serialized before the member's data key is made: a row that could not be leaves no key.
        width = sealed_length(schema)
        plain = [(f"{probe.upload_id}-{i:06d}", pad_to(orjson.dumps(row), width)) for i, row in enumerate(rows)]
        try:
            key = self.keys.get_or_create(member)
        except KeyShredded as exc:
            raise domain.VaultRefused("gone", str(exc)) from exc
        sealed = seal_many(key, member, plain)
        records = tuple(SealedRecord(record_id=r, nonce=n, ciphertext=c) for r, n, c in sealed)
        cmd = domain.ContributeRecords(member, signer, category, probe.issued_at, probe.upload_id, tag,
                                       schema.version, records)

        def decide() -> list[Event]:
            return domain.decide(cmd, self.projection.get(member), now=now, freshness=self.freshness,
                                 tag_seen=self.projection.tag_seen(member, tag) is not None)

        assert self.writer is not None
        deliveries = await self.writer.execute(member, decide, correlation_id=correlation_id.get())
        return {"member": member, "category": category, "upload_id": cmd.upload_id,
                "schema_version": schema.version, "records": len(records), "events": len(deliveries),
                "first_record_id": records[0]["record_id"], "last_record_id": records[-1]["record_id"]}

    # -- members the vault has not met ----------------------------------------------------------
    async def settled_member(self, member: str) -> domain.VaultMember:
        """The member's state, once the vault can tell a member it has not met from one whose registration it
        has not read yet. The consent service answers a registration once it is in the log; the vault reads it
        from there a moment later. So for a member not registered here, wait (at most `registration_wait_s`)
        until the reader has passed the members topic's end as a fetch sent after this call saw it: then
        not registered is the truth (404). Still behind by then, or not caught up since the start: CatchingUp
        (503 `not-ready`, Retry-After)."""
        state = self.projection.get(member)
        if state.registered or state.erased or state.shredded:
            return state
        if not self.ready:  # after a start, the registration may be in the part of the log not read yet
            raise CatchingUp(f"the vault is still catching up with the event log and has not read member "
                             f"{member}'s registration yet, if there is one; retry in a few seconds")
        asked_ms = int(time.time() * 1000)
        deadline = time.monotonic() + self.registration_wait_s
        first_fetch: dict[int, int] = {}  # partition -> time of the first fetch answered after asked_ms
        while True:
            if self._members_log_passed(asked_ms, first_fetch):
                return self.projection.get(member)  # positions move after the commit: what they passed is here
            if time.monotonic() >= deadline:
                raise CatchingUp(f"the vault has not (yet) seen a registration of member {member}: it is still "
                                 "reading the members log the consent service writes registrations to. If you "
                                 "registered moments ago, retry in a few seconds")
            await asyncio.sleep(0.02)
            state = self.projection.get(member)
            if state.registered or state.erased or state.shredded:
                return state

    def _members_log_passed(self, asked_ms: int, first_fetch: dict[int, int]) -> bool:
        """Whether the reader has applied the members topic up to the end a fetch sent after `asked_ms` saw
        (`ConsumerRunner.read_past`). True when there is no reader to ask (an app built but not started)."""
        if self.runner._consumer is None:
            return True
        return self.runner.read_past(qualified(self.settings.topic_prefix, MEMBERS), asked_ms, first_fetch)

    # -- reading ---------------------------------------------------------------------------------
    def _readable_key(self, member: str) -> bytes | None:
        if not self.projection.get(member).readable:
            return None
        try:
            return self.keys.get(member)
        except KeyShredded:
            return None

    def decrypt(self, *, category: str | None, members: list[str] | None, record_ids: list[str] | None,
                after: str, limit: int) -> dict[str, Any]:
        """Plaintext rows; see the route's docstring for what happens to erased members."""
        if members is not None:
            gone = sorted(m for m, s in self.projection.members(members).items()
                          if not s.readable or self.keys.is_shredded(m))
            if gone:
                raise DomainError(f"member(s) {', '.join(gone)} asked to be forgotten; their keys are shredded "
                                  "and their records can never be read", status=410, slug="erased",
                                  refused_members=gone)
        rows = self.projection.select(category=category, members=members, record_ids=record_ids, after=after,
                                      limit=limit)
        aeads: dict[str, AESGCM | None] = {}
        refused: set[str] = set()
        out = []
        for record_id, member, cat, upload_id, version, nonce, ciphertext in rows:
            if member not in aeads:
                key = self._readable_key(member)
                aeads[member] = AESGCM(key) if key is not None else None
            aead = aeads[member]
            if aead is None:
                refused.add(member)
                continue
            try:
                fields = json.loads(open_one(aead, member, record_id, nonce, ciphertext))
            except RecordUnreadable:
                log.error("record %s of %s does not open; skipped", record_id, member)
                continue
            out.append({"record_id": record_id, "member": member, "category": cat, "upload_id": upload_id,
                        "schema_version": version, "fields": fields})
        return {"records": out, "refused_members": sorted(refused),
                "next_after": rows[-1][0] if len(rows) == limit else None}

    # -- erasure ---------------------------------------------------------------------------------
    async def shred_once(self) -> int:
        """Shred the keys of every erased member not yet shredded; returns how many. Then compact the key
        store, so that no shredded key survives in its file."""
        if not self.ready or self.writer is None:
            return 0
        done = 0
        try:
            done = await self._shred_erased()
        finally:
            # also when the pass failed after deleting a key (its KeysShredded not appended: the broker is
            # away): the deleted key must not wait in the file's free blocks for the next pass that succeeds
            if done or self._deleted_uncompacted or self._restored_checked is False:
                self._shred_restored()
                self.keys.compact()
                self._restored_checked = True
                self._deleted_uncompacted = False
        return done

    def _shred_restored(self) -> None:
        """Shred again the keys of members already shredded (a key store restored from a backup brings
        them back): once the projection has caught up, before the first compaction."""
        revived = self.keys.holding(self.projection.shredded_members())
        for member in revived:
            self.keys.shred(member, self.clock())
        if revived:
            log.warning("shredded again %d data key(s) of members erased earlier (a key store restored from a "
                        "backup?)", len(revived))

    async def _shred_erased(self) -> int:
        assert self.writer is not None
        done = 0
        for member in self.projection.erased_unshredded():
            now = self.clock()
            self.keys.shred(member, now)  # first the key, then the fact: a crash between re-runs both
            self._deleted_uncompacted = True

            def decide(member: str = member, now: datetime = now) -> list[Event]:
                return domain.decide(domain.ShredKeys(member), self.projection.get(member), now=now)

            state = self.projection.get(member)
            await self.writer.execute(member, decide, id_for=_shred_id, causation_id=state.erasure_event_id)
            log.info("shredded the data key of %s (erasure %s)", member, state.erasure_event_id)
            done += 1
        return done

    async def shred_forever(self) -> None:
        while True:
            try:
                await self.shred_once()
            except Exception:
                log.exception("shredding failed; retrying next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.shred_interval_s)
            self._wake.clear()


def build_app(settings: VaultSettings | None = None, clock: Callable[[], datetime] = utcnow) -> FastAPI:
    settings = settings or VaultSettings()
    service = VaultService(settings, clock)
    domain_sep = Domain(chain_id=settings.chain_id, verifying_contract=settings.market_address)
    app = create_app(service, [build_router(service, domain_sep)], title="datacoop vault",
                     description="Members' records, encrypted per member; internal decrypt; crypto-shredding.")
    app.add_exception_handler(CatchingUp, catching_up_handler)  # its Retry-After header
    return app


def main() -> None:
    serve("vault", VaultSettings, build_app)


if __name__ == "__main__":
    main()
