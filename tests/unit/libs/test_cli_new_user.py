"""A new user's walkthrough of the CLI: a service that is down or hangs, another service's URL, usage errors
and their exit status, --debug after the command, files that are not UTF-8, API key words, files written over,
and the help's own words. The services here are small real HTTP servers that answer as a datacoop service does
(GET /healthz names it; anything it does not serve is a 404), so the CLI's requests really go out."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from eth_account import Account
from typer.testing import CliRunner

from datacoop.cli import app
from datacoop.testing.http import answer_json

NOWHERE = "http://127.0.0.1:9"  # nothing listens
OID = str(uuid.uuid4())
ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
API_KEY = "dcr_" + secrets.token_urlsafe(32)
DOMAIN = {"domain": {"name": "datacoop", "version": "1", "chainId": 31337}}  # GET /eip712 of consent, jobs, vault


pytestmark = pytest.mark.usefixtures("no_stack")  # tests/unit/libs/conftest.py


def _invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def _one_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


class _Service(ThreadingHTTPServer):
    name = ""
    routes: ClassVar[dict[str, Any]] = {}


class _Answers(BaseHTTPRequestHandler):
    server: _Service

    def _answer(self) -> None:
        path = self.path.split("?")[0]
        answer_json(self, {"/healthz": {"status": "ok", "service": self.server.name}, **self.server.routes}.get(path))

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self._answer()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(name, routes) -> the URL of a server answering GET /healthz as the service `name`, and `routes`."""
    servers: list[_Service] = []

    def start(name: str, routes: dict[str, Any] | None = None) -> str:
        server = _Service(("127.0.0.1", 0), _Answers)
        server.name, server.routes = name, routes or {}
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / "me.key"
    path.write_text(Account.create().key.hex() + "\n")
    return path


# -- 1: the marketplace down, or hanging ----------------------------------------------------------------------

MARKET_COMMANDS = [["catalog"], ["orders"], ["order", "census-demo:query"], ["buy", OID],
                   ["download", OID, "--out", "{tmp}/d.parquet"], ["query", OID, "{tmp}/q.json"],
                   ["researcher", "register", "--name", "R", "--wallet", ADDRESS, "--save", "{tmp}/r.key"]]


@pytest.mark.parametrize("args", MARKET_COMMANDS, ids=lambda a: a[0] if a[0] != "researcher" else "register")
def test_a_marketplace_that_is_down_is_named_with_its_url_and_what_to_do(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "q.json").write_text('{"aggregate": "count"}')
    result = _invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args], "--market-url", NOWHERE,
                     env={"DATACOOP_API_KEY": API_KEY})
    assert result.exit_code == 1, result.output
    line = _one_line(result.output)
    assert f"cannot reach the marketplace at {NOWHERE} (" in line and "`datacoop up`" in line, line
    assert "--market-url" in line and "Traceback" not in result.output


