"""The anonymizer with consent and vault as processes on the real broker: versions built from consented
records only, revocation and erasure end to end (also after a full replay), guarantees re-checked on
the Parquet itself, refusals, and the CLI."""
# ruff: noqa: F811  (pytest fixtures imported from the fixture modules are parameters here)

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
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
QIS = [c for c in ADULT_COLUMNS if c != "salary-class"]


def _members(consent: ServiceProcess, vault: ServiceProcess, n: int) -> list[tuple[MemberWallet, VaultClient]]:
    out = []
    for i in range(n):
        wallet, client = new_member(consent, vault)
        wallet.grant(PURPOSE, ["demographics"])
        client.contribute("demographics", adult_rows(i * ROWS_EACH, ROWS_EACH))
        out.append((wallet, client))
    return out


def _versions_after(client: AnonymizerClient, count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    wait_for(lambda: len(client.versions(DATASET)) >= count, f"version {count}", timeout_s)
    return client.versions(DATASET)


def _check(version: dict[str, Any]) -> Any:
    table = read_version(version)
    assert table.num_rows == version["rows"] == sum(version["contributor_weights"].values())
    check_guarantees(table, QIS, ["salary-class"], version["k"], int(version["l_diversity"]))
    assert version["k"] >= 3 and version["l_diversity"] >= 2
    return table


def test_revocation_and_erasure_end_to_end_and_after_a_full_replay(
        consent_svc: ServiceProcess, vault_svc: ServiceProcess, launch: Callable[..., ServiceProcess],
        anonymizer_env: Callable[[ServiceProcess], dict[str, str]], service_env: dict[str, str]) -> None:
    env = anonymizer_env(vault_svc)
    anon = launch("anonymizer", env)
    client = AnonymizerClient(anon.url, OPERATOR_TOKEN)
    client.define(census_definition())
    members = _members(consent_svc, vault_svc, 8)
    outsider, outsider_vault = new_member(consent_svc, vault_svc)  # records but no consent
    outsider_vault.contribute("demographics", adult_rows(200, ROWS_EACH))
    everyone = {w.address for w, _ in members}

    v1 = client.build(DATASET)
    table = _check(v1)
    assert set(v1["contributor_weights"]) <= everyone and len(v1["contributor_weights"]) >= 6
    assert all(0 < w <= ROWS_EACH for w in v1["contributor_weights"].values())
    assert pseudonym_of(outsider.address) not in table.column("pseudonym").to_pylist()
    assert v1["rows"] + v1["suppressed_rows"] == 8 * ROWS_EACH
    aggregates = client.aggregates(DATASET, 1)
    assert aggregates["epsilon"] == 1.0 and aggregates["cells"]

    alice, bob = members[0][0], members[1][0]
    alice.revoke(alice.consents()[0]["consent_id"])
    versions = _versions_after(client, 2)
    v2 = versions[1]
    assert versions[0]["superseded"] and versions[0]["superseded_by"] == 2
    assert alice.address not in v2["contributor_weights"]
    assert pseudonym_of(alice.address) not in _check(v2).column("pseudonym").to_pylist()
    assert v2["rows"] + v2["suppressed_rows"] == 7 * ROWS_EACH

    bob.erase()
    versions = _versions_after(client, 3)
    v3 = versions[2]
    assert versions[1]["superseded"] and versions[1]["superseded_by"] == 3
    assert not ({alice.address, bob.address} & set(v3["contributor_weights"]))
    assert pseudonym_of(bob.address) not in _check(v3).column("pseudonym").to_pylist()
    offered = {d["dataset_id"]: d for d in client.catalog()}
    assert offered[DATASET]["newest_version"]["version"] == 3

    anon.stop()
    (Path(service_env["DATACOOP_DATA_DIR"]) / "anonymizer.duckdb").unlink()
    anon = launch("anonymizer", env)
    client = AnonymizerClient(anon.url, OPERATOR_TOKEN)
    replayed = client.versions(DATASET)
    assert [(v["version"], v["superseded"]) for v in replayed] == [(1, True), (2, True), (3, False)]
    builds_before = len(client.builds(DATASET))
    time.sleep(2)  # 4 debounce periods: a replay alone changes no input, so nothing is built
    assert len(client.versions(DATASET)) == 3 and len(client.builds(DATASET)) == builds_before
    build_id = client.request_build(DATASET)["build_id"]  # the same rows again would be a second copy on sale
    wait_for(lambda: client.build_status(DATASET, build_id).get("outcome") is not None, "the unchanged build to end")
    unchanged = client.build_status(DATASET, build_id)
    assert (unchanged["outcome"], unchanged["version"]) == ("unchanged", 3), unchanged
    assert client.build(DATASET)["version"] == 3 and len(client.builds(DATASET)) == builds_before
    assert len(client.versions(DATASET)) == 3
    v4 = client.build(DATASET, force=True)
    assert v4["version"] == 4
    v3_now = client.version(DATASET, 3)
    assert v3_now["superseded"] and v3_now["superseded_by"] == 4
    assert "replaced by version 4" in v3_now["superseded_reason"]
    assert not ({alice.address, bob.address} & set(v4["contributor_weights"]))
    pseudonyms = set(_check(v4).column("pseudonym").to_pylist())
    assert not ({pseudonym_of(alice.address), pseudonym_of(bob.address)} & pseudonyms)
    assert v4["rows"] + v4["suppressed_rows"] == 6 * ROWS_EACH
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
    with pytest.raises(ApiError) as unauthorized:
        AnonymizerClient(anon.url, "not-the-operator-token").define(census_definition())
    assert unauthorized.value.status == 401
    assert httpx.post(f"{anon.url}/datasets/{DATASET}/build").status_code == 401
    ok = AnonymizerClient(anon.url, OPERATOR_TOKEN)
    assert ok.validate(census_definition())["valid"] is True
    assert ok.define(census_definition())["created"] is True
    assert ok.define(census_definition())["created"] is False
    changed = census_definition(k=4)
    with pytest.raises(ApiError) as conflict:
        ok.define(changed)
    assert conflict.value.status == 409
    assert ok.define(census_definition(k=4, version=2))["definition_version"] == 2


def test_cli_builds_a_version_with_progress_and_fails_in_one_red_line(
        consent_svc: ServiceProcess, vault_svc: ServiceProcess, launch: Callable[..., ServiceProcess],
        anonymizer_env: Callable[[ServiceProcess], dict[str, str]]) -> None:
    from datacoop.cli import anonymizer as cli

    anon = launch("anonymizer", anonymizer_env(vault_svc))
    AnonymizerClient(anon.url, OPERATOR_TOKEN).define(census_definition())
    _members(consent_svc, vault_svc, 4)
    app = typer.Typer()
    cli.register(app)
    runner = CliRunner()
    env = {"DATACOOP_ANONYMIZER_URL": anon.url, "DATACOOP_ANONYMIZER_OPERATOR_TOKEN": OPERATOR_TOKEN}
    built = runner.invoke(app, ["dataset", "build", DATASET], env=env)
    assert built.exit_code == 0, built.output
    assert "version 1" in built.output and "k=" in built.output
    listed = runner.invoke(app, ["dataset", "list"], env=env)
    assert listed.exit_code == 0 and DATASET in listed.output
    shown = runner.invoke(app, ["dataset", "show", DATASET], env=env)
    assert shown.exit_code == 0 and "sha256" in shown.output
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
    chapter_datasets(SimpleNamespace(stack=stack), console, members=6)
    text = console.export_text()
    assert re.search(r"census-demo version \d+: k=3", text), text
    assert "superseded" in text and "their weight: 0" in text
