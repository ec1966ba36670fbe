"""Defects a new user's walkthrough of the CLI found: each command says what is wrong and what to do, in one
line, names the file or flag at fault, and shows what the services answered. No service runs here: the
clients are stand-ins, and a URL that must never be asked points at a port where nothing listens."""

from __future__ import annotations

import io
import json
import re
import secrets
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eth_account import Account
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from datacoop.cli import app
from datacoop.cli.common import print_table
from datacoop.http import ApiError
from datacoop.keys import public_key_b64
from services.consent.receipts import sign_receipt

NOWHERE = "http://127.0.0.1:9"  # nothing listens: a command that got this far would say "cannot reach"
WIDE = {"COLUMNS": "200"}


pytestmark = pytest.mark.usefixtures("no_stack")  # tests/unit/libs/conftest.py


def _invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={**WIDE, **(env or {})})


def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / "me.key"
    path.write_text(Account.create().key.hex() + "\n")
    return path


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# -- 2: an API key file is checked before it is sent -----------------------------------------------------

def test_a_file_that_holds_no_api_key_is_refused_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    def never(*_: object, **__: object) -> None:
        raise AssertionError("a client was made: the file's content would have gone to the marketplace")

    monkeypatch.setattr("services.marketplace.client.ResearcherClient", never)
    wallet_key = _key_file(tmp_path)
    result = _invoke("orders", "--api-key-file", str(wallet_key), "--market-url", NOWHERE)
    assert result.exit_code == 1, result.output
    assert f"--api-key-file {wallet_key} does not hold a researcher API key" in result.output
    assert "nothing was sent" in result.output and "`datacoop researcher register" in result.output
    assert wallet_key.read_text().strip() not in result.output, "a secret is never echoed"
    from_env = _invoke("orders", "--market-url", NOWHERE, env={"DATACOOP_API_KEY": "0x" + "ab" * 32})
    assert from_env.exit_code == 1 and "DATACOOP_API_KEY does not hold a researcher API key" in from_env.output
    folder = _invoke("orders", "--api-key-file", str(tmp_path), "--market-url", NOWHERE)
    assert folder.exit_code == 1 and f"API key file {tmp_path} is a folder" in folder.output, folder.output


def test_an_api_key_as_the_marketplace_mints_it_is_taken(tmp_path: Path) -> None:
    from datacoop.cli.market import _api_key

    key = "dcr_" + secrets.token_urlsafe(32)  # services/marketplace/api.py
    path = tmp_path / "api.key"
    path.write_text(key + "\n")
    assert _api_key(path) == key


# -- 3: tables keep every column and value ---------------------------------------------------------------

ORDERS = [{"order_id": str(uuid.uuid4()), "dataset_id": "census-demo", "version": 2, "offer": "query",
           "price_units": 1_500_000, "status": "awaiting-payment", "budget": {"remaining": 0.75}},
          {"order_id": str(uuid.uuid4()), "dataset_id": "health-survey", "version": 1, "offer": "download",
           "price_units": 250_000, "status": "paid"}]


class _Researcher:
    def __init__(self, url: str, api_key: str) -> None:
        pass

    def orders(self) -> list[dict[str, Any]]:
        return ORDERS


def test_a_table_in_a_pipe_keeps_every_column_whole_on_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setattr("services.marketplace.client.ResearcherClient", _Researcher)
    api_key = tmp_path / "api.key"
    api_key.write_text("dcr_" + secrets.token_urlsafe(32))
    result = CliRunner().invoke(app, ["orders", "--api-key-file", str(api_key), "--market-url", NOWHERE],
                                env={"COLUMNS": "80"})  # a pipe, as a script reads it
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if ORDERS[0]["order_id"] in line]
    assert len(rows) == 1 and all(v in rows[0] for v in ("census-demo", "1,500,000", "awaiting-payment", "0.75"))
    assert "…" not in result.output


