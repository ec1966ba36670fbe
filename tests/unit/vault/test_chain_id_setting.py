"""DATACOOP_CHAIN_ID is the EIP-712 domain's chainId, a uint256: a value out of that range would start the consent
service, the vault, the jobs service and the marketplace, and then every signed request would fail (the vault
answered each upload 500, the jobs service each worker registration). Each refuses to start with it instead,
naming the variable; and an upload whose typed data cannot be hashed is a 422 that says why, never a 500."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from eth_account import Account
from fastapi.testclient import TestClient
from pydantic import ValidationError

from datacoop.kit.app import serve
from datacoop.kit.settings import ServiceSettings
from services.consent.settings import ConsentSettings
from services.jobs.settings import JobsSettings
from services.marketplace.settings import MarketplaceSettings
from services.vault.service import build_app as build_vault
from services.vault.settings import VaultSettings
from tests.unit.vault.test_api import _body, _register, _svc

SETTINGS = [ConsentSettings, VaultSettings, JobsSettings, MarketplaceSettings]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("chain_id", [-1, 0, 2**256])
def test_a_chain_id_out_of_uint256_from_1_is_refused(settings: type[ServiceSettings], chain_id: int) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(chain_id=chain_id, dev_secrets=True)
    assert [e["loc"] for e in refused.value.errors()] == [("chain_id",)]


@pytest.mark.parametrize("settings", SETTINGS)
def test_the_default_and_the_ends_of_the_range_are_taken(settings: type[ServiceSettings]) -> None:
    assert settings(dev_secrets=True).chain_id == 31337  # type: ignore[attr-defined]
    for chain_id in (1, 2**256 - 1):
        assert settings(chain_id=chain_id, dev_secrets=True).chain_id == chain_id  # type: ignore[call-arg]


@pytest.mark.parametrize(("name", "settings"), [("consent", ConsentSettings), ("vault", VaultSettings)])
def test_a_service_started_with_a_negative_chain_id_says_which_variable_is_wrong(
        name: str, settings: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATACOOP_CHAIN_ID", "-1")

    def never_built(_: object) -> None:
        raise AssertionError("the app was built from settings that should have been refused")

    with pytest.raises(SystemExit) as exited:
        serve(name, settings, never_built)  # type: ignore[arg-type]
    said = capsys.readouterr().err
    assert exited.value.code == 2, said
    assert f"datacoop {name}: cannot start" in said and "DATACOOP_CHAIN_ID" in said, said


def test_an_upload_whose_typed_data_cannot_be_hashed_is_a_422_not_a_500(tmp_path: Path) -> None:
    valid = VaultSettings(bootstrap="127.0.0.1:1", topic_prefix="t.", data_dir=tmp_path,
                          vault_kek=base64.b64encode(b"k" * 32).decode(), vault_service_token="t" * 32,
                          dev_secrets=True, log_json=False)
    app = build_vault(valid.model_copy(update={"chain_id": -1}))  # what validation now keeps from a start
    try:
        _svc(app)._warmed = True
        member = Account.create()
        _register(app, member)
        answer = TestClient(app, raise_server_exceptions=False).post(f"/members/{member.address}/records",
                                                                      json=_body(member, member.address))
        assert answer.status_code == 422, answer.text
        assert answer.json()["type"].endswith("/invalid-request")
        assert "cannot hash ContributeRecords" in answer.json()["detail"], answer.text
        assert "uint256 out of range: -1" in answer.json()["detail"], answer.text
    finally:
        _svc(app).keys.close()
        _svc(app).store.close()


def test_the_jobs_service_refuses_typed_data_it_cannot_hash_with_a_422() -> None:
    from types import SimpleNamespace

    from datacoop.kit.problems import DomainError
    from services.consent import eip712
    from services.jobs.service import JobsService

    jobs = SimpleNamespace(domain_sep=eip712.Domain(chain_id=-1))  # what a settings check now keeps out
    with pytest.raises(DomainError) as refused:
        JobsService.recover(jobs, "RegisterWorker",  # type: ignore[arg-type]
                            {"provider": "0x" + "11" * 20, "workerId": "w", "issuedAt": 1}, "0x" + "ab" * 65)
    assert refused.value.status == 422 and "cannot hash RegisterWorker" in refused.value.detail
