"""The anonymizer with consent and vault as processes on the real broker: versions built from consented
records only, revocation and erasure end to end (also after a full replay), guarantees re-checked on
the Parquet itself, refusals, and the CLI."""
# ruff: noqa: F811  (pytest fixtures imported from the fixture modules are parameters here)

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import yaml
from typer.testing import CliRunner

from services.anonymizer.client import AnonymizerClient, ApiError
from services.consent.client import MemberWallet
from services.vault.client import VaultClient
from tests.e2e.anonymizer_fixtures import (  # noqa: F401  (fixtures)
    ADULT_COLUMNS,
    DATASET,
    OPERATOR_TOKEN,
    PURPOSE,
    adult_rows,
    anonymizer_env,
    census_definition,
    check_guarantees,
    pseudonym_of,
    read_version,
)
from tests.e2e.conftest import ServiceProcess
from tests.e2e.vault_fixtures import consent_svc, new_member, vault_env, vault_svc, wait_for  # noqa: F401

ROWS_EACH = 6
BOUND = 5  # the definition's max_rows_per_member: each member's 5 newest records (of 6) go into a version
QIS = [c for c in ADULT_COLUMNS if c != "salary-class"]


def _members(consent: ServiceProcess, vault: ServiceProcess, n: int) -> list[tuple[MemberWallet, VaultClient]]:
    out = []
    for i in range(n):
        wallet, client = new_member(consent, vault)
        wallet.grant(PURPOSE, ["demographics"])
        client.contribute("demographics", adult_rows(i * ROWS_EACH, ROWS_EACH))
        out.append((wallet, client))
    return out


def _on_offer(client: AnonymizerClient) -> dict[str, Any] | None:
    offered = [v for v in client.versions(DATASET) if not v["superseded"]]
    return offered[-1] if offered else None


def _offered_when(client: AnonymizerClient, what: str, check: Callable[[dict[str, Any]], bool],
                  timeout_s: float = 60) -> dict[str, Any]:
    """The version on offer once `check` holds for it (a rebuild for records still arriving, or one the
    debounce starts, may publish versions in between)."""
    wait_for(lambda: (v := _on_offer(client)) is not None and check(v), what, timeout_s)
    found = _on_offer(client)
    assert found is not None
    return found


def _check(version: dict[str, Any]) -> Any:
    """The guarantees on the Parquet itself (k in distinct pseudonyms per class); the public view counts
    contributors and never names them (their rows per member would link pseudonyms to addresses)."""
    table = read_version(version)
    assert "contributor_weights" not in version
    pseudonyms = table.column("pseudonym").to_pylist()
    assert table.num_rows == version["rows"] and version["contributors"] == len(set(pseudonyms))
    assert max(pseudonyms.count(p) for p in set(pseudonyms)) <= BOUND
    check_guarantees(table, QIS, ["salary-class"], version["k"], int(version["l_diversity"]))
    assert version["k"] >= 3 and version["l_diversity"] >= 2
    return table