def test_dataset_list_in_a_pipe_shows_the_whole_guarantees(monkeypatch: pytest.MonkeyPatch) -> None:
    version = {"version": 3, "k": 5, "l_diversity": 1.0, "epsilon": 1.0, "rows": 1234, "suppressed_rows": 12,
               "information_loss": 0.1234}

    class Anonymizer:
        def __init__(self, url: str, token: str | None = None) -> None:
            pass

        def catalog(self) -> list[dict[str, Any]]:
            return [{"dataset_id": "census-demo", "purpose": "public-statistics", "categories": ["demographics"],
                     "newest_version": version}]

        def definition_files(self) -> list[dict[str, Any]]:
            return [{"file": "datasets/census-demo.yaml", "outcome": "unchanged", "problems": []}]

    monkeypatch.setattr("datacoop.cli.anonymizer.AnonymizerClient", Anonymizer)
    result = CliRunner().invoke(app, ["dataset", "list", "--anonymizer-url", NOWHERE], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "k=5, l=1, epsilon=1, 1,234 rows, 12 suppressed, information loss 0.1234" in result.output


def _orders_table() -> Table:
    table = Table(title="your orders")
    for col in ("order", "dataset", "v", "offer", "price", "status", "budget left"):
        table.add_column(col)
    for o in ORDERS:
        table.add_row(o["order_id"], o["dataset_id"], str(o["version"]), o["offer"], f"{o['price_units']:,}",
                      o["status"], "0.75")
    return table


@pytest.mark.parametrize("width", [60, 80, 100, 130])
def test_a_table_on_a_narrow_terminal_folds_cells_and_drops_no_column(width: int) -> None:
    out = io.StringIO()
    print_table(_orders_table(), whole=(0, 1, 4), out=Console(file=out, force_terminal=True, width=width,
                                                              color_system=None))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width and "…" not in out.getvalue()
    cells = ["".join(re.split(r"[│┃]", line)[i].strip() for line in lines if line.count("│") == 8)
             for i in range(1, 8)]  # each column's text, its folded pieces joined
    for value in ("census-demo", "health-survey", "1,500,000", "awaiting-payment", "paid", "0.75"):
        assert any(value in cell for cell in cells), (value, out.getvalue())
    if width >= 100:  # room for the ids: each on one line, to copy into the next command
        assert all(any(o["order_id"] in line for line in lines) for o in ORDERS), out.getvalue()


# -- 4, 5: a running stack without the service -------------------------------------------------------

def _stack(stack_file: Path, services: list[str], chain: bool) -> None:
    stack_file.write_text(json.dumps({"services": {n: {"url": NOWHERE, "pid": 1, "log": "x"} for n in services},
                                      "chain": {"url": NOWHERE} if chain else None}))


@pytest.mark.parametrize("args", [["epoch", "show"], ["epoch", "post"]])
def test_settlement_commands_without_settlement_print_one_line(no_stack: Path, args: list[str]) -> None:
    _stack(no_stack, ["consent", "vault", "anonymizer", "jobs"], chain=False)
    result = _invoke(*args)
    assert result.exit_code == 1
    assert result.output.count("error:") == 1 and "error: 1" not in result.output, result.output
    assert "has no settlement service" in result.output


@pytest.mark.parametrize(("args", "service", "option"), [
    (["catalog"], "marketplace", "--market-url"),
    (["orders"], "marketplace", "--market-url"),
    (["buy", "3f2b1c0e-8d4a-4b6e-9f10-2a3b4c5d6e7f"], "marketplace", "--market-url"),
    (["researcher", "register", "--name", "Ada", "--wallet", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"],
     "marketplace", "--market-url"),
    (["dataset", "list"], "anonymizer", "--anonymizer-url"),
    (["job", "status", "some-job"], "jobs", "--jobs-url"),
])
def test_a_stack_without_the_service_says_so_instead_of_start_the_stack(
        no_stack: Path, tmp_path: Path, args: list[str], service: str, option: str) -> None:
    _stack(no_stack, ["consent", "vault"], chain=False)  # `datacoop up --no-chain --services consent,vault`
    api_key = tmp_path / "api.key"
    api_key.write_text("dcr_" + secrets.token_urlsafe(32))
    result = _invoke(*args, env={"DATACOOP_API_KEY": api_key.read_text()})
    assert result.exit_code == 1, result.output
    assert f"the running stack has no {service} service" in result.output, result.output
    assert option in result.output and "or start the stack with `datacoop up`" not in result.output
    if service == "marketplace":
        assert "--no-chain" in result.output, "the reason: it needs the chain"


def test_a_stack_started_with_services_names_that_option(no_stack: Path) -> None:
    _stack(no_stack, ["consent", "vault"], chain=True)
    result = _invoke("dataset", "list")
    assert result.exit_code == 1 and "`datacoop up --services` left it out" in result.output, result.output


# -- 6: version 0 --------------------------------------------------------------------------------------

def test_dataset_show_version_zero_is_refused_not_every_version(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    class Anonymizer:
        def __init__(self, url: str, token: str | None = None) -> None:
            pass

        def definition(self, dataset_id: str) -> dict[str, Any]:
            asked.append("definition")
            return {}

        def versions(self, dataset_id: str) -> list[dict[str, Any]]:
            asked.append("versions")
            return []

        def version(self, dataset_id: str, version: int) -> dict[str, Any]:
            asked.append(f"version {version}")
            raise ApiError(404, {"detail": f"no version {version}"})

    monkeypatch.setattr("datacoop.cli.anonymizer.AnonymizerClient", Anonymizer)
    zero = _invoke("dataset", "show", "census-demo", "--version", "0", "--anonymizer-url", NOWHERE)
    assert zero.exit_code == 2 and "numbered from 1" in zero.output, zero.output
    assert asked == []
    one = _invoke("dataset", "show", "census-demo", "--version", "1", "--anonymizer-url", NOWHERE)
    assert one.exit_code == 2 and asked == ["version 1"], one.output  # no anonymizer at NOWHERE: the URL is wrong


# -- 8: files named, no raw OS errors ---------------------------------------------------------------

def test_a_folder_given_as_a_receipt_is_named(tmp_path: Path) -> None:
    result = _invoke("receipt", "verify", str(tmp_path), "--public-key", "x")
    assert result.exit_code == 1 and f"receipt file {tmp_path} is a folder" in result.output, result.output
    assert "Errno" not in result.output


def test_a_folder_given_as_the_key_file_is_named(tmp_path: Path) -> None:
    records = tmp_path / "steps.csv"
    records.write_text("day,steps\n2026-01-01,5\n")
    result = _invoke("contribute", str(records), "--category", "fitness", "--key-file", str(tmp_path),
                     "--vault-url", NOWHERE)
    assert result.exit_code == 1 and f"key file {tmp_path} is a folder" in result.output, result.output
    assert "Errno" not in result.output


def test_a_key_file_that_cannot_be_written_is_named_not_its_temporary_file() -> None:
    result = _invoke("wallet", "new", "--out", "/proc/datacoop-test.key")
    assert result.exit_code == 1, result.output
    assert "cannot write the key file /proc/datacoop-test.key" in result.output and ".tmp" not in result.output


def test_a_key_file_without_a_hex_key_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("services.worker.main.run", lambda *_: None)
    receipt = tmp_path / "r1.json"
    receipt.write_text('{"record_id": "x"}')
    result = _invoke("worker", "--key-file", str(receipt), "--jobs-url", NOWHERE)
    assert result.exit_code == 2 and f"key file {receipt} does not hold a wallet key" in result.output  # docs/jobs.md
    from_env = _invoke("member", "show", "--consent-url", NOWHERE, env={"DATACOOP_KEY": "not-hex"})
    assert from_env.exit_code == 1 and "DATACOOP_KEY does not hold a wallet key" in from_env.output


# -- 9: a receipt's state ------------------------------------------------------------------------------

def test_a_valid_receipt_of_a_revoked_consent_says_revoked_and_when(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    receipt = sign_receipt({"record_id": "c-1", "data_subject": {"id": "0xabc"}, "state": "revoked",
                            "state_history": [
                                {"state": "active", "at": "2026-01-01T00:00:00+00:00", "reason": "granted"},
                                {"state": "revoked", "at": "2026-02-03T04:05:06+00:00",
                                 "reason": "revoked by the member"}],
                            "expiry": None, "issued_at": "2026-03-01T00:00:00+00:00"}, key)
    path = tmp_path / "r2.json"
    path.write_text(json.dumps(receipt))
    result = _invoke("receipt", "verify", str(path), "--public-key", public_key_b64(key))
    assert result.exit_code == 0, result.output
    line = result.output.replace("\n", " ")
    assert "valid: consent c-1" in line and "revoked at 2026-02-03T04:05:06+00:00" in line, result.output
    assert "2026-03-01" in line, "as of when the receipt was issued"


# -- 10: every problem of a refused upload -----------------------------------------------------------

def test_a_refused_upload_lists_every_problem_the_vault_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Vault:
        def __init__(self, key: str, url: str) -> None:
            pass

        def contribute_body(self, category: str, content: str, fmt: str) -> dict[str, Any]:
            return {}

    errors = [{"row": n, "field": "steps", "message": f"must be >= 0, not -{n}"} for n in range(1, 8)]
    problem = {"detail": "9 problem(s) in 9 row(s) of the fitness upload; nothing was stored — fix them and upload "
                         "again", "errors": errors, "error_count": 9}

    def refuse(client: object, body: bytes) -> None:
        raise ApiError(422, problem)

    monkeypatch.setattr("services.vault.client.VaultClient", Vault)
    monkeypatch.setattr("datacoop.cli.vault._upload", refuse)
    bad = tmp_path / "bad.csv"
    bad.write_text("day,steps\n")
    result = _invoke("contribute", str(bad), "--category", "fitness", "--key-file", str(_key_file(tmp_path)),
                     "--vault-url", NOWHERE)
    assert result.exit_code == 1, result.output
    for n in range(1, 8):
        assert f"bad.csv row {n} steps: must be >= 0, not -{n}" in result.output
    assert "2 more problem(s)" in result.output
    errors = _error_lines(result.output)
    assert len(errors) == 1 and "9 problem(s)" in errors[0] and errors[0].endswith("(HTTP 422)"), errors
    assert "row 1 is the first after the header" in errors[0], "a CSV's rows are records, not file lines"


# -- 11: what the consent service answered ---------------------------------------------------------

class _Member:
    answers: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, key: str, url: str) -> None:
        self.address = Account.from_key(key).address

    def grant(self, purpose: str, categories: list[str], expires_at: object = None,
              consent_id: str | None = None) -> dict[str, Any]:
        return self.answers["grant"]

    def revoke(self, consent_id: str) -> dict[str, Any]:
        return self.answers["revoke"]


def test_a_grant_echoes_the_answer_and_names_overlapping_consents(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(_Member, "answers", {"grant": {
        "consent_id": "new-1", "purpose": "health-research", "categories": ["health"], "state": "active",
        "overlaps": [{"consent_id": "old-7", "purpose": "health-research", "categories": ["health", "fitness"]}]}})
    monkeypatch.setattr("services.consent.client.MemberWallet", _Member)
    key = _key_file(tmp_path)
    result = _invoke("consent", "grant", "--purpose", "health-research", "--categories", "health",
                     "--key-file", str(key), "--consent-url", NOWHERE)
    assert result.exit_code == 0, result.output
    assert "granted: health-research on health (active, until you revoke it)" in result.output, result.output
    assert "note" in result.output and "old-7 (health, fitness)" in result.output
    assert f"`datacoop consent revoke ID --key-file {key}`" in result.output.replace("\n", " "), result.output


def test_a_revoke_names_the_consents_that_still_cover_the_use(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setattr(_Member, "answers", {"revoke": {
        "consent_id": "new-1", "purpose": "health-research", "categories": ["health"], "state": "revoked",
        "still_covered_by": [{"consent_id": "old-7", "purpose": "health-research",
                              "categories": ["health", "fitness"]}]}})
    monkeypatch.setattr("services.consent.client.MemberWallet", _Member)
    key = _key_file(tmp_path)
    result = _invoke("consent", "revoke", "new-1", "--key-file", str(key), "--consent-url", NOWHERE)
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", " ")
    assert "consent new-1 is now revoked" in text
    assert "old-7 (health, fitness)" in text and "all fall within one of them" in text
    assert f"`datacoop consent revoke old-7 --key-file {key}`" in text, result.output


def test_a_hint_to_register_carries_the_key_file_the_command_was_given(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    class Member(_Member):
        def consents(self) -> list[dict[str, Any]]:
            raise ApiError(404, {"detail": "member 0xabc is not registered; register first: `datacoop member "
                                           "register` (POST /members)"})

    monkeypatch.setattr("services.consent.client.MemberWallet", Member)
    monkeypatch.setattr("datacoop.cli.common.expect_service", lambda *args, **kwargs: None)  # it is the service
    key = _key_file(tmp_path)
    result = _invoke("consent", "list", "--key-file", str(key), "--consent-url", NOWHERE)
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and f"`datacoop member register --key-file {key}` (POST /members)" in said, said
    monkeypatch.setenv("DATACOOP_KEY", key.read_text().strip())
    from_env = " ".join(_invoke("consent", "list", "--consent-url", NOWHERE).output.split())
    assert "`datacoop member register` (POST /members)" in from_env, "no file given, none named"


def test_an_erasure_says_what_the_vault_confirmed_and_never_claims_more(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    class Member(_Member):
        def erase(self) -> None:
            pass

    summaries: list[dict[str, Any]] = []

    class Vault:
        def __init__(self, key: str, url: str) -> None:
            pass

        def summary(self) -> dict[str, Any]:
            return summaries.pop(0) if len(summaries) > 1 else summaries[0]

    monkeypatch.setattr("services.consent.client.MemberWallet", Member)
    monkeypatch.setattr("services.vault.client.VaultClient", Vault)
    key = _key_file(tmp_path)
    erase = ["member", "erase", "--yes", "--key-file", str(key), "--consent-url", NOWHERE]

    unnamed = _invoke(*erase)  # no --vault-url, no DATACOOP_VAULT_URL, no stack: nothing to wait on
    said = " ".join(unnamed.output.split())
    assert unnamed.exit_code == 0 and "every consent of yours has ended" in said, unnamed.output
    assert "destroys your data key as soon as it reads the request" in said and "destroyed" not in said, said
    assert f"`datacoop member records --key-file {key}`" in said, said

    summaries[:] = [{"keys_shredded": False}, {"keys_shredded": False}, {"keys_shredded": True}]
    confirmed = _invoke(*erase, "--vault-url", "http://vault.test")
    said = " ".join(confirmed.output.split())
    assert confirmed.exit_code == 0 and "the vault destroyed your data key" in said, said

    summaries[:] = [{"keys_shredded": False}]
    late = _invoke(*erase, "--vault-url", "http://vault.test", "--wait", "0.3")
    said = " ".join(late.output.split())
    assert late.exit_code == 0 and "did not confirm within 0.3 s (it has not read the request yet)" in said, said
    assert "the vault destroyed" not in said


# -- 12: nothing built, nothing on sale, no plot -----------------------------------------------------

def test_a_build_with_nothing_new_names_the_force_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    class Anonymizer:
        def __init__(self, url: str, token: str | None = None) -> None:
            pass

        def request_build(self, dataset_id: str, force: bool) -> dict[str, Any]:
            return {"build_id": "b-1"}

        def build_status(self, dataset_id: str, build_id: str) -> dict[str, Any]:
            return {"outcome": "unchanged", "version": 3, "detail": "build with force"}

    monkeypatch.setattr("datacoop.cli.anonymizer.AnonymizerClient", Anonymizer)
    result = _invoke("dataset", "build", "census-demo", "--token", "t", "--anonymizer-url", NOWHERE)
    assert result.exit_code == 0, result.output
    assert "`datacoop dataset build census-demo --force`" in result.output and "version 3" in result.output


def test_an_empty_catalog_says_nothing_is_on_sale_and_how_a_version_gets_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    monkeypatch.setattr("datacoop.cli.market.httpx.get", lambda url, timeout: httpx.Response(
        200, json={"payment": {}, "versions": []}, request=httpx.Request("GET", url)))
    result = _invoke("catalog", "--market-url", NOWHERE)
    assert result.exit_code == 0, result.output
    assert "nothing is on sale yet" in result.output and "`datacoop dataset build ID`" in result.output
    assert "datacoop catalog" not in result.output, "no empty table"


def test_results_of_an_analysis_without_a_plot_are_shown_with_a_note(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    class Jobs:
        def __init__(self, url: str, api_key: str) -> None:
            pass

        def result(self, job_id: str) -> dict[str, Any]:
            return {"has_plot": False, "provider": "0xprovider", "workers": ["w-1"], "result": {"mean": 41.5}}

        def plot(self, job_id: str) -> bytes:
            raise AssertionError("no plot to fetch")

    monkeypatch.setattr("services.worker.client.ResearcherJobs", Jobs)
    plot = tmp_path / "p.png"
    result = _invoke("job", "results", "j-1", "--plot-out", str(plot), "--jobs-url", NOWHERE,
                     env={"DATACOOP_API_KEY": "dcr_" + secrets.token_urlsafe(32)})
    assert result.exit_code == 0, result.output
    assert "41.5" in result.output and "draws no plot" in result.output and not plot.exists()


# -- README: usage errors are one line too ----------------------------------------------------------

@pytest.mark.parametrize(("args", "said"), [
    (["worker", "--cores", "0"], "--cores"),
    (["up", "--no-such-option"], "no such option: --no-such-option"),
    (["consent", "grant", "--purpose", "health-research"], "missing option '--categories'"),
])
def test_a_usage_error_is_one_red_line_naming_the_commands_help(args: list[str], said: str) -> None:
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error: "), result.output
    assert said in result.output and f"`datacoop {' '.join(a for a in args[:2] if not a.startswith('-'))}" \
        in result.output
