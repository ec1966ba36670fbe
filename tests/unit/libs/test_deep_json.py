"""A deeply nested JSON body is a 4xx, not a dead process: the services import eth_account, whose py_ecc
raises the interpreter's recursion limit to 100,000, at which the JSON parser overflows the C stack."""

from __future__ import annotations

import sys
from pathlib import Path

from fastapi.testclient import TestClient

from datacoop.kit.app import RECURSION_LIMIT
from services.consent.service import build_app
from services.consent.settings import ConsentSettings


def test_a_deeply_nested_body_is_refused_and_the_service_lives_on(tmp_path: Path) -> None:
    sys.setrecursionlimit(100_000)  # as importing eth_account leaves it (py_ecc), whatever ran before
    app = build_app(ConsentSettings(bootstrap="127.0.0.1:1", topic_prefix="t.", data_dir=tmp_path,
                                    dev_secrets=True, log_json=False))
    try:
        assert sys.getrecursionlimit() == RECURSION_LIMIT
        client = TestClient(app)
        deep = client.post("/members", content=b"[" * 200_000 + b"]" * 200_000,
                           headers={"content-type": "application/json"})
        assert 400 <= deep.status_code < 500, deep.text
        assert client.get("/healthz").status_code == 200
    finally:
        app.state.runtime.store.close()