@pytest.fixture
def hanging() -> Iterator[str]:
    """A URL whose server takes connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_a_marketplace_that_hangs_is_named_with_its_url_and_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                                       hanging: str) -> None:
    from services.marketplace.client import ResearcherClient

    monkeypatch.setattr("datacoop.cli.market._client", lambda url, _key: ResearcherClient(
        url, API_KEY, http=httpx.Client(base_url=url, timeout=0.5)))  # the client's own waits 60 s
    result = _invoke("orders", "--market-url", hanging)
    assert result.exit_code == 1, result.output
    line = _one_line(result.output)
    assert f"the marketplace at {hanging} did not answer in time" in line and "--market-url" in line, line


# -- 2: another service's URL -------------------------------------------------------------------------------

WRONG_URLS = [
    ("settlement", "consent", ["epoch", "show", "--settlement-url", "{url}"]),
    ("settlement", "consent", ["payouts", ADDRESS, "--settlement-url", "{url}"]),
    ("anonymizer", "consent", ["dataset", "list", "--anonymizer-url", "{url}"]),
    ("anonymizer", "consent", ["dataset", "show", "census-demo", "--anonymizer-url", "{url}"]),
    ("jobs", "consent", ["job", "status", "x", "--jobs-url", "{url}"]),
    ("jobs", "marketplace", ["job", "submit", OID, "describe", "--jobs-url", "{url}"]),
    ("jobs", "consent", ["job", "analyses", "--jobs-url", "{url}"]),
    ("jobs", "consent", ["worker", "--key-file", "{key}", "--jobs-url", "{url}"]),
    ("consent", "marketplace", ["member", "show", "--key-file", "{key}", "--consent-url", "{url}"]),
    ("consent", "vault", ["consent", "list", "--key-file", "{key}", "--consent-url", "{url}"]),
    ("consent", "marketplace", ["receipt", "verify", "{receipt}", "--consent-url", "{url}"]),
    ("marketplace", "settlement", ["orders", "--market-url", "{url}"]),
]


@pytest.mark.parametrize(("wanted", "there", "args"), WRONG_URLS, ids=[" ".join(a[:2]) for _, _, a in WRONG_URLS])
def test_another_services_url_is_named_as_such(monkeypatch: pytest.MonkeyPatch, serve: Any, tmp_path: Path,
                                               wanted: str, there: str, args: list[str]) -> None:
    monkeypatch.setattr("services.worker.worker.Worker.hardware_body", lambda self: {"cpu_cores": 1})
    monkeypatch.setattr("datacoop.kit.logs.configure", lambda *_: None)  # the worker's: no handler on our streams
    monkeypatch.setattr("signal.signal", lambda *_: None)  # nor its SIGINT/SIGTERM handlers in this process
    url = serve(there, {"/eip712": DOMAIN} if there in ("consent", "jobs", "vault") else {})
    receipt = tmp_path / "r1.json"
    receipt.write_text('{"record_id": "c-1"}')
    filled = [a.format(url=url, key=_key_file(tmp_path), receipt=receipt) for a in args]
    result = _invoke(*filled, env={"DATACOOP_API_KEY": API_KEY})
    assert result.exit_code != 0, result.output
    line = _one_line(result.output)
    called = {"marketplace": "the marketplace", "anonymizer": "the anonymizer"}.get(wanted, f"the {wanted} service")
    assert f"{url} is not {called} (it answers as the {there} service)" in line, line
    assert "no epoch yet" not in result.output and "Not Found" not in line
    assert result.exit_code == 2, "another service's URL is an option's value the command can't use: a usage error"


def test_the_right_services_own_404_is_passed_on(serve: Any) -> None:
    url = serve("settlement")  # GET /epochs/latest: 404, as the settlement says before its first epoch
    result = _invoke("epoch", "show", "--settlement-url", url)
    assert result.exit_code == 0 and "no epoch yet" in result.output, result.output


# -- 3: usage errors exit 2 ----------------------------------------------------------------------------------

def test_usage_errors_exit_2_and_failures_1(tmp_path: Path) -> None:
    records = tmp_path / "r.csv"
    records.write_text("age\n30\n")
    key = _key_file(tmp_path)
    assert _invoke("contribute", str(records), "--category", "fitness", "--format", "xml", "--key-file", str(key),
                   "--vault-url", NOWHERE).exit_code == 2
    missing = _invoke("member", "show", "--key-file", str(tmp_path / "none.key"), "--consent-url", NOWHERE)
    assert missing.exit_code == 2 and "does not exist" in missing.output, missing.output
    assert _invoke("worker", "--key-file", str(key), "--jobs-url", "localhost:8106").exit_code == 2
    assert _invoke("contribute", str(tmp_path / "none.csv"), "--category", "fitness").exit_code == 2
    down = _invoke("member", "show", "--key-file", str(key), "--consent-url", NOWHERE)
    assert down.exit_code == 1, "a service that is down is a failure of the command, not of its usage"
    nope = _invoke("up", "--services", "nope")
    assert nope.exit_code == 2 and "unknown service(s) nope; choose from consent" in nope.output, nope.output


# -- 4: --debug after the command ----------------------------------------------------------------------------

def test_debug_after_the_command_says_where_it_goes() -> None:
    result = _invoke("orders", "--debug")
    assert result.exit_code == 2
    assert "--debug goes before the command" in _one_line(result.output) and "datacoop --debug orders" in result.output
    assert "before the command" in _invoke("--help").output


# -- 5: files that are not UTF-8 -----------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "said"), [
    ("age,city\n30,Montr\xe9al\n".encode("latin-1"), "byte 0xe9 on line 2, column 9 is not UTF-8"),
    ("age,city\n30,x\n".encode("utf-16"), "is UTF-16 text"),
    (b"PK\x03\x04\x00\x00\xff\xfe\x00binary", "is a binary file"),
])
def test_a_file_that_is_not_utf8_says_where_and_how_to_convert(tmp_path: Path, content: bytes, said: str) -> None:
    records = tmp_path / "records.csv"
    records.write_bytes(content)
    result = _invoke("contribute", str(records), "--category", "fitness", "--key-file", str(_key_file(tmp_path)),
                     "--vault-url", NOWHERE)
    assert result.exit_code == 1
    line = _one_line(result.output)
    assert said in line and str(records) in line, line
    assert "codec can't decode" not in line and "position" not in line
    if "UTF-16" in said or "0xe9" in said:
        assert "iconv" in line and "UTF-8" in line


# -- 6: API key words ----------------------------------------------------------------------------------------

def test_an_api_key_of_the_wrong_length_is_told_the_length_rule() -> None:
    result = _invoke("orders", "--market-url", NOWHERE, env={"DATACOOP_API_KEY": "dcr_wrong"})
    line = _one_line(result.output)
    assert "16 to 128" in line and "5 character(s) after dcr_" in line, line
    assert "dcr_wrong" not in line, "a secret is never echoed"


def test_no_api_key_names_the_file_option_first() -> None:
    line = _one_line(_invoke("orders", "--market-url", NOWHERE).output)
    assert line.index("--api-key-file FILE") < line.index("DATACOOP_API_KEY") < line.index("register with")


# -- 7: files named by the user are not replaced silently ----------------------------------------------------

def test_a_receipt_is_not_written_over_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "r1.json"
    out.write_text("mine")
    result = _invoke("consent", "receipt", "c-1", "--out", str(out), "--key-file", str(_key_file(tmp_path)),
                     "--consent-url", NOWHERE)
    assert result.exit_code == 1 and "--overwrite" in _one_line(result.output) and out.read_text() == "mine"


def test_a_plot_is_not_written_over_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "plot.png"
    out.write_text("mine")
    result = _invoke("job", "results", "j-1", "--plot-out", str(out), "--jobs-url", NOWHERE,
                     env={"DATACOOP_API_KEY": API_KEY})
    assert result.exit_code == 1 and "--overwrite" in _one_line(result.output) and out.read_text() == "mine"


# -- 8: the help's words, tables in a pipe, empty lists, decimal ETH ------------------------------------------

def test_help_shows_no_type_after_flags_and_arguments_in_capitals() -> None:
    root = _invoke("--help").output
    query = _invoke("query", "--help").output
    assert "<bool>" not in root and "<bool>" not in query
    assert "query [OPTIONS] ORDER QUERY_FILE" in query and "{order_id}" not in query
    assert "missing argument 'ORDER'" in _invoke("query").output


CATALOG = {"payment": {}, "versions": [
    {"dataset_id": f"census-{i}", "purpose": "public-statistics", "version": 1, "status": "current", "rows": 100,
     "guarantees": {"k": 5, "l_diversity": 2.0, "epsilon": 1.0},
     "offers": [{"offer": "download", "price_units": 1_000_000}]} for i in range(2)]}


def test_the_catalog_in_a_pipe_is_one_line_a_row(serve: Any) -> None:
    result = _invoke("catalog", "--market-url", serve("marketplace", {"/catalog": CATALOG}))
    assert result.exit_code == 0, result.output
    for v in CATALOG["versions"]:
        rows = [line for line in result.output.splitlines() if v["dataset_id"] in line]
        assert len(rows) == 1 and "public-statistics" in rows[0] and "1,000,000" in rows[0], result.output


def test_the_catalog_lists_what_is_on_sale_and_all_versions_with_all(serve: Any) -> None:
    """It listed every superseded version too (36 rows around 2 on sale after members joined one by one)."""
    old = {**CATALOG["versions"][0], "dataset_id": "census-old", "status": "superseded", "offers": []}
    url = serve("marketplace", {"/catalog": {**CATALOG, "versions": [old, *CATALOG["versions"]]}})
    on_sale = _invoke("catalog", "--market-url", url)
    assert on_sale.exit_code == 0 and "census-0" in on_sale.output and "census-old" not in on_sale.output
    assert "census-old" in _invoke("catalog", "--all", "--market-url", url).output
    none = _invoke("catalog", "--market-url", serve("marketplace", {"/catalog": {**CATALOG, "versions": [old]}}))
    assert "no version is on sale now (1 superseded: `datacoop catalog --all` lists them)" in none.output


def test_dlq_without_a_broker_is_one_line() -> None:
    """aiokafka's own connection error line and 'Unclosed AIOKafkaConsumer' came around the error before."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _invoke("dlq", "--bootstrap", f"127.0.0.1:{port}")
    assert result.exit_code == 1 and f"no Kafka broker answers at 127.0.0.1:{port}" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Unclosed" not in result.output, result.output


