"""The vault and the consent service as processes on the real broker: contribute, read through the
internal decrypt API, prove no personal value crosses Kafka in clear, erase, rebuild."""
# ruff: noqa: F811  (pytest fixtures imported from vault_fixtures are parameters here)

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import httpx
import pytest
from typer.testing import CliRunner

from datacoop.cli import app
from infra.local import REPO_ROOT, Broker
from services.consent import eip712
from services.consent.client import ApiError
from services.vault.client import VaultClient, VaultReader
from tests.e2e.conftest import ServiceProcess
from tests.e2e.vault_fixtures import (  # noqa: F401  (fixtures)
    SERVICE_TOKEN,
    consent_svc,
    data_dir,
    new_member,
    raw_topic_bytes,
    reader,
    vault_env,
    vault_svc,
    wait_for,
)

MARKER_STRINGS = ["Zanzibar-Marker-Quokka", "Xylophone Clinic Marker", "QQ7 9ZZ"]
MARKER_NUMBERS = ["187654", "987654", "47.3769123", "-122.4194155", "123.4567"]


def _jsonl(rows: list[dict[str, object]]) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


LOCATION = [{"recorded_on": "2026-03-01", "postcode": "QQ7 9ZZ", "city": "Zanzibar-Marker-Quokka", "country": "GB",
             "latitude": 47.3769123, "longitude": -122.4194155, "trip_km": 12.5, "mode": "bike"}]
FITNESS_CSV = ("day,steps,active_minutes,resting_heart_rate_bpm,distance_m,workout\n"
               "2026-03-01,187654,95,51,987654,run\n2026-03-02,4321,20,,,walk\n")
HEALTH = [{"measured_on": "2026-02-11", "condition": "Xylophone Clinic Marker", "systolic_mmhg": 131,
           "diastolic_mmhg": 84, "weight_kg": 123.4567, "smoker": False}]


def _leaks(chunks: list[bytes]) -> list[str]:
    blob = b"\n".join(chunks).decode(errors="replace")
    found = [m for m in MARKER_STRINGS if m in blob]
    # A number leaks when it stands alone (as in clear JSON), not inside a base64 run of ciphertext.
    found += [n for n in MARKER_NUMBERS if re.search(rf"(?<![0-9A-Za-z+/.]){re.escape(n)}(?![0-9A-Za-z+/])", blob)]
    return found


def test_no_personal_value_crosses_kafka_in_clear(consent_svc: ServiceProcess, vault_svc: ServiceProcess,
                                                  reader: VaultReader, broker: Broker,
                                                  vault_env: dict[str, str]) -> None:
    _, alice = new_member(consent_svc, vault_svc)
    loc = alice.contribute("location", _jsonl(LOCATION))
    fit = alice.contribute("fitness", FITNESS_CSV, fmt="csv")
    alice.contribute("health", _jsonl(HEALTH))
    assert (loc["records"], fit["records"]) == (1, 2)

    rows = list(reader.records(members=[alice.address]))
    by_cat = {c: [r["fields"] for r in rows if r["category"] == c] for c in ("location", "fitness", "health")}
    assert by_cat["location"] == [LOCATION[0]]
    assert [f["steps"] for f in by_cat["fitness"]] == [187654, 4321]
    assert by_cat["fitness"][1]["distance_m"] is None
    assert by_cat["health"][0]["condition"] == "Xylophone Clinic Marker"
    assert all(r["member"] == alice.address for r in rows)

    prefix = vault_env["DATACOOP_TOPIC_PREFIX"]
    chunks = raw_topic_bytes(broker.bootstrap, prefix)
    blob = b"\n".join(chunks)
    assert b"datacoop.vault.records_contributed.v1" in blob, "the records topic was not read"
    assert b"ciphertext" in blob
    assert _leaks(chunks) == []
    # The check itself works: the same markers are found in the plaintext the decrypt API returned.
    assert set(_leaks([json.dumps(rows).encode()])) == set(MARKER_STRINGS + MARKER_NUMBERS)