def _at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def test_revocation_and_erasure_end_to_end_and_after_a_full_replay(
        consent_svc: ServiceProcess, vault_svc: ServiceProcess, launch: Callable[..., ServiceProcess],
        anonymizer_env: Callable[[ServiceProcess], dict[str, str]], service_env: dict[str, str]) -> None:
    env = anonymizer_env(vault_svc)
    anon = launch("anonymizer", env)
    client = AnonymizerClient(anon.url, OPERATOR_TOKEN)
    client.define(census_definition(max_rows_per_member=BOUND))
    members = _members(consent_svc, vault_svc, 8)
    outsider, outsider_vault = new_member(consent_svc, vault_svc)  # records but no consent
    outsider_vault.contribute("demographics", adult_rows(200, ROWS_EACH))
    everyone = {w.address for w, _ in members}

    client.build(DATASET)  # the vault may still be projecting some uploads: wait for the version holding all
    v1 = _offered_when(client, "a version of every record", lambda v: v["rows"] + v["suppressed_rows"] == 8 * BOUND)
    table = _check(v1)
    assert set(table.column("pseudonym").to_pylist()) <= {pseudonym_of(a, v1["version"]) for a in everyone}
    assert v1["contributors"] >= 6
    assert pseudonym_of(outsider.address, v1["version"]) not in table.column("pseudonym").to_pylist()
    assert v1["rows"] + v1["suppressed_rows"] == 8 * BOUND
    aggregates = client.aggregates(DATASET, v1["version"])
    assert aggregates["epsilon"] == 1.0 and aggregates["cells"]

    alice, bob = members[0][0], members[1][0]
    alice.revoke(alice.consents()[0]["consent_id"])
    v2 = _offered_when(client, "the version after the revocation", lambda v: v["version"] > v1["version"])
    left = client.version(DATASET, v1["version"])
    assert left["superseded"] and left["superseded_by"] == v2["version"]
    assert "consent ended" in left["superseded_reason"]
    # off sale as soon as she left, not when the version without her was ready
    assert _at(left["superseded_at"]) < _at(v2["published_at"])
    assert pseudonym_of(alice.address, v2["version"]) not in _check(v2).column("pseudonym").to_pylist()
    assert v2["rows"] + v2["suppressed_rows"] == 7 * BOUND

    bob.erase()
    v3 = _offered_when(client, "the version after the erasure", lambda v: v["version"] > v2["version"])
    left = client.version(DATASET, v2["version"])
    assert left["superseded"] and left["superseded_by"] == v3["version"]
    assert _at(left["superseded_at"]) < _at(v3["published_at"])
    assert pseudonym_of(bob.address, v3["version"]) not in _check(v3).column("pseudonym").to_pylist()
    offered = {d["dataset_id"]: d for d in client.catalog()}
    assert offered[DATASET]["newest_version"]["version"] == v3["version"]

    anon.stop()
    (Path(service_env["DATACOOP_DATA_DIR"]) / "anonymizer.duckdb").unlink()
    anon = launch("anonymizer", env)
    client = AnonymizerClient(anon.url, OPERATOR_TOKEN)
    replayed = client.versions(DATASET)
    last = v3["version"]
    assert [(v["version"], v["superseded"]) for v in replayed] == [(n, n != last) for n in range(1, last + 1)]
    builds_before = len(client.builds(DATASET))
    time.sleep(2)  # 4 debounce periods: a replay alone changes no input, so nothing is built
    assert len(client.versions(DATASET)) == last and len(client.builds(DATASET)) == builds_before
    build_id = client.request_build(DATASET)["build_id"]  # the same rows again would be a second copy on sale
    wait_for(lambda: client.build_status(DATASET, build_id).get("outcome") is not None, "the unchanged build to end")
    unchanged = client.build_status(DATASET, build_id)
    assert (unchanged["outcome"], unchanged["version"]) == ("unchanged", last), unchanged
    assert client.build(DATASET)["version"] == last and len(client.builds(DATASET)) == builds_before
    assert len(client.versions(DATASET)) == last
    v4 = client.build(DATASET, force=True)
    assert v4["version"] == last + 1
    v3_now = client.version(DATASET, last)
    assert v3_now["superseded"] and v3_now["superseded_by"] == last + 1
    assert f"replaced by version {last + 1}" in v3_now["superseded_reason"]
    pseudonyms = set(_check(v4).column("pseudonym").to_pylist())
    assert not ({pseudonym_of(alice.address, v4["version"]), pseudonym_of(bob.address, v4["version"])} & pseudonyms)
    assert v4["rows"] + v4["suppressed_rows"] == 6 * BOUND
    builds = client.builds(DATASET)
    failed = [(b["trigger"], b["detail"]) for b in builds if b["outcome"] != "published"]
    assert not failed, failed
    assert all(b["stage"] == "publishing" and b["done"] == b["total"] > 0 for b in builds)  # progress events
    assert {b["trigger"] for b in builds} == {"on-demand", "change"}


def test_bad_definitions_are_refused_with_every_problem_and_the_operator_api_needs_its_token(
        vault_svc: ServiceProcess, launch: Callable[..., ServiceProcess],
        anonymizer_env: Callable[[ServiceProcess], dict[str, str]]) -> None:
    anon = launch("anonymizer", anonymizer_env(vault_svc))
    bad = census_definition()
    bad["purpose"] = "spying"
    bad["columns"]["shoe-size"] = {"type": "integer", "min": 30, "max": 50}
    bad["privacy"]["k"] = 1
    with pytest.raises(ApiError) as refused:
        AnonymizerClient(anon.url, OPERATOR_TOKEN).define(bad)
    assert refused.value.status == 422
    problems = " | ".join(refused.value.problem["problems"])
    assert "spying" in problems and "shoe-size" in problems and "k=1" in problems
    assert "column 'shoe-size' is in no role" in problems, "a forgotten column is never published raw"
    with pytest.raises(ApiError) as unauthorized:
        AnonymizerClient(anon.url, "not-the-operator-token").define(census_definition())
    assert unauthorized.value.status == 401
    assert httpx.post(f"{anon.url}/datasets/{DATASET}/build").status_code == 401
    ok = AnonymizerClient(anon.url, OPERATOR_TOKEN)
    assert ok.validate(census_definition())["valid"] is True
    unplaced = census_definition(l=1) | {"sensitive": []}  # salary-class in no role
    with pytest.raises(ApiError) as in_no_role:
        ok.validate(unplaced)
    assert in_no_role.value.status == 422 and in_no_role.value.problem["problems"] == [
        "column 'salary-class' is in no role: list it under quasi_identifiers (generalized), sensitive, "
        "or published_as_is (published unchanged)"]
    placed = ok.validate(unplaced | {"published_as_is": ["salary-class"]})
    assert placed["valid"] is True and placed["published_as_is"] == ["salary-class"]
    assert ok.define(census_definition())["created"] is True
    assert ok.define(census_definition())["created"] is False
    changed = census_definition(k=4)
    with pytest.raises(ApiError) as conflict:
        ok.define(changed)
    assert conflict.value.status == 409
    assert ok.define(census_definition(k=4, version=2))["definition_version"] == 2