def test_no_orders_is_a_sentence(serve: Any) -> None:
    result = _invoke("orders", "--market-url", serve("marketplace", {"/orders": []}),
                     env={"DATACOOP_API_KEY": API_KEY})
    assert result.exit_code == 0 and "no orders yet" in result.output and "datacoop order" in result.output


@pytest.mark.parametrize(("eth", "wei"), [("0.01", 10**16), ("1", 10**18), ("0.000000000000000001", 1)])
def test_wallet_fund_takes_decimal_eth_exactly(monkeypatch: pytest.MonkeyPatch, eth: str, wei: int) -> None:
    funded: dict[str, int] = {}

    def fund_local(rpc: str, token: str, to: str, eth_wei: int, units: int, admin_key: str) -> dict[str, int]:
        funded["eth_wei"] = eth_wei
        return {"eth_wei": eth_wei, "units": units}

    monkeypatch.setattr("datacoop.chain.fund_local", fund_local)
    result = _invoke("wallet", "fund", "--address", ADDRESS, "--eth", eth, "--rpc", NOWHERE, "--token", ADDRESS)
    assert result.exit_code == 0 and funded == {"eth_wei": wei}, result.output


def test_wallet_fund_refuses_more_than_18_decimals() -> None:
    result = _invoke("wallet", "fund", "--address", ADDRESS, "--eth", "0.0000000000000000001", "--rpc", NOWHERE,
                     "--token", ADDRESS)
    assert result.exit_code == 2 and "more than 18 decimals" in _one_line(result.output)


