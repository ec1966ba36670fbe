"""`datacoop contribute` as a member meets it: moments after registering (the vault has not read it yet), and
with another service's URL given as the vault's. No service runs: the client and the answers are stand-ins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from typer.testing import CliRunner

from datacoop.cli import app
from datacoop.cli import stack as stack_mod
from datacoop.http import ApiError

NOT_READY = {"type": "https://datacoop.example/problems/not-ready", "status": 503, "retry_after_s": 2,
             "detail": "the vault has not (yet) seen a registration of member 0xabc: …; retry in a few seconds"}
DONE = {"records": 1, "category": "fitness", "upload_id": "u-1", "schema_version": 1}


class _Vault:
    def __init__(self, key: str, url: str) -> None:
        self.address = Account.from_key(key).address

    def contribute_body(self, category: str, content: str, fmt: str) -> dict[str, Any]:
        return {}


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(stack_mod, "STACK_FILE", tmp_path / "stack.json")  # no running stack
    monkeypatch.delenv("DATACOOP_VAULT_URL", raising=False)
    monkeypatch.setattr("services.vault.client.VaultClient", _Vault)
    monkeypatch.setattr("datacoop.cli.vault.time.sleep", lambda s: None)
    key = tmp_path / "me.key"
    key.write_text(Account.create().key.hex() + "\n")
    file = tmp_path / "steps.jsonl"
    file.write_text('{"day": "2026-01-01", "steps": 5}\n')
    return [str(file), "--category", "fitness", "--key-file", str(key)]


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_an_upload_moments_after_registering_is_retried_until_the_vault_has_read_it(
        records: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Any] = [ApiError(503, NOT_READY), ApiError(503, NOT_READY), DONE]

    def upload(client: object, body: bytes) -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    monkeypatch.setattr("datacoop.cli.vault._upload", upload)
    result = _invoke("contribute", *records, "--vault-url", "http://127.0.0.1:9")
    assert result.exit_code == 0, result.output
    assert "retrying for up to 10 s" in result.output and "contributed 1 record(s) of fitness" in result.output


def test_retrying_gives_up_after_a_few_seconds_with_the_vaults_words(records: list[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 1000, 3))
    monkeypatch.setattr("datacoop.cli.vault.time.monotonic", lambda: float(next(clock)))

    def upload(client: object, body: bytes) -> dict[str, Any]:
        raise ApiError(503, NOT_READY)

    monkeypatch.setattr("datacoop.cli.vault._upload", upload)
    result = _invoke("contribute", *records, "--vault-url", "http://127.0.0.1:9")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the vault has not (yet) seen a registration" in errors[0], result.output
    assert "(HTTP 503)" in errors[0], result.output
    assert "Traceback" not in result.output


class _Answer:
    def __init__(self, doc: Any) -> None:
        self.doc = doc

    def json(self) -> Any:
        if isinstance(self.doc, Exception):
            raise self.doc
        return self.doc


@pytest.mark.parametrize(("healthz", "said"), [
    ({"status": "ok", "service": "consent"}, "it answers as the consent service"),
    (ValueError("not JSON"), "no datacoop service answers GET /healthz there"),
])
def test_another_services_url_is_named_as_not_the_vault(records: list[str], monkeypatch: pytest.MonkeyPatch,
                                                        healthz: Any, said: str) -> None:
    def upload(client: object, body: bytes) -> dict[str, Any]:
        raise ApiError(404, {"type": "https://datacoop.example/problems/not-found", "detail": "Not Found"})

    asked: list[str] = []

    def get(url: str, **kw: Any) -> _Answer:
        asked.append(url)
        return _Answer(healthz)

    monkeypatch.setattr("datacoop.cli.vault._upload", upload)
    monkeypatch.setattr(httpx, "get", get)
    result = _invoke("contribute", *records, "--vault-url", "http://127.0.0.1:8101")
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert f"http://127.0.0.1:8101 is not the vault ({said}); the vault's URL is http://127.0.0.1:8102" in line, line
    assert "404: Not Found" not in line and asked == ["http://127.0.0.1:8101/healthz"]


def test_the_vaults_own_404_is_passed_on(records: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def upload(client: object, body: bytes) -> dict[str, Any]:
        raise ApiError(404, {"type": "https://datacoop.example/problems/not-registered",
                             "detail": "member 0xabc is not registered with the vault: …"})

    monkeypatch.setattr("datacoop.cli.vault._upload", upload)
    monkeypatch.setattr(httpx, "get", lambda url, **kw: _Answer({"status": "ok", "service": "vault"}))
    result = _invoke("contribute", *records, "--vault-url", "http://127.0.0.1:8102")
    assert result.exit_code == 1 and "member 0xabc is not registered with the vault: … (HTTP 404)" in result.output


@pytest.mark.parametrize(("consents", "noted"), [
    ([], True),
    ([{"consent_id": "c1", "state": "revoked", "categories": ["fitness"]}], True),
    ([{"consent_id": "c2", "state": "active", "categories": ["health"]}], True),
    ([{"consent_id": "c3", "state": "active", "categories": ["health", "fitness"]}], False),
])
def test_an_upload_no_active_consent_covers_is_stored_with_a_note_saying_so(
        records: list[str], monkeypatch: pytest.MonkeyPatch, consents: list[dict[str, Any]], noted: bool) -> None:
    class _Member:
        def __init__(self, key: str, url: str, http: object = None) -> None:
            assert url == "http://consent.test"

        def consents(self) -> list[dict[str, Any]]:
            return consents

    monkeypatch.setattr("datacoop.cli.vault._upload", lambda client, body: dict(DONE))
    monkeypatch.setattr("services.consent.client.MemberWallet", _Member)
    monkeypatch.setenv("DATACOOP_CONSENT_URL", "http://consent.test")
    result = _invoke("contribute", *records, "--vault-url", "http://127.0.0.1:9")
    assert result.exit_code == 0 and "contributed 1 record(s) of fitness" in result.output, result.output
    said = "none of your active consents covers fitness" in result.output
    assert said == noted, result.output
    if noted:
        key_file = records[records.index("--key-file") + 1]
        assert f"`datacoop consent grant --purpose P --categories fitness --key-file {key_file}`" in \
            " ".join(result.output.split()), "the command to run, whole: with the key the upload was signed with"


def test_no_note_when_the_consent_service_is_unknown_or_silent(records: list[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("datacoop.cli.vault._upload", lambda client, body: dict(DONE))
    monkeypatch.delenv("DATACOOP_CONSENT_URL", raising=False)
    assert "note" not in _invoke("contribute", *records, "--vault-url", "http://127.0.0.1:9").output
    monkeypatch.setenv("DATACOOP_CONSENT_URL", "http://127.0.0.1:9")  # nothing listens
    result = _invoke("contribute", *records, "--vault-url", "http://127.0.0.1:9")
    assert result.exit_code == 0 and "note" not in result.output, result.output
    monkeypatch.setenv("DATACOOP_CONSENT_URL", "http://[::1")  # not a URL: the upload is done all the same
    result = _invoke("contribute", *records, "--vault-url", "http://127.0.0.1:9")
    assert result.exit_code == 0 and "note" not in result.output and "Traceback" not in result.output, result.output