def test_invalid_upload_is_refused_whole_with_a_report_naming_rows_and_fields(
        consent_svc: ServiceProcess, vault_svc: ServiceProcess) -> None:
    _, bob = new_member(consent_svc, vault_svc)
    rows = [{"age": 39, "sex": "Male", "race": "White", "marital-status": "Never-married", "education": "Bachelors",
             "native-country": "United-States", "workclass": "State-gov", "occupation": "Adm-clerical",
             "salary-class": "<=50K"}]
    bad = [*rows, {**rows[0], "age": 130}, {**rows[0], "sex": "Robot", "shoe-size": 44}]
    with pytest.raises(ApiError) as refused:
        bob.contribute("demographics", _jsonl(bad))
    assert refused.value.status == 422
    errors = {(e["row"], e["field"]) for e in refused.value.problem["errors"]}
    assert errors == {(2, "age"), (3, "sex"), (3, "shoe-size")}
    assert bob.summary()["uploads"] == [], "an upload with a bad row stores nothing"

    adult_csv = "sex;age;race;marital-status;education;native-country;workclass;occupation;salary-class\n" \
                "Male;50;White;Married-civ-spouse;Bachelors;United-States;Self-emp-not-inc;Exec-managerial;<=50K\n"
    assert bob.contribute("demographics", adult_csv, fmt="csv")["records"] == 1


def test_replayed_stale_forged_and_unregistered_uploads_are_refused(
        consent_svc: ServiceProcess, vault_svc: ServiceProcess) -> None:
    _, carol = new_member(consent_svc, vault_svc)
    body = carol.contribute_body("location", _jsonl(LOCATION))
    url = f"{vault_svc.url}/members/{carol.address}/records"
    assert httpx.post(url, json=body).status_code == 201
    replay = httpx.post(url, json=body)
    assert replay.status_code == 409 and "already contributed" in replay.json()["detail"]

    stale = carol.contribute_body("location", _jsonl(LOCATION[:1]) + "\n", issued_at=int(time.time()) - 3600)
    assert httpx.post(url, json=stale).json()["type"].endswith("/stale-signature")

    _, mallory = new_member(consent_svc, vault_svc)
    forged = mallory.contribute_body("location", _jsonl(LOCATION), on_behalf_of=carol.address)
    resp = httpx.post(url, json=forged)
    assert resp.status_code == 401 and mallory.address in resp.json()["detail"]

    from eth_account import Account

    from services.vault.client import VaultClient
    stranger = VaultClient(Account.create().key.hex(), vault_svc.url)
    with pytest.raises(ApiError) as unknown:
        stranger.contribute("location", _jsonl(LOCATION))
    assert unknown.value.status == 404 and "register" in str(unknown.value)


def test_decrypt_api_needs_the_service_token(vault_svc: ServiceProcess) -> None:
    resp = httpx.post(f"{vault_svc.url}/internal/decrypt", json={"category": "health"})
    assert resp.status_code == 401 and "a service token is required" in resp.json()["detail"]
    wrong = VaultReader(vault_svc.url, "not-the-token-at-all")
    with pytest.raises(ApiError) as refused:
        wrong.page(category="health")
    assert refused.value.status == 401
    assert "wrong service token" in refused.value.problem["detail"], "a token was sent: not 'is required'"