# -- 9: the analyses a job may run ---------------------------------------------------------------------------

def test_job_analyses_lists_each_parameter_with_type_requirement_and_default(serve: Any) -> None:
    from services.worker.analytics.catalog import CATALOG as ANALYSES

    schemas = {name: a.params.model_json_schema() for name, a in sorted(ANALYSES.items())}
    result = _invoke("job", "analyses", "--jobs-url", serve("jobs", {"/analyses": schemas}))
    assert result.exit_code == 0, result.output
    rows = {tuple(line.split()[:2]): line for line in result.output.splitlines() if line.split()[:1] in
            [[name] for name in schemas]}
    assert "integer or list of number" in rows[("histogram", "bins")] and "optional" in rows[("histogram", "bins")]
    assert rows[("histogram", "bins")].rstrip().endswith("30")
    assert "required" in rows[("histogram", "column")] and "string" in rows[("histogram", "column")]
    assert "pearson|spearman" in rows[("correlation", "method")]
    assert "[number, number] or null" in rows[("histogram", "range")], "brackets are text, not rich markup"
    assert {name for name, _ in rows} == set(schemas)


def test_a_malformed_public_key_is_the_flags_fault_not_the_receipts(tmp_path: Path) -> None:
    """It said "receipt NOT valid: the public key given is not an Ed25519 public key", exit 1."""
    receipt = tmp_path / "r.json"
    receipt.write_text('{"record_id": "c-1", "proof": {"public_key": "x", "signature": "y"}}')
    result = _invoke("receipt", "verify", str(receipt), "--public-key", "abc")
    assert result.exit_code == 2 and "--public-key 'abc' is not an Ed25519 public key" in result.output, result.output
    assert "NOT valid" not in result.output
    missing = _invoke("receipt", "verify", str(tmp_path / "none.json"), "--public-key", "abc")
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_an_erased_member_without_uploads_is_not_told_to_contribute(serve: Any, tmp_path: Path) -> None:
    key = tmp_path / "me.key"
    key.write_text("11" * 32)
    url = serve("vault", {"/eip712": DOMAIN, f"/members/{_address_of(key)}/records": {
        "member": _address_of(key), "uploads": [], "erased": True, "keys_shredded": True}})
    result = _invoke("member", "records", "--key-file", str(key), "--vault-url", url)
    assert result.exit_code == 0, result.output
    assert "asked to be forgotten" in result.output and "no uploads yet" not in result.output, result.output


