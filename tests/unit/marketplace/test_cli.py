"""The researcher's CLI: an order id that is no UUID, a folder for a file, another service's URL and an order
already paid on chain are each one line saying what is wrong, before anything is sent or approved."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import datacoop.chain
from datacoop.chain import ChainError, TxReverted
from datacoop.cli import app
from datacoop.testing.http import answer_json
from services.marketplace import client as market_client

WIDE = {"COLUMNS": "200", "DATACOOP_API_KEY": "dcr_" + "a" * 43}
OID = "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a001"


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=WIDE)


@pytest.mark.parametrize("args", [["buy", "../researchers/me"], ["query", "../researchers/me", "ok.json"],
                                  ["download", "nope", "--out", "x.parquet"]])
def test_an_order_id_that_is_no_uuid_is_refused_before_anything_is_sent(args: list[str]) -> None:
    result = run(*args, "--market-url", "http://127.0.0.1:9")
    assert result.exit_code == 2 and "is not an order id: an order id is a UUID" in result.output, result.output
    assert "Traceback" not in result.output and "reach" not in result.output


def test_a_folder_given_as_the_query_file_is_called_a_folder(tmp_path: Path) -> None:
    result = run("query", OID, str(tmp_path), "--market-url", "http://127.0.0.1:9")
    assert result.exit_code == 1 and f"query file {tmp_path} is a folder" in result.output, result.output


class _OtherService(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = {"/healthz": {"status": "ok", "service": "vault"}, "/catalog": {"items": []}}.get(self.path)
        body = json.dumps(found or {"detail": "Not Found"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def other_service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtherService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("args", [["catalog"], ["buy", OID], ["orders"]])
def test_another_services_url_is_named_as_not_the_marketplace(other_service: str, args: list[str]) -> None:
    result = run(*args, "--market-url", other_service)
    assert result.exit_code == 2, result.output
    assert f"{other_service} is not the marketplace (it answers as the vault service)" in result.output
    assert "Traceback" not in result.output


class _Chain:
    def __init__(self, *states: tuple[int, int]) -> None:
        self.states = list(states)
        self.market = self
        self.functions = self

    def orders(self, _order_id: bytes) -> _Chain:
        return self

    def call(self) -> tuple[str, int, int, int]:
        status, amount = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return ("0x" + "b" * 40, status, 1, amount)


def _pay(monkeypatch: pytest.MonkeyPatch, chain: _Chain, pay_order: Any) -> str:
    monkeypatch.setattr(datacoop.chain.Contracts, "at", classmethod(lambda cls, *_: chain))
    monkeypatch.setattr(datacoop.chain, "pay_order", pay_order)
    return market_client.pay("http://127.0.0.1:9", "0x" + "1" * 40, "0x" + "2" * 40, "0x" + "3" * 64, OID, 1_000)


def test_buy_reads_the_order_on_chain_and_approves_nothing_when_it_is_paid_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: Any) -> None:
        raise AssertionError("approved and purchased an order already paid on chain")

    with pytest.raises(ChainError, match=r"already paid on chain \(999 units .* short of its price 1,000.*new order"):
        _pay(monkeypatch, _Chain((1, 999)), never)


def test_a_purchase_that_lost_the_race_to_another_says_the_order_is_paid_on_chain(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def raced(*_: Any) -> None:
        raise TxReverted("reverted on chain", (), "tx=0x12")

    with pytest.raises(ChainError, match=r"already paid on chain \(1,000 units .*do not pay again"):
        _pay(monkeypatch, _Chain((0, 0), (1, 1_000)), raced)


def test_a_known_custom_error_is_a_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    def paused(*_: Any) -> None:
        raise TxReverted("EnforcedPause")

    with pytest.raises(ChainError, match="paused by its operator") as info:
        _pay(monkeypatch, _Chain((0, 0)), paused)
    assert "OrderAlreadyPaid" not in str(info.value) and "b'" not in str(info.value)


def _answering(routes: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(_OtherService):
        def do_GET(self) -> None:
            answer_json(self, routes.get(self.path))

    return Handler


@pytest.fixture
def marketplace() -> Iterator[tuple[str, dict[str, Any]]]:
    """A stand-in marketplace answering the GETs in the returned dict (path -> JSON)."""
    routes: dict[str, Any] = {"/healthz": {"status": "ok", "service": "marketplace"}}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _answering(routes))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()


def _listed(order_id: str, status: str, note: str | None = None) -> dict[str, Any]:
    return {"order_id": order_id, "dataset_id": "clinic", "version": 1, "offer": "download", "price_units": 5_000,
            "status": status, **({"note": note} if note else {})}


def test_orders_lists_an_unpaid_order_of_a_superseded_version_as_not_to_be_paid_and_a_refund_as_refunded(
        marketplace: tuple[str, dict[str, Any]]) -> None:
    """GET /orders/{id} and `datacoop buy` say a placed order of a version withdrawn from sale must not be
    paid: the list says so too, with the reason; a refunded order reads `refunded`."""
    url, routes = marketplace
    superseded, refunded, placed = OID, OID[:-1] + "2", OID[:-1] + "3"
    why = f"clinic v1 was superseded (no longer on sale): do not pay order {superseded}"
    routes["/orders"] = [_listed(superseded, "placed", why), _listed(refunded, "refunded", "refunded to 0xb"),
                         _listed(placed, "placed")]
    result = run("orders", "--market-url", url)
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.count("│") > 2}
    assert "placed, do not pay" in rows[superseded] and "refunded" in rows[refunded], result.output
    assert "do not pay" not in rows[placed] and "placed" in rows[placed]
    assert f"{superseded}: {why}" in " ".join(result.output.split())


def test_orders_shows_an_order_paid_short_as_waiting_for_its_refund_before_and_after_it_expires(
        marketplace: tuple[str, dict[str, Any]]) -> None:
    """A payment short of the price opens nothing and can't be topped up: the list says the order is paid short
    and its refund is due, with the reason under the table, placed or expired (not `do not pay`, which is for a
    version that left the sale, nor a bare `expired`, which reads as never paid)."""
    url, routes = marketplace
    placed, expired = OID, OID[:-1] + "4"
    short = [{"amount_units": 4_999, "tx_hash": "0x" + "1" * 64, "reason": "short of the price"}]
    why = "a payment of 4999 units arrived, short of its price 5000: ask the operator to refund it"
    routes["/orders"] = [{**_listed(placed, "placed", why), "short_payments": short},
                         {**_listed(expired, "expired", why), "short_payments": short}]
    result = run("orders", "--market-url", url)
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.count("│") > 2}
    said = " ".join(result.output.split())
    assert "paid short" in said and "do not pay" not in said, result.output
    assert rows[placed].split("│")[6].strip().startswith("placed, paid") and rows[expired].split("│")[6].strip() \
        .startswith("expired, paid"), result.output
    assert f"{placed}: {why}" in said and f"{expired}: {why}" in said


def test_refunds_leaves_out_payments_refunded_already_unless_asked(marketplace: tuple[str, dict[str, Any]]) -> None:
    url, routes = marketplace
    routes["/payments/unmatched"] = [{"order_id": OID, "amount_units": 5_000, "tx_hash": "0x" + "1" * 64,
                                      "reason": "order-expired", "refund_due": False, "refunded": True,
                                      "refunded_at": "2026-01-01T00:00:00Z", "refund_tx_hash": "0x" + "2" * 64}]
    result = run("refunds", "--market-url", url)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "no payment waits for a refund" in said and "or was refunded (1 refunded; `datacoop refunds --all`" in said


def test_refund_against_another_service_as_settlement_says_so_and_sends_nothing(
        marketplace: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The marketplace also serves GET /orders/{id} (and refuses the operator token there): given as
    --settlement-url, it is named as not the settlement service, a usage error, not a token to fix."""
    url, routes = marketplace
    routes["/catalog"] = {"items": [], "payment": {"market": "0x" + "1" * 40, "token": "0x" + "2" * 40}}

    def sent(*_: Any) -> None:
        raise AssertionError("a refund was sent")

    monkeypatch.setattr(market_client, "refund", sent)
    result = CliRunner().invoke(app, ["refund", OID, "--market-url", url, "--settlement-url", url, "--token", "t" * 32],
                                env={**WIDE, "DATACOOP_OPERATOR_KEY": "0x" + "11" * 32})
    assert result.exit_code == 2, result.output
    assert "is not the settlement service (it answers as the marketplace service)" in " ".join(result.output.split())
