"""The CLI as a user runs it: `datacoop up --demo`, and the member commands against a live service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra.local import REPO_ROOT
from services.consent.receipts import sign_receipt
from tests.e2e.conftest import ServiceProcess
from tests.e2e.vault_fixtures import SERVICE_TOKEN, VAULT_KEK


def datacoop(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from datacoop.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.mark.slow
def test_up_starts_everything_plays_the_demo_and_stops_cleanly() -> None:
    result = datacoop("up", "--demo", "--exit-after-demo", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "broker (Tansu)" in out and "chain (anvil)" in out
    assert "service consent" in out and "ready" in out
    assert "a replayed signature is refused (409)" in out
    assert "a consent granted for 2 seconds was expired by the sweeper" in out
    assert "records sealed with AES-256-GCM" in out
    assert "superseded" in out and "contributor(s), without them" in out
    assert "downloaded" in out and "next query refused" in out
    assert "GPU provider" in out and "earned" in out
    assert "claimed" in out and "wallet now holds" in out
    assert "was built without them" in out
    assert "stopped cleanly" in out
    assert not (REPO_ROOT / "var" / "run" / "stack.json").exists()


def test_member_commands_register_grant_list_receipt_and_verify(
        launch: Callable[..., ServiceProcess], service_env: dict[str, str], tmp_path: Path) -> None:
    consent = launch("consent", service_env)
    env = {"DATACOOP_CONSENT_URL": consent.url}
    key = tmp_path / "me.key"
    made = datacoop("wallet", "new", "--out", str(key), env=env)
    assert made.returncode == 0, made.stderr
    assert datacoop("wallet", "new", "--out", str(key), env=env).returncode == 1, "never overwrite a key"

    catalog = datacoop("consent", "catalog", env=env)
    assert catalog.returncode == 0, catalog.stderr
    assert "health-research" in catalog.stdout and "fitness" in catalog.stdout and "catalog version 1" in catalog.stdout
    unregistered = datacoop("member", "show", "--key-file", str(key), env=env)
    assert unregistered.returncode == 1 and "404" in unregistered.stderr and "not registered" in unregistered.stderr
    assert "cannot reach" not in unregistered.stderr, "a refusal is not a network failure"
    assert datacoop("member", "register", "--key-file", str(key), env=env).returncode == 0
    granted = datacoop("consent", "grant", "--purpose", "health-research", "--categories", "health,fitness",
                       "--expires", "2099-01-01", "--key-file", str(key), env=env)
    assert granted.returncode == 0, granted.stderr
    consent_id = granted.stdout.split()[1]

    bad = datacoop("consent", "grant", "--purpose", "astrology", "--categories", "health", "--key-file", str(key),
                   env=env)
    assert bad.returncode == 2, "a purpose the catalog lacks is the option's fault: a usage error"
    assert "422" in bad.stderr and "health-research" in bad.stderr and "Traceback" not in bad.stderr

    listed = datacoop("consent", "list", "--key-file", str(key), env={**env, "COLUMNS": "80"})
    assert consent_id in listed.stdout and "active" in listed.stdout, "the whole id, even in 80 columns"

    unknown = datacoop("consent", "revoke", "no-such-consent", "--key-file", str(key), env=env)
    assert unknown.returncode == 1 and "has no consent no-such-consent" in unknown.stderr, unknown.stderr
    assert "`datacoop consent list`" in unknown.stderr and "(HTTP 404)" in unknown.stderr, unknown.stderr

    shown = datacoop("member", "show", "--key-file", str(key), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "registered" in shown.stdout and "next nonce 2" in shown.stdout, shown.stdout
    assert consent_id in shown.stdout and "health-research" in shown.stdout and "2099-01-01" in shown.stdout
    assert "{" not in shown.stdout, "a person reads a table, not the service's JSON"
    as_json = datacoop("member", "show", "--json", "--key-file", str(key), env=env)
    assert as_json.returncode == 0, as_json.stderr
    view = json.loads(as_json.stdout)
    assert view["next_nonce"] == 2 and [c["consent_id"] for c in view["consents"]] == [consent_id]

    receipt = tmp_path / "receipt.json"
    assert datacoop("consent", "receipt", consent_id, "--out", str(receipt), "--key-file", str(key),
                    env=env).returncode == 0
    verified = datacoop("receipt", "verify", str(receipt), env=env)  # the key from the consent service
    assert verified.returncode == 0 and "valid" in verified.stdout and "/receipt-key" in verified.stdout
    coop_key = httpx.get(f"{consent.url}/receipt-key").json()["public_key"]
    offline = datacoop("receipt", "verify", str(receipt), "--public-key", coop_key,
                       env={"DATACOOP_CONSENT_URL": "http://127.0.0.1:9"})  # nothing listens: offline
    assert offline.returncode == 0 and "the given key" in offline.stdout, offline.stderr
    unreachable = datacoop("receipt", "verify", str(receipt), env={"DATACOOP_CONSENT_URL": "http://127.0.0.1:9"})
    assert unreachable.returncode == 1 and "--public-key" in unreachable.stderr

    doc = json.loads(receipt.read_text())
    forged = sign_receipt({k: v for k, v in doc.items() if k != "proof"} | {"state": "revoked"},
                          Ed25519PrivateKey.generate())  # self-consistent, with the forger's own key in it
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    refused = datacoop("receipt", "verify", str(tmp_path / "forged.json"), env=env)
    assert refused.returncode == 1 and "NOT valid" in refused.stderr and "different key" in refused.stderr

    doc["purposes"][0]["purpose"] = "commercial-analytics"
    receipt.write_text(json.dumps(doc))
    tampered = datacoop("receipt", "verify", str(receipt), "--public-key", coop_key)
    assert tampered.returncode == 1 and "NOT valid" in tampered.stderr

    assert datacoop("member", "erase", "--key-file", str(key), env=env).returncode == 2, "erase needs --yes (usage)"
    vault = launch("vault", {**service_env, "DATACOOP_VAULT_KEK": VAULT_KEK,
                             "DATACOOP_VAULT_SERVICE_TOKEN": SERVICE_TOKEN, "DATACOOP_VAULT_SHRED_INTERVAL_S": "0.2"})
    erased_now = datacoop("member", "erase", "--yes", "--key-file", str(key),
                          env={**env, "DATACOOP_VAULT_URL": vault.url})
    assert erased_now.returncode == 0, erased_now.stderr
    said = " ".join(erased_now.stdout.split())
    assert "every consent of yours has ended" in said and "the vault destroyed your data key" in said, said
    again = datacoop("member", "erase", "--yes", "--key-file", str(key), env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout and "asked to be forgotten" in again.stdout
    erased = datacoop("member", "show", "--key-file", str(key), env=env)
    assert erased.returncode == 0, erased.stderr
    assert "erased (" in erased.stdout and "erasure requested" in erased.stdout, erased.stdout


def test_cli_without_a_key_or_url_says_what_to_do(tmp_path: Path) -> None:
    result = datacoop("member", "register", env={"DATACOOP_KEY": ""})
    assert result.returncode == 2, "no key is a usage error"
    assert "--key-file" in result.stderr


def test_cli_errors_name_real_options_examples_and_formats(tmp_path: Path) -> None:
    no_stack = {"DATACOOP_MARKETPLACE_URL": "", "DATACOOP_ANONYMIZER_OPERATOR_TOKEN": ""}
    if not (REPO_ROOT / "var" / "run" / "stack.json").exists():
        catalog = datacoop("catalog", env=no_stack)
        assert catalog.returncode == 1 and "--market-url" in catalog.stderr
        build = datacoop("dataset", "build", "census-demo", env=no_stack)
        assert build.returncode == 1 and "datacoop-dev-operator-token" in build.stderr

    bad_offer = datacoop("order", "census-demo")
    assert bad_offer.returncode == 2 and "adult-census" in bad_offer.stderr and "adult-income" not in bad_offer.stderr

    cores = datacoop("worker", "--cores", "0")
    assert cores.returncode == 2 and "--cores" in cores.stderr

    notes = tmp_path / "records.txt"
    notes.write_text('{"day": "2026-01-01", "steps": 5}\n')
    refused = datacoop("contribute", str(notes), "--category", "fitness", env={"DATACOOP_KEY": "11" * 32})
    assert refused.returncode == 1 and "use .jsonl or .csv (or pass --format" in refused.stderr
    xml = datacoop("contribute", str(notes), "--category", "fitness", "--format", "xml",
                   env={"DATACOOP_KEY": "11" * 32})
    assert xml.returncode == 2 and "--format must be jsonl or csv, not 'xml'" in xml.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    nothing = datacoop("contribute", str(empty), "--category", "fitness", env={"DATACOOP_KEY": "11" * 32})
    assert nothing.returncode == 1 and "is empty: nothing to contribute" in nothing.stderr
    bracketed = datacoop("wallet", "fund", "--address", "0x[a-z]")  # rich must not eat the brackets
    assert bracketed.returncode == 2 and "'0x[a-z]'" in bracketed.stderr, bracketed.stderr

    checked = datacoop("schemas", "check")
    assert checked.returncode == 0 and "up to date" in checked.stdout


def test_consent_grant_and_revoke_say_which_other_consents_cover_the_same_use(
        launch: Callable[..., ServiceProcess], service_env: dict[str, str], tmp_path: Path) -> None:
    consent = launch("consent", service_env)
    env = {"DATACOOP_CONSENT_URL": consent.url}
    key = tmp_path / "me.key"
    assert datacoop("wallet", "new", "--out", str(key), env=env).returncode == 0
    assert datacoop("member", "register", "--key-file", str(key), env=env).returncode == 0
    twice = datacoop("consent", "grant", "--purpose", "health-research", "--categories", "health,health",
                     "--key-file", str(key), env=env)
    assert twice.returncode == 2 and "--categories names health more than once" in twice.stderr, twice.stderr
    first = datacoop("consent", "grant", "--purpose", "health-research", "--categories", "health",
                     "--key-file", str(key), env=env)
    assert first.returncode == 0, first.stderr
    assert "health-research on health (active, until you revoke it)" in first.stdout, first.stdout
    assert "note" not in first.stdout
    first_id = first.stdout.split()[1]
    second = datacoop("consent", "grant", "--purpose", "health-research", "--categories", "health,fitness",
                      "--key-file", str(key), env=env)
    assert second.returncode == 0, second.stderr
    assert "note" in second.stdout and f"{first_id} (health)" in second.stdout, second.stdout
    second_id = second.stdout.split()[1]
    revoked = datacoop("consent", "revoke", second_id, "--key-file", str(key), env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert f"consent {second_id} is now revoked" in revoked.stdout
    assert f"`datacoop consent revoke {first_id} --key-file {key}`" in revoked.stdout, revoked.stdout