def _address_of(key: Path) -> str:
    from eth_account import Account

    return str(Account.from_key(key.read_text().strip()).address)


def test_a_receipt_that_repeats_a_key_is_not_valid_whatever_its_signature(tmp_path: Path) -> None:
    """Python keeps a repeated key's last value: a value put before the signed one read as VALID, while a reader
    keeping the first (or a person) saw the forged one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from datacoop.keys import public_key_b64
    from services.consent.receipts import sign_receipt

    coop = Ed25519PrivateKey.generate()
    signed = json.dumps(sign_receipt({"record_id": "c-1", "state": "revoked"}, coop))
    receipt = tmp_path / "r.json"
    receipt.write_text(signed)
    valid = _invoke("receipt", "verify", str(receipt), "--public-key", public_key_b64(coop))
    assert valid.exit_code == 0 and "valid" in valid.output, valid.output
    receipt.write_text('{"state": "active", ' + signed.removeprefix("{"))
    forged = _invoke("receipt", "verify", str(receipt), "--public-key", public_key_b64(coop))
    said = " ".join(forged.output.split())
    assert forged.exit_code == 1 and "NOT valid: key 'state' appears twice in one object" in said, said


def test_the_market_url_variable_named_after_the_option_is_not_ignored_in_silence(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--market-url invites DATACOOP_MARKET_URL; it is DATACOOP_MARKETPLACE_URL, and the guess was ignored."""
    monkeypatch.delenv("DATACOOP_MARKETPLACE_URL", raising=False)
    monkeypatch.setenv("DATACOOP_MARKET_URL", "http://127.0.0.1:8105")
    result = _invoke("catalog")
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "DATACOOP_MARKET_URL is set, but the marketplace's URL is read from DATACOOP_MARKETPLACE_URL" in said


@pytest.mark.parametrize("command", ["show", "build"])
def test_a_dataset_id_that_cannot_be_one_is_named_before_asking(command: str) -> None:
    """`dataset show adult_census` passed the anonymizer's raw `path.dataset_id: String should match pattern ...`."""
    result = _invoke("dataset", command, "adult_census")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "'adult_census' is not a dataset id" in said and "pattern" not in said, said


def test_dlq_with_a_bootstrap_that_is_not_host_port_is_a_usage_error() -> None:
    result = _invoke("dlq", "--bootstrap", "garbage")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "--bootstrap: 'garbage' is not host:port" in said, said