def test_cli_defines_and_builds_a_version_with_progress_and_fails_in_one_red_line(
        consent_svc: ServiceProcess, vault_svc: ServiceProcess, launch: Callable[..., ServiceProcess],
        anonymizer_env: Callable[[ServiceProcess], dict[str, str]], tmp_path: Path) -> None:
    from datacoop.cli import anonymizer as cli

    files = tmp_path / "definitions"  # read at start: one the anonymizer refuses, one it cannot read
    files.mkdir()
    (files / "unplaced.yaml").write_text(yaml.safe_dump(census_definition(l=1) | {"sensitive": []}))
    (files / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    anon = launch("anonymizer", {**anonymizer_env(vault_svc), "DATACOOP_ANONYMIZER_DEFINITIONS_DIR": str(files)})
    app = typer.Typer()
    cli.register(app)
    runner = CliRunner()
    env = {"DATACOOP_ANONYMIZER_URL": anon.url, "DATACOOP_ANONYMIZER_OPERATOR_TOKEN": OPERATOR_TOKEN,
           "COLUMNS": "200"}
    deadline = time.monotonic() + 30
    while (read := httpx.get(f"{anon.url}/definition-files")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    outcomes = {Path(f["file"]).name: f for f in read.json()}
    assert outcomes["unplaced.yaml"]["outcome"] == "refused" and outcomes["latin1.yaml"]["outcome"] == "unreadable"
    assert "column 'salary-class' is in no role" in outcomes["unplaced.yaml"]["problems"][0]
    listed = runner.invoke(app, ["dataset", "list"], env=env)
    assert listed.exit_code == 0 and "unplaced.yaml was refused at start: column 'salary-class' is in no role" \
        in " ".join(listed.output.split()), listed.output
    unplaced = tmp_path / "unplaced.yaml"
    unplaced.write_text(yaml.safe_dump(census_definition(l=1) | {"sensitive": []}))
    refused = runner.invoke(app, ["dataset", "define", str(unplaced)], env=env)
    assert refused.exit_code == 1 and "1 problem(s)" in refused.output, refused.output
    assert "column 'salary-class' is in no role: list it under quasi_identifiers" in refused.output
    good = tmp_path / "census.yaml"
    good.write_text(yaml.safe_dump(census_definition()))
    checked = runner.invoke(app, ["dataset", "define", str(good), "--check"], env=env)
    assert checked.exit_code == 0 and "is a valid definition of" in checked.output, checked.output
    assert runner.invoke(app, ["dataset", "list"], env=env).output.count(DATASET) == 0, "--check defines nothing"
    defined = runner.invoke(app, ["dataset", "define", str(good)], env=env)
    assert defined.exit_code == 0 and f"defined {DATASET} definition version 1" in defined.output, defined.output
    again = runner.invoke(app, ["dataset", "define", str(good)], env=env)
    assert again.exit_code == 0 and "already defined, unchanged" in again.output, again.output
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("name: [unclosed\n")
    broken = runner.invoke(app, ["dataset", "define", str(not_yaml)], env=env)
    assert broken.exit_code == 2 and "is not YAML or JSON at line" in broken.output, broken.output
    _members(consent_svc, vault_svc, 4)
    built = runner.invoke(app, ["dataset", "build", DATASET], env=env)
    assert built.exit_code == 0, built.output
    assert "version 1" in built.output and "k=" in built.output
    listed = runner.invoke(app, ["dataset", "list"], env=env)
    assert listed.exit_code == 0 and DATASET in listed.output
    shown = runner.invoke(app, ["dataset", "show", DATASET], env={**env, "COLUMNS": "200"})
    assert shown.exit_code == 0 and "sha256" in shown.output
    assert "quasi-identifiers:" in shown.output and "privacy:" in shown.output, "the definition, then versions"
    missing = runner.invoke(app, ["dataset", "build", "no-such-dataset"], env=env)
    assert missing.exit_code != 0 and "no dataset" in missing.output
    assert "Traceback" not in missing.output
    nobody = {**census_definition(), "name": "census-for-ai", "purpose": "ai-training"}  # no member consented
    AnonymizerClient(anon.url, OPERATOR_TOKEN).define(nobody)
    empty = runner.invoke(app, ["dataset", "build", "census-for-ai"], env={**env, "COLUMNS": "200"})
    assert empty.exit_code != 0 and "no records of members with an active consent for ai-training" in empty.output
    assert "NothingToBuild" not in empty.output and "ValueError" not in empty.output, "words, not a class name"


def test_demo_chapter_builds_a_version_and_a_revocation_makes_the_next_one(
        consent_svc: ServiceProcess, vault_svc: ServiceProcess, launch: Callable[..., ServiceProcess],
        anonymizer_env: Callable[[ServiceProcess], dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from rich.console import Console

    from datacoop.cli.anonymizer import chapter_datasets

    anon = launch("anonymizer", anonymizer_env(vault_svc))
    monkeypatch.setenv("DATACOOP_ANONYMIZER_OPERATOR_TOKEN", OPERATOR_TOKEN)
    stack = {"services": {"consent": {"url": consent_svc.url}, "vault": {"url": vault_svc.url},
                          "anonymizer": {"url": anon.url}}}
    console = Console(record=True, width=200)
    chapter_datasets(SimpleNamespace(stack=stack), console, members=16)  # one row a member counts (the bound)
    text = console.export_text()
    found = re.search(r"census-demo version \d+: k=(\d+)", text)
    assert found and int(found.group(1)) >= 3, text
    assert "information loss 1.0000" not in text, "16 people are enough for a version that tells something"
    assert "superseded" in text and "contributor(s), without them" in text


def test_the_same_rows_uploaded_again_as_another_file_leave_the_version_on_offer(
        consent_svc: ServiceProcess, vault_svc: ServiceProcess, launch: Callable[..., ServiceProcess],
        anonymizer_env: Callable[[ServiceProcess], dict[str, str]]) -> None:
    """The report: a new member uploads two rows of adult.csv (';' separated), then the same rows as a ','
    separated file: new records, which give exactly the rows on offer. No second copy goes on sale, and the
    version on offer (its unpaid orders) stays."""
    from services.anonymizer.definition import shared_dir

    anon = launch("anonymizer", anonymizer_env(vault_svc))
    client = AnonymizerClient(anon.url, OPERATOR_TOKEN)
    client.define(census_definition(max_rows_per_member=2))
    _members(consent_svc, vault_svc, 10)
    lines = (shared_dir() / "data" / "adult" / "adult.csv").read_text().splitlines()
    semicolons = "\n".join([lines[0], *lines[4 * ROWS_EACH + 1:4 * ROWS_EACH + 3]]) + "\n"
    newcomer, newcomer_vault = new_member(consent_svc, vault_svc)
    newcomer.grant(PURPOSE, ["demographics"])

    def ended_reading(records: int) -> dict[str, Any] | None:
        done = [b for b in client.builds(DATASET) if b["records"] == records and b["outcome"] is not None]
        return done[0] if done else None

    newcomer_vault.contribute("demographics", semicolons, "csv")
    wait_for(lambda: ended_reading(10 * ROWS_EACH + 2) is not None, "a build of her first upload", 60)
    first = ended_reading(10 * ROWS_EACH + 2)
    assert first is not None and first["outcome"] in ("published", "unchanged"), first
    on_offer = _on_offer(client)
    assert on_offer is not None and on_offer["version"] == first["version"]
    versions = client.versions(DATASET)

    newcomer_vault.contribute("demographics", semicolons.replace(";", ","), "csv")
    wait_for(lambda: ended_reading(10 * ROWS_EACH + 4) is not None, "a build of her second upload", 60)
    again = ended_reading(10 * ROWS_EACH + 4)
    assert again is not None and (again["outcome"], again["version"]) == ("unchanged", on_offer["version"]), again
    assert f"version {on_offer['version']} already holds exactly" in again["detail"]
    assert client.versions(DATASET) == versions
    assert client.build(DATASET)["version"] == on_offer["version"]  # the record ids now known: nothing built
    assert client.versions(DATASET) == versions
