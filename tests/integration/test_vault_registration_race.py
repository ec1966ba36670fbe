"""A member who contributes the moment the consent service has answered their registration, on the real broker:
the vault has not read the registration yet, so it waits for its reader to pass the members topic's end before
it answers; a wallet never registered is still told 404 (not 503) once the reader has passed it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from eth_account import Account

from datacoop.bus import Publisher
from datacoop.events import Envelope
from datacoop.events.members import MemberRegistered
from datacoop.topics import MEMBERS, qualified
from infra.local import Broker
from services.consent import eip712
from services.vault.client import VaultClient, sample_rows
from services.vault.crypto import new_kek_b64
from services.vault.service import VaultService, build_app
from services.vault.settings import VaultSettings


async def test_an_upload_right_after_registering_is_stored_and_a_stranger_is_not_registered(
        broker: Broker, prefix: str, tmp_path: Path) -> None:
    settings = VaultSettings(bootstrap=broker.bootstrap, topic_prefix=f"{prefix}.", data_dir=tmp_path,
                             vault_kek=new_kek_b64(), vault_service_token="t" * 32, dev_secrets=True, log_json=False)
    app = build_app(settings)
    vault: VaultService = app.state.runtime
    await vault.start()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vault", timeout=60)
    try:
        for _ in range(400):
            if vault.ready:
                break
            await asyncio.sleep(0.05)
        assert vault.ready
        domain = eip712.Domain(chain_id=settings.chain_id)
        account, stranger = Account.create(), Account.create()
        signer = VaultClient(account.key.hex(), "http://vault", domain=domain)
        body = signer.contribute_body("fitness", "".join(json.dumps(r) + "\n" for r in sample_rows("fitness", 3)))
        async with Publisher(broker.bootstrap) as pub:  # what the consent service appends before it answers
            await pub.publish(qualified(f"{prefix}.", MEMBERS), Envelope(
                source="datacoop/consent", type=MemberRegistered.type_name(), subject=account.address, seq=1,
                data=MemberRegistered(member=account.address, registered_at=vault.clock(), nonce=0,
                                      signature="0x" + "11" * 65).model_dump(mode="json")))
        assert not vault.projection.get(account.address).registered  # not read yet: the race the member meets
        stored = await http.post(f"/members/{account.address}/records", json=body)
        assert stored.status_code == 201 and stored.json()["records"] == 3, stored.text

        started = time.monotonic()
        unknown = await http.get(f"/members/{stranger.address}/records",
                                 headers=eip712.read_auth(stranger, domain))
        assert unknown.status_code == 404, unknown.text
        assert time.monotonic() - started < vault.registration_wait_s
    finally:
        await http.aclose()
        await vault.stop()
