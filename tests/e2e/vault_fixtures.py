"""Fixtures for the vault's end-to-end tests: consent and vault as processes on one topic prefix,
and a reader of every topic's raw bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from eth_account import Account

from services.consent.client import MemberWallet
from services.vault.client import VaultClient, VaultReader
from tests.e2e.conftest import ServiceProcess
from tests.e2e.waiting import wait_for

VAULT_KEK = "q2YxXo0eFq3cq0v9kq5l6yQ4l0wz1rB8n7s3u2t1v0w="
SERVICE_TOKEN = "e2e-vault-service-token-0123456789"


@pytest.fixture
def vault_env(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, "DATACOOP_VAULT_KEK": VAULT_KEK, "DATACOOP_VAULT_SERVICE_TOKEN": SERVICE_TOKEN,
            "DATACOOP_VAULT_SHRED_INTERVAL_S": "0.2"}


@pytest.fixture
def consent_svc(launch: Callable[..., ServiceProcess], service_env: dict[str, str]) -> ServiceProcess:
    return launch("consent", service_env)


@pytest.fixture
def vault_svc(launch: Callable[..., ServiceProcess], vault_env: dict[str, str]) -> ServiceProcess:
    return launch("vault", vault_env)


@pytest.fixture
def reader(vault_svc: ServiceProcess) -> VaultReader:
    return VaultReader(vault_svc.url, SERVICE_TOKEN)


def data_dir(env: dict[str, str]) -> Path:
    return Path(env["DATACOOP_DATA_DIR"])


def new_member(consent: ServiceProcess, vault: ServiceProcess) -> tuple[MemberWallet, VaultClient]:
    """A registered member, once the vault has read the registration from the members topic."""
    key = Account.create().key.hex()
    wallet = MemberWallet(key, consent.url)
    wallet.register()
    client = VaultClient(key, vault.url)
    wait_for(lambda: client.summary_response().status_code == 200, "the vault to see the registration")
    return wallet, client


def raw_topic_bytes(bootstrap: str, prefix: str) -> list[bytes]:
    """Key, value and headers of every record in every topic whose name starts with `prefix`."""

    async def read() -> list[bytes]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            topics = sorted(t for t in await consumer.topics() if t.startswith(prefix))
            tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            chunks: list[bytes] = []
            idle = 0
            while idle < 5:
                batch = await consumer.getmany(timeout_ms=300, max_records=5000)
                if not batch:
                    idle += 1
                    continue
                idle = 0
                for recs in batch.values():
                    for r in recs:
                        chunks += [r.key or b"", r.value or b"", *(k.encode() + v for k, v in r.headers or ())]
            return chunks
        finally:
            await consumer.stop()

    return asyncio.run(read())
