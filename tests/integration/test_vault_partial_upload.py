"""An upload whose publish fails part-way, on the real broker: the member gets a 503 that says to retry,
the chunks that landed are projected by the vault's own consumer but never served, and the retry of
the same file is stored whole (not refused as a repeat of the half that landed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from aiokafka.errors import KafkaTimeoutError
from eth_account import Account

from datacoop.bus import Publisher
from datacoop.events import Envelope
from datacoop.events.members import MemberRegistered
from datacoop.topics import MEMBERS, qualified
from infra.local import Broker
from services.consent.eip712 import Domain
from services.vault.client import VaultClient, sample_rows
from services.vault.crypto import new_kek_b64
from services.vault.service import VaultService, build_app
from services.vault.settings import VaultSettings


async def _until(check: Any, what: str, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def _vault(broker: Broker, prefix: str, tmp_path: Path, **options: Any) -> AsyncIterator[
        tuple[VaultService, httpx.AsyncClient, VaultSettings]]:
    """The vault's own app, started in process on the real broker, and a client of it."""
    settings = VaultSettings(bootstrap=broker.bootstrap, topic_prefix=f"{prefix}.", data_dir=tmp_path,
                             vault_kek=new_kek_b64(), vault_service_token="t" * 32, dev_secrets=True, log_json=False,
                             **options)
    app = build_app(settings)
    vault: VaultService = app.state.runtime
    await vault.start()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vault", timeout=60)
    try:
        yield vault, http, settings
    finally:
        await http.aclose()
        await vault.stop()


async def _member(broker: Broker, prefix: str, vault: VaultService, settings: VaultSettings) -> VaultClient:
    """A member registered as the consent service writes it, once the vault has read that; a signer of uploads."""
    account = Account.create()
    async with Publisher(broker.bootstrap) as pub:
        await pub.publish(qualified(f"{prefix}.", MEMBERS), Envelope(
            source="datacoop/consent", type=MemberRegistered.type_name(), subject=account.address, seq=1,
            data=MemberRegistered(member=account.address, registered_at=vault.clock(), nonce=0,
                                  signature="0x" + "11" * 65).model_dump(mode="json")))
    await _until(lambda: vault.projection.get(account.address).registered, "the vault to read the registration")
    return VaultClient(account.key.hex(), "http://vault", domain=Domain(chain_id=settings.chain_id))


async def test_a_half_published_upload_is_never_served_and_its_retry_is_stored_whole(
        broker: Broker, prefix: str, tmp_path: Path) -> None:
    async with _vault(broker, prefix, tmp_path) as (vault, http, settings):
        signer = await _member(broker, prefix, vault, settings)
        member = signer.address
        content = "".join(json.dumps(r) + "\n" for r in sample_rows("health", 20_000))  # ~40 chunk events

        # An upload larger than one record batch may hold (max_request_size) is split over batches and can land
        # in part; ~40 chunks fit one batch of the default 8 MiB, so this publisher's bound is made smaller.
        vault.publisher._max_request_size = 1024 * 1024
        producer = vault.publisher._producer
        assert producer is not None
        real_send = producer.send_batch
        sent = 0

        async def second_batch_fails(batch: Any, topic: str, *, partition: int) -> Any:
            nonlocal sent
            sent += 1
            if sent == 2:
                raise KafkaTimeoutError("the partition's leader did not answer (injected)")
            return await real_send(batch, topic, partition=partition)

        producer.send_batch = second_batch_fails  # type: ignore[method-assign]
        failed = await http.post(f"/members/{member}/records", json=signer.contribute_body("health", content))
        producer.send_batch = real_send  # type: ignore[method-assign]
        assert failed.status_code == 503, failed.text
        assert failed.json()["type"].endswith("/event-log-unavailable") and "retry" in failed.json()["detail"]

        landed = "SELECT count(*) FROM uploads WHERE member = ?"
        await _until(lambda: vault.store.conn.execute(landed, [member]).fetchone()[0] > 0,
                     "the vault's consumer to project the chunks that landed")
        assert vault.projection.summary(member) == []
        assert vault.projection.select(category=None, members=[member], record_ids=None, after="", limit=10) == []
        assert vault.projection.counts()["uploads_incomplete"] == 1

        retry = await http.post(f"/members/{member}/records", json=signer.contribute_body("health", content))
        assert retry.status_code == 201, retry.text
        assert [u["records"] for u in vault.projection.summary(member)] == [20_000]
        page = vault.projection.select(category=None, members=[member], record_ids=None, after="", limit=30_000)
        assert len(page) == 20_000 and {r[3] for r in page} == {retry.json()["upload_id"]}


async def test_an_upload_over_the_row_limit_is_refused_before_its_rows_are_checked(
        broker: Broker, prefix: str, tmp_path: Path) -> None:
    async with _vault(broker, prefix, tmp_path, vault_max_rows=5) as (vault, http, settings):
        signer = await _member(broker, prefix, vault, settings)
        bad_rows = "".join(json.dumps({"nonsense": i}) + "\n" for i in range(6))  # every row would be reported
        refused = await http.post(f"/members/{signer.address}/records",
                                  json=signer.contribute_body("health", bad_rows))
        assert refused.status_code == 422 and "at most 5 per upload" in refused.json()["detail"], refused.text
        fine = "".join(json.dumps(r) + "\n" for r in sample_rows("health", 5))
        stored = await http.post(f"/members/{signer.address}/records", json=signer.contribute_body("health", fine))
        assert stored.status_code == 201 and stored.json()["records"] == 5, stored.text