def test_erasure_shreds_the_key_and_no_rebuild_reads_the_records_again(
        launch: Callable[..., ServiceProcess], vault_env: dict[str, str], consent_svc: ServiceProcess,
        vault_svc: ServiceProcess, reader: VaultReader, tmp_path: Path) -> None:
    dora_wallet, dora = new_member(consent_svc, vault_svc)
    _, ed = new_member(consent_svc, vault_svc)
    dora.contribute("fitness", FITNESS_CSV, fmt="csv")
    ed.contribute("fitness", FITNESS_CSV.replace("187654", "5000"), fmt="csv")
    assert {r["member"] for r in reader.records(category="fitness")} == {dora.address, ed.address}
    dora_key = tmp_path / "dora.key"  # her own view from the CLI: a signed read of her uploads
    dora_key.write_text(dora.account.key.hex())

    def her_records() -> str:
        shown = CliRunner().invoke(app, ["member", "records", "--key-file", str(dora_key), "--vault-url",
                                         vault_svc.url])
        assert shown.exit_code == 0, shown.output
        return str(shown.output)
    listed = her_records()
    assert "fitness" in listed and dora.address in listed and "asked to be forgotten" not in listed, listed
    key_store = data_dir(vault_env) / "vault-keys.duckdb"
    backup = tmp_path / "keys-backup.duckdb"  # a backup taken before the erasure (file copy, with its log)
    shutil.copy(key_store, backup)
    if Path(f"{key_store}.wal").exists():
        shutil.copy(f"{key_store}.wal", f"{backup}.wal")

    dora_wallet.erase()

    def refused() -> bool:
        return httpx.post(f"{vault_svc.url}/internal/decrypt", json={"members": [dora.address]},
                          headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}).status_code == 410
    wait_for(refused, "the decrypt API to refuse the erased member")
    wait_for(lambda: dora.summary()["keys_shredded"], "the KeysShredded event")
    assert "asked to be forgotten: the vault destroyed the data key" in her_records()
    assert {r["member"] for r in reader.records(category="fitness")} == {ed.address}
    with pytest.raises(ApiError) as gone:
        dora.contribute("fitness", FITNESS_CSV.replace("4321", "4322"), fmt="csv")
    assert gone.value.status == 410

    vault_svc.stop()
    keys = duckdb.connect(str(key_store), read_only=True)
    assert keys.execute("SELECT count(*) FROM data_keys WHERE member = ?", [dora.address]).fetchone() == (0,)
    assert keys.execute("SELECT count(*) FROM data_keys WHERE member = ?", [ed.address]).fetchone() == (1,)
    keys.close()
    shutil.copy(backup, tmp_path / "peek.duckdb")  # read the backup's copy of dora's wrapped key
    if Path(f"{backup}.wal").exists():
        shutil.copy(f"{backup}.wal", tmp_path / "peek.duckdb.wal")
    peek = duckdb.connect(str(tmp_path / "peek.duckdb"))
    wrapped = bytes(peek.execute("SELECT wrapped FROM data_keys WHERE member = ?", [dora.address]).fetchone()[0])
    peek.close()
    assert not _file_holds(key_store, wrapped), "the shredded key's bytes are gone from the key store's file"
    for db in data_dir(vault_env).glob("vault.duckdb*"):
        db.unlink()
    rebuilt = launch("vault", vault_env)
    again = VaultReader(rebuilt.url, SERVICE_TOKEN)
    assert {r["member"] for r in again.records(category="fitness")} == {ed.address}
    resp = httpx.post(f"{rebuilt.url}/internal/decrypt", json={"members": [dora.address]},
                      headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
    assert resp.status_code == 410 and resp.json()["refused_members"] == [dora.address]

    # The key store restored from the backup brings dora's key back: the vault shreds it again at start.
    rebuilt.stop()
    for stale in key_store.parent.glob("vault-keys.duckdb*"):
        stale.unlink()
    shutil.copy(backup, key_store)
    if Path(f"{backup}.wal").exists():
        shutil.copy(f"{backup}.wal", f"{key_store}.wal")
    restored = launch("vault", vault_env)
    wait_for(lambda: "shredded again 1 data key" in restored.log(), "the restored key to be shredded again")
    restored.stop()
    keys = duckdb.connect(str(key_store), read_only=True)
    assert keys.execute("SELECT member FROM data_keys").fetchall() == [(ed.address,)]
    keys.close()
    assert not _file_holds(key_store, wrapped)


def _file_holds(path: Path, blob: bytes) -> bool:
    return any(blob in p.read_bytes() for p in path.parent.glob(f"{path.name}*"))


def test_both_services_rebuild_the_same_state_after_their_databases_are_deleted(
        launch: Callable[..., ServiceProcess], service_env: dict[str, str], vault_env: dict[str, str],
        consent_svc: ServiceProcess, vault_svc: ServiceProcess, reader: VaultReader) -> None:
    wallet, fay = new_member(consent_svc, vault_svc)
    wallet.grant("health-research", ["health", "fitness"])
    fay.contribute("health", _jsonl(HEALTH))
    fay.contribute("fitness", FITNESS_CSV, fmt="csv")
    gone_wallet, gus = new_member(consent_svc, vault_svc)
    gus.contribute("location", _jsonl(LOCATION))
    gone_wallet.erase()
    wait_for(lambda: gus.summary()["keys_shredded"], "the KeysShredded event")

    def snapshot(consent: ServiceProcess, vault: ServiceProcess) -> tuple[object, ...]:
        member = httpx.get(f"{consent.url}/members/{wallet.address}", headers=wallet.read_headers()).json()
        gone = httpx.get(f"{consent.url}/members/{gone_wallet.address}", headers=gone_wallet.read_headers()).json()
        summaries = [httpx.get(f"{vault.url}/members/{c.address}/records",
                               headers=eip712.read_auth(c.account, c.domain)).json() for c in (fay, gus)]
        plain = VaultReader(vault.url, SERVICE_TOKEN).page(limit=10_000)
        return member, gone, summaries, plain

    before = snapshot(consent_svc, vault_svc)
    consent_svc.stop()
    vault_svc.stop()
    for db in [*data_dir(service_env).glob("consent.duckdb*"), *data_dir(vault_env).glob("vault.duckdb*")]:
        db.unlink()
    consent2 = launch("consent", service_env)
    vault2 = launch("vault", vault_env)
    assert snapshot(consent2, vault2) == before
    assert before[3]["records"] and {r["member"] for r in before[3]["records"]} == {fay.address}


def test_cli_contributes_a_file_with_a_progress_bar_and_fails_in_one_red_line(
        consent_svc: ServiceProcess, vault_svc: ServiceProcess, tmp_path: Path) -> None:
    wallet, _ = new_member(consent_svc, vault_svc)
    key_file = tmp_path / "key"
    key_file.write_text(wallet.account.key.hex())
    good = tmp_path / "steps.csv"
    good.write_text(FITNESS_CSV)
    cli = [sys.executable, "-c", "from datacoop.cli import main; main()", "contribute"]
    ok = subprocess.run([*cli, str(good), "--category", "fitness", "--key-file", str(key_file),
                         "--vault-url", vault_svc.url], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "2 record(s)" in ok.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"day": "2026-01-01", "steps": -5}\n')
    refused = subprocess.run([*cli, str(bad), "--category", "fitness", "--key-file", str(key_file),
                              "--vault-url", vault_svc.url], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0
    assert "error:" in refused.stderr and "row 1" in refused.stderr and "steps" in refused.stderr
    assert "Traceback" not in refused.stderr
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


@pytest.mark.parametrize(("given", "named"), [
    ({}, "DATACOOP_VAULT_KEK"),
    ({"DATACOOP_VAULT_KEK": "q2YxXo0eFq3cq0v9kq5l6yQ4l0wz1rB8n7s3u2t1v0w="}, "DATACOOP_VAULT_SERVICE_TOKEN"),
    ({"DATACOOP_VAULT_KEK": "not base64 of 32 bytes", "DATACOOP_VAULT_SERVICE_TOKEN": "e2e-vault-service-token-x"},
     "DATACOOP_VAULT_KEK"),
    ({"DATACOOP_VAULT_SERVICE_TOKEN": "short"}, "DATACOOP_VAULT_SERVICE_TOKEN"),
])
def test_the_vault_refuses_to_start_on_development_secrets_outside_a_dev_stack(
        tmp_path: Path, given: dict[str, str], named: str) -> None:
    """A deployment that forgets its KEK or decrypt token must not run on the values every install shares."""
    env = {"PATH": "/usr/bin:/bin", "DATACOOP_DATA_DIR": str(tmp_path), "DATACOOP_DEV_SECRETS": "false", **given}
    result = subprocess.run([sys.executable, "-m", "services.vault.service"], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot start" in result.stderr and named in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "vault-kek").exists(), "no key-encryption key generated beside the data"


def test_a_members_uploads_are_listed_to_that_member_alone(consent_svc: ServiceProcess, vault_svc: ServiceProcess,
                                                          reader: VaultReader) -> None:
    _, joy = new_member(consent_svc, vault_svc)
    _, kim = new_member(consent_svc, vault_svc)
    joy.contribute("fitness", FITNESS_CSV, fmt="csv")
    assert joy.summary()["uploads"][0]["category"] == "fitness"
    url = f"{vault_svc.url}/members/{joy.address}/records"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 401 and "X-Member-Auth" in anonymous.json()["detail"]
    assert "fitness" not in anonymous.text
    other = httpx.get(url, headers=eip712.read_auth(kim.account, kim.domain))
    assert other.status_code == 401 and f"not by member {joy.address}" in other.json()["detail"]
    assert reader.page(members=[])["records"] == [], "an empty member list asks for nobody's records"
    assert {r["member"] for r in reader.page(members=[joy.address])["records"]} == {joy.address}


def test_rotating_the_kek_keeps_every_record_readable_under_the_new_kek_alone(
        launch: Callable[..., ServiceProcess], vault_env: dict[str, str], consent_svc: ServiceProcess,
        vault_svc: ServiceProcess, reader: VaultReader, tmp_path: Path) -> None:
    _, lea = new_member(consent_svc, vault_svc)
    lea.contribute("fitness", FITNESS_CSV, fmt="csv")
    before = reader.page(limit=1_000)["records"]
    new_kek = tmp_path / "secrets" / "new-kek"
    cli = [sys.executable, "-c", "from datacoop.cli import main; main()", "vault", "rotate-kek",
           "--new-kek-file", str(new_kek)]
    cli_env = {"PATH": "/usr/bin:/bin", "DATACOOP_DATA_DIR": vault_env["DATACOOP_DATA_DIR"],
               "DATACOOP_VAULT_KEK": vault_env["DATACOOP_VAULT_KEK"]}

    busy = subprocess.run(cli, env=cli_env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert busy.returncode == 1 and "stop the vault" in busy.stderr and "Traceback" not in busy.stderr
    vault_svc.stop()
    rotated = subprocess.run(cli, env=cli_env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    assert "generated a new KEK" in rotated.stdout and "re-wrapped 1 data key(s)" in rotated.stdout
    assert new_kek.stat().st_mode & 0o777 == 0o600

    old = subprocess.run([sys.executable, "-m", "services.vault.service"], env={**vault_env, "PATH": "/usr/bin:/bin"},
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert old.returncode == 2 and "DATACOOP_VAULT_KEK" in old.stderr and "does not open the key store" in old.stderr
    assert "Traceback" not in old.stderr

    vault = launch("vault", {**vault_env, "DATACOOP_VAULT_KEK": new_kek.read_text().strip()})
    assert VaultReader(vault.url, SERVICE_TOKEN).page(limit=1_000)["records"] == before
    again = VaultClient(lea.account.key.hex(), vault.url)
    with pytest.raises(ApiError) as seen:  # the upload tag outlives the rotation: the same file is known
        again.contribute("fitness", FITNESS_CSV, fmt="csv")
    assert seen.value.status == 409
