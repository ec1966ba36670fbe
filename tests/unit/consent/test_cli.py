"""The member CLI's consent commands: bad input refused locally with one line naming the flag (nothing signed,
no service asked), path segments encoded, and a grant whose answer was lost retried under its own id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from typer.testing import CliRunner

from datacoop.cli import app
from services.consent import eip712
from services.consent.client import MemberWallet
from tests.unit.consent.harness import DOMAIN, Harness, api

__all__ = ["api"]  # the fixture

WIDE = {"COLUMNS": "400"}
NOBODY = "http://127.0.0.1:9"  # nothing listens: a test that reaches it fails on "cannot reach"


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "me.key"
    path.write_text(Account.create().key.hex() + "\n")
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=WIDE)
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(("expires", "words"), [
    ("9999-12-31T23:59:59-01:00", "--expires 9999-12-31T23:59:59-01:00 is after the latest expiry allowed, "
                                  "9999-12-31T23:59:59Z"),
    ("1960-01-01", "--expires 1960-01-01 is in the past; choose a later time, or leave --expires out"),
    ("2020-01-01", "--expires 2020-01-01 is in the past"),
    ("2027-02-30", "--expires '2027-02-30' is not a date: day is out of range for month"),
    ("someday", "--expires 'someday' is not an ISO date/time; use e.g. 2027-06-30"),
])
def test_an_expiry_out_of_range_is_refused_before_signing(key: Path, expires: str, words: str) -> None:
    code, output = _run("consent", "grant", "--purpose", "health-research", "--categories", "health", "--expires",
                        expires, "--key-file", str(key), "--consent-url", NOBODY)
    assert code == 2 and words in output, output
    assert "UnsignedIntegerEncoder" not in output and "cannot reach" not in output


def test_duplicate_categories_are_refused_naming_the_duplicate(key: Path) -> None:
    code, output = _run("consent", "grant", "--purpose", "health-research", "--categories", "health,fitness,health",
                        "--key-file", str(key), "--consent-url", NOBODY)
    assert code == 2 and "--categories names health more than once" in output, output
    assert "--categories health,fitness" in output


@pytest.mark.parametrize("raw", ["0" * 64, "f" * 64, "0x" + "F" * 64])
def test_a_key_outside_secp256k1s_range_is_named_with_its_file(tmp_path: Path, raw: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(raw + "\n")
    code, output = _run("member", "show", "--key-file", str(path), "--consent-url", NOBODY)
    assert code == 1, output
    assert f"key file {path} does not hold a valid secp256k1 private key (it must be between 1 and n-1" in output
    assert "32 bytes long, instead of 32 bytes" not in output


@pytest.mark.parametrize("command", [["consent", "revoke", "é/x"],
                                     ["consent", "receipt", "é/x", "--out", "r.json"],
                                     ["consent", "grant", "--purpose", "health-research", "--categories", "health",
                                      "--consent-id", "é/x"]])
def test_a_consent_id_that_cannot_exist_is_named(key: Path, command: list[str]) -> None:
    code, output = _run(*command, "--key-file", str(key), "--consent-url", NOBODY)
    assert code == 1 and "'é/x' is not a consent id: one is 1 to 64 of the characters" in output, output
    assert "404" not in output and "cannot reach" not in output


def test_the_client_encodes_a_consent_id_as_one_path_segment() -> None:
    seen: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path)
        body = {"next_nonce": 1} if request.method == "GET" and request.url.path.count("/") == 2 else {}
        return httpx.Response(200, json=body)

    wallet = MemberWallet(Account.create().key.hex(), "http://consent", domain=DOMAIN,
                          http=httpx.Client(base_url="http://consent", transport=httpx.MockTransport(answer)))
    wallet.revoke("é/x")
    wallet.receipt("a b?c")
    assert seen[1].endswith(b"/consents/%C3%A9%2Fx/revoke"), seen
    assert seen[2].endswith(b"/consents/a%20b%3Fc/receipt"), seen


def _registered(api: Harness, key: Path, monkeypatch: pytest.MonkeyPatch) -> LocalAccount:
    """The CLI's member wallet talking to the in-process consent API, registered; the clock set to now (the
    CLI checks an expiry with the real time)."""
    monkeypatch.setattr("services.consent.client.MemberWallet",
                        lambda private_key, url: MemberWallet(private_key, url, http=api.http))
    assert _run("member", "register", "--key-file", str(key), "--consent-url", NOBODY)[0] == 0
    api.clock.now = datetime.now(UTC)
    return Account.from_key(key.read_text().strip())


def test_a_grant_whose_answer_was_lost_says_to_check_and_retries_under_its_id(
        api: Harness, key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    member = _registered(api, key, monkeypatch)
    expires = (api.clock.now + timedelta(days=90)).replace(tzinfo=None, microsecond=0).isoformat()
    grant = ["consent", "grant", "--purpose", "health-research", "--categories", "health", "--expires", expires,
             "--key-file", str(key), "--consent-url", NOBODY]
    api.writer.lose_ack = True
    code, output = _run(*grant, "--consent-id", "c-retry")
    assert code == 1, output
    assert ("could not confirm that consent c-retry was recorded" in output
            and f"check `datacoop consent list --key-file {key}` before granting again" in output
            and "add --consent-id c-retry" in output), output
    code, output = _run(*grant, "--consent-id", "c-retry")
    assert code == 0 and "consent c-retry was already recorded" in output, output
    consents = api.http.get(f"/members/{member.address}/consents", headers=eip712.read_auth(member, DOMAIN)).json()
    assert [c["consent_id"] for c in consents] == ["c-retry"], "recorded once"
    code, output = _run(*[a if a != "health" else "fitness" for a in grant], "--consent-id", "c-retry")
    assert code == 1 and "consent c-retry already exists" in output and "(HTTP 409)" in output, output


def test_a_grant_without_consent_id_names_the_id_it_made_when_its_answer_is_lost(
        api: Harness, key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.consent.client.MemberWallet",
                        lambda private_key, url: MemberWallet(private_key, url, http=api.http))
    assert _run("member", "register", "--key-file", str(key), "--consent-url", NOBODY)[0] == 0
    api.writer.lose_ack = True
    code, output = _run("consent", "grant", "--purpose", "health-research", "--categories", "health", "--key-file",
                        str(key), "--consent-url", NOBODY)
    assert code == 1 and "could not confirm that consent " in output, output
    consent_id = output.split("could not confirm that consent ")[1].split()[0]
    assert f"add --consent-id {consent_id}" in output


def test_a_date_alone_expires_at_the_end_of_that_day_and_the_grant_says_until_when(
        api: Harness, key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    member = _registered(api, key, monkeypatch)
    day = (api.clock.now + timedelta(days=30)).date().isoformat()
    code, output = _run("consent", "grant", "--purpose", "health-research", "--categories", "health", "--expires",
                        day, "--key-file", str(key), "--consent-url", NOBODY)
    assert code == 0 and f"until {day}T23:59:59Z" in output, output
    consents = api.http.get(f"/members/{member.address}/consents", headers=eip712.read_auth(member, DOMAIN)).json()
    assert consents[0]["expires_at"] == f"{day}T23:59:59Z", "in effect through the day named"
    compact = (api.clock.now + timedelta(days=31)).date()
    code, output = _run("consent", "grant", "--purpose", "health-research", "--categories", "health", "--expires",
                        compact.strftime("%Y%m%d"), "--key-file", str(key), "--consent-url", NOBODY)
    assert code == 0 and f"until {compact.isoformat()}T23:59:59Z" in output, "ISO's compact date is a date too"
    code, output = _run("consent", "grant", "--purpose", "health-research", "--categories", "fitness", "--key-file",
                        str(key), "--consent-url", NOBODY)
    assert code == 0 and "until you revoke it" in output, output
