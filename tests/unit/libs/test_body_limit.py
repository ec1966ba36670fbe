"""Every service refuses a request body over DATACOOP_MAX_BODY_BYTES with 413 before reading it whole,
whether its Content-Length says so or it comes in chunks without one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.consent.service import build_app
from services.consent.settings import ConsentSettings
from services.vault.settings import VaultSettings

TOO_LARGE = "https://datacoop.example/problems/too-large"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    built = build_app(ConsentSettings(bootstrap="127.0.0.1:1", topic_prefix="t.", data_dir=tmp_path, dev_secrets=True,
                                      log_json=False, max_body_bytes=4096))
    yield built
    built.state.runtime.store.close()


def test_a_body_declared_too_large_is_refused_before_it_is_read(app: FastAPI) -> None:
    answer = TestClient(app).post("/members", content=b"{" + b" " * 10_000 + b"}",
                                  headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["type"] == TOO_LARGE
    assert "4,096 bytes" in answer.json()["detail"] and "DATACOOP_MAX_BODY_BYTES" in answer.json()["detail"]


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(app: FastAPI) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"member": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    answer = TestClient(app).post("/members", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["type"] == TOO_LARGE, answer.text


def test_a_body_within_the_limit_reaches_the_route(app: FastAPI) -> None:
    answer = TestClient(app).post("/members", json={"member": "0x" + "ab" * 20})
    assert answer.status_code == 422, answer.text  # no signature: the route's own validation answers


def test_the_vault_takes_uploads_of_its_row_limit_by_default() -> None:
    settings = VaultSettings(dev_secrets=True)
    assert settings.max_body_bytes >= 64 * 1024 * 1024 > ConsentSettings().max_body_bytes
