"""The marketplace as a process on the real broker and anvil, beside the settlement service: a version
is published as Parquet, a researcher orders, pays with the stablecoin, downloads exactly the version's
rows; members see who bought; access needs a paid order and the right grant; a payment that arrives
after its order expired or its version was superseded opens nothing and is listed to be refunded, and
once the operator refunds it on chain the order reads `refunded` and nothing lists it as owed; query
budgets are spent to the last unit and survive a restart and a rebuild from the log; bad input is
refused plainly."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from eth_account import Account
from typer.testing import CliRunner

from datacoop.chain import order_id_from_uuid, send_receipt
from datacoop.cli import app as datacoop_app
from datacoop.kit.settings import DEV_OPERATOR_TOKEN
from services.marketplace.client import ApiError, ResearcherClient, register_researcher
from services.marketplace.grants import verify_document
from tests.e2e.marketplace_fixtures import (
    ADMIN_KEY,
    BUYER_KEYS,
    FEE_BPS,
    MEMBER_KEYS,
    MEMBERS,
    Stack,
    cli,
    member_wallet,
    stack,
    wait_for,
)

__all__ = ["stack"]


def researcher(s: Stack, buyer_key: str, name: str = "Ada") -> ResearcherClient:
    reg = register_researcher(s.url, name, Account.from_key(buyer_key).address, "Uni")
    return ResearcherClient(s.url, reg["api_key"])


def status_of(err: pytest.ExceptionInfo[ApiError]) -> tuple[int, str]:
    return err.value.status, str(err.value.problem.get("detail"))


def paid_order(s: Stack, client: ResearcherClient, key: str, dataset: str, version: int, offer: str) -> dict[str, Any]:
    o = client.order(dataset, version, offer)
    s.pay(key, o["order_id"], o["price_units"])
    wait_for(lambda: client.get_order(o["order_id"])["status"] == "paid", "the order to turn paid")
    return o


def test_researcher_buys_with_the_stablecoin_downloads_the_rows_and_members_see_the_sale(
        stack: Stack, tmp_path: Path) -> None:
    s = stack
    path, table = s.publish_version("health-survey", 1)
    s.publish_version("health-survey", 2, seed=2)
    key_file, api_key_file = tmp_path / "buyer.key", tmp_path / "api.key"
    key_file.write_text(BUYER_KEYS[0])

    out = cli(s, "researcher", "register", "--name", "Ada", "--key-file", str(key_file), "--save", str(api_key_file))
    assert out.exit_code == 0, out.output
    assert "API key" in out.output and api_key_file.stat().st_mode & 0o777 == 0o600
    saved = api_key_file.read_text()
    again = cli(s, "researcher", "register", "--name", "Bob", "--key-file", str(key_file), "--save", str(api_key_file))
    assert again.exit_code == 1 and "already saved" in again.output, again.output
    assert api_key_file.read_text() == saved, "the key shown once is never overwritten unasked"
    out = cli(s, "catalog")  # not a terminal: 80 columns, where ids and prices must still be whole
    assert out.exit_code == 0 and "health-survey" in out.output and "5,000,000" in out.output, out.output
    out = cli(s, "order", "health-survey@1:download", api_key_file=api_key_file)
    assert out.exit_code == 0, out.output
    order_id = out.output.split()[1].rstrip(":")
    listed = cli(s, "orders", api_key_file=api_key_file)
    assert listed.exit_code == 0 and order_id in listed.output, listed.output
    client = ResearcherClient(s.url, api_key_file.read_text().strip())
    placed = client.get_order(order_id)
    assert (placed["status"], placed["price_units"]) == ("placed", 5_000_000)

    with pytest.raises(ApiError) as err:  # no download without a paid order
        client.grant(order_id)
    assert err.value.status == 402 and "not paid" in status_of(err)[1]

    s.mint(BUYER_KEYS[0], placed["price_units"])
    out = cli(s, "buy", order_id, "--key-file", str(key_file), api_key_file=api_key_file)
    assert out.exit_code == 0, out.output
    s.mine()
    wait_for(lambda: client.get_order(order_id)["status"] == "paid", "the order to turn paid")

    target = tmp_path / "new" / "folder" / "bought.parquet"  # the folders are made
    out = cli(s, "download", order_id, "--out", str(target), api_key_file=api_key_file)
    assert out.exit_code == 0, out.output
    assert pq.read_table(target).equals(table)
    assert target.read_bytes() == path.read_bytes()
    out = cli(s, "download", order_id, "--out", str(target), api_key_file=api_key_file)
    assert out.exit_code == 1 and "already exists" in out.output and "--overwrite" in out.output, out.output
    out = cli(s, "download", order_id, "--out", str(target), "--overwrite", api_key_file=api_key_file)
    assert out.exit_code == 0 and target.read_bytes() == path.read_bytes(), out.output

    settled = httpx.get(f"{s.settlement.url}/orders/{order_id}", timeout=10)
    assert settled.status_code == 401, "who was paid for an order is the operator's to see"
    operator = {"Authorization": f"Bearer {DEV_OPERATOR_TOKEN}"}  # the test stack's development token
    wait_for(lambda: httpx.get(f"{s.settlement.url}/orders/{order_id}", timeout=10, headers=operator).json()
             ["allocation"] is not None, "settlement to allocate the payment")
    alloc = httpx.get(f"{s.settlement.url}/orders/{order_id}", timeout=10, headers=operator).json()["allocation"]
    assert alloc["amount_units"] == 5_000_000 and alloc["fee_units"] == 5_000_000 * FEE_BPS // 10_000
    assert sorted(a.lower() for a in alloc["allocations"]) == sorted(m.lower() for m in MEMBERS)

    member = member_wallet(s, MEMBER_KEYS[0])
    seen = s.get(f"/members/{MEMBERS[0]}/orders", headers=member.read_headers()).json()
    assert [(o["order_id"], o["your_records"]) for o in seen] == [(order_id, 60)]
    anonymous = s.get(f"/members/{MEMBERS[0]}/orders")
    assert anonymous.status_code == 401 and "X-Member-Auth" in anonymous.json()["detail"]
    stranger = member_wallet(s, MEMBER_KEYS[1])  # another member's own signature reads nothing of MEMBERS[0]'s
    assert s.get(f"/members/{MEMBERS[0]}/orders", headers=stranger.read_headers()).status_code == 401
    nobody = Account.create()
    assert s.get(f"/members/{nobody.address}/orders",
                 headers=member_wallet(s, nobody.key.hex()).read_headers()).json() == []
    member_key = tmp_path / "member.key"  # the member's own view from the CLI, signed with the marketplace's domain
    member_key.write_text(MEMBER_KEYS[0])
    mine = CliRunner().invoke(datacoop_app, ["member", "orders", "--key-file", str(member_key), "--market-url", s.url])
    assert mine.exit_code == 0, mine.output
    assert order_id in mine.output and "health-survey" in mine.output and " 60 " in mine.output, mine.output
    member_key.write_text(nobody.key.hex())
    none = CliRunner().invoke(datacoop_app, ["member", "orders", "--key-file", str(member_key), "--market-url", s.url])
    assert none.exit_code == 0 and "no paid order has used your records yet" in none.output, none.output
    receipt = client.receipt(order_id)
    assert verify_document(receipt, s.get("/grant-key").json()["public_key"])
    assert receipt["sha256"] == s.get("/catalog/health-survey/1").json()["sha256"]
    assert [o["order_id"] for o in client.orders()] == [order_id]


def test_downloads_need_the_right_unexpired_grant_of_the_researcher(stack: Stack) -> None:
    s = stack
    s.publish_version("grants-ds", 1)
    s.publish_version("grants-ds", 2, seed=3)
    ada, bob = researcher(s, BUYER_KEYS[0]), researcher(s, BUYER_KEYS[1], "Bob")
    order = paid_order(s, ada, BUYER_KEYS[0], "grants-ds", 1, "download")

    def fetch(client: ResearcherClient, version: int, grant: str | None) -> httpx.Response:
        headers = {"x-access-grant": grant} if grant else {}
        return client.http.get(f"/datasets/grants-ds/versions/{version}/parquet", headers=headers)

    grant = ada.grant(order["order_id"])["grant"]
    assert fetch(ada, 1, grant).status_code == 200
    for client, version, token, why in [
        (ada, 2, grant, "opens grants-ds v1, not grants-ds v2"),
        (bob, 1, grant, "issued to another researcher"),
        (ada, 1, None, "no grant"),
        (ada, 1, grant[:-4] + "AAAA", "does not verify"),
    ]:
        resp = fetch(client, version, token)
        assert resp.status_code == 403, resp.text
        assert why in resp.json()["detail"]
    leaked = ada.grant(order["order_id"])
    assert fetch(ada, 1, leaked["grant"]).status_code == 200
    ada.revoke_grant(order["order_id"], leaked["grant_id"], "link leaked")
    resp = fetch(ada, 1, leaked["grant"])
    assert resp.status_code == 403 and "revoked" in resp.json()["detail"]
    assert fetch(ada, 1, grant).status_code == 200, "revoking one grant leaves the others"
    with pytest.raises(ApiError) as twice:
        ada.revoke_grant(order["order_id"], leaked["grant_id"])
    assert twice.value.status == 409
    issued = ada.grant(order["order_id"], ttl_s=1)  # expiry rounded up to the whole second it signs
    expires = datetime.fromisoformat(issued["expires_at"]).timestamp()
    time.sleep(max(expires - time.time(), 0) + 0.2)
    resp = fetch(ada, 1, issued["grant"])
    assert resp.status_code == 403 and "expired" in resp.json()["detail"]
    with pytest.raises(ApiError) as err:  # someone else's order is not yours to grant
        bob.grant(order["order_id"])
    assert err.value.status == 404


def test_query_budget_stops_exactly_and_survives_restart_and_rebuild(stack: Stack, tmp_path: Path) -> None:
    s = stack
    # 2,000 members with one row each: enough for grouped cells to clear the partition-selection threshold
    s.publish_version("query-ds", 1, rows=2_000, weights={f"0x{i + 1:040x}": 1 for i in range(2_000)})
    ada = researcher(s, BUYER_KEYS[0])
    order = paid_order(s, ada, BUYER_KEYS[0], "query-ds", 1, "query")
    oid = order["order_id"]
    query = {"aggregate": "mean", "column": "income", "bounds": [0, 100_000], "group_by": ["age_band"],
             "filters": [{"column": "sex", "op": "=", "value": "F"}], "epsilon": 0.3}
    answers = [ada.query(oid, query) for _ in range(3)]
    assert [a["budget_remaining"] for a in answers] == pytest.approx([0.7, 0.4, 0.1])
    assert answers[0]["noise"]["mechanism"] == "laplace" and answers[0]["noise"]["sum_scale"] > 0
    assert len(answers[0]["cells"]) == 4
    assert answers[0]["noise"]["partition_selection"]["delta"] == pytest.approx(0.3e-6)
    with pytest.raises(ApiError) as err:
        ada.query(oid, query)
    assert err.value.status == 403 and "has 0.1 left" in status_of(err)[1]
    ada.query(oid, {**query, "epsilon": 0.1})
    with pytest.raises(ApiError) as err:
        ada.query(oid, {"aggregate": "count", "epsilon": 0.000001})
    assert err.value.status == 403

    s.stop_market()
    s.start_market()
    ada.http.base_url = httpx.URL(s.url)
    assert ada.get_order(oid)["budget"] == {"epsilon": 1.0, "spent": 1.0, "remaining": 0.0, "queries": 4}
    with pytest.raises(ApiError):
        ada.query(oid, {"aggregate": "count", "epsilon": 0.01})

    s.stop_market(wipe=True)  # the projection is a cache: rebuilt from the topics
    s.start_market()
    ada.http.base_url = httpx.URL(s.url)
    rebuilt = ada.get_order(oid)
    assert rebuilt["status"] == "paid" and rebuilt["budget"]["remaining"] == 0.0
    assert len(rebuilt["queries"]) == 4

    q_file = tmp_path / "q.json"
    q_file.write_text('{"aggregate": "count", "epsilon": 0.5}')
    api_file = tmp_path / "api.key"
    api_file.write_text(ada.http.headers["authorization"].removeprefix("Bearer "))
    out = cli(s, "query", oid, str(q_file), api_key_file=api_file)
    assert out.exit_code == 1 and "left" in out.output


def test_bad_input_is_refused_with_a_clear_error(stack: Stack, tmp_path: Path) -> None:
    s = stack
    s.publish_version("bad-ds", 1)
    s.publish_version("fleeting", 1)
    ada = researcher(s, BUYER_KEYS[0])
    order = paid_order(s, ada, BUYER_KEYS[0], "bad-ds", 1, "query")
    oid = order["order_id"]
    for body, status, words in [
        ({"aggregate": "count", "epsilon": -0.5}, 422, "epsilon"),
        ({"aggregate": "sum", "column": "income", "epsilon": 0.1}, 422, "bounds"),
        ({"aggregate": "count", "epsilon": 0.1, "sql": "SELECT * FROM orders"}, 422, "sql"),
        ({"aggregate": "count", "group_by": ["zip"], "epsilon": 0.1}, 422, "unknown column 'zip'"),
        ({"aggregate": "count", "group_by": ['sex" --'], "epsilon": 0.1}, 422, "group_by"),
        ({"aggregate": "count", "group_by": ["pseudonym"], "epsilon": 0.1}, 422, "allowed: age_band, sex"),
        ({"aggregate": "count", "epsilon": 5.0}, 403, "left"),
    ]:
        resp = ada.http.post(f"/orders/{oid}/queries", json=body)
        assert resp.status_code == status, (body, resp.text)
        assert words in resp.json()["detail"], resp.json()
    assert ada.get_order(oid)["budget"]["spent"] == 0.0, "refused queries spend nothing"

    assert ada.http.post("/orders", json={"dataset_id": "nope-ds", "version": 1, "offer": "download"}).status_code \
        == 404
    assert ada.http.post("/orders", json={"dataset_id": "bad-ds", "version": 1, "offer": "rent"}).status_code == 422
    assert httpx.get(f"{s.url}/orders", timeout=10).status_code == 401

    key_file, api_file = tmp_path / "k", tmp_path / "a"
    key_file.write_text(BUYER_KEYS[0])
    api_file.write_text(ada.http.headers["authorization"].removeprefix("Bearer "))
    unknown = "00000000-0000-4000-8000-000000000000"
    out = cli(s, "buy", unknown, "--key-file", str(key_file), api_key_file=api_file)
    assert out.exit_code == 1 and "no order" in out.output
    s.pay(BUYER_KEYS[1], unknown, 1_000)  # any wallet can call the contract: the payment opens nothing
    wait_for(lambda: any(p["order_id"] == unknown and p["reason"] == "unknown order"
                         for p in s.get("/payments/unmatched").json()), "the stray payment to be listed")

    fleeting = ada.order("fleeting", 1, "download")
    wait_for(lambda: ada.get_order(fleeting["order_id"])["status"] == "expired", "the unpaid order to expire")
    out = cli(s, "buy", fleeting["order_id"], "--key-file", str(key_file), api_key_file=api_file)
    assert out.exit_code == 1 and "expired" in out.output


def test_compute_is_not_sold_on_a_version_too_small_for_any_analysis(stack: Stack, tmp_path: Path) -> None:
    """3 rows, fewer than the 10 any job result must rest on: the jobs service would refuse every job, so the
    catalog lists no compute offer and `datacoop order` is refused, saying why and what to order instead."""
    s = stack
    s.publish_version("tiny-ds", 1, rows=3, weights={m: 1 for m in MEMBERS[:3]})
    listed = s.get("/catalog/tiny-ds/1").json()
    assert [o["offer"] for o in listed["offers"]] == ["download", "query"], listed
    shown = " ".join(cli(s, "catalog").output.split())
    assert "tiny-ds v1: compute is not sold on this version: it has 3 rows, fewer than the 10" in shown, shown
    ada = researcher(s, BUYER_KEYS[0])
    api_file = tmp_path / "api.key"
    api_file.write_text(ada.http.headers["authorization"].removeprefix("Bearer "))
    out = cli(s, "order", "tiny-ds@1:compute", api_key_file=api_file)
    assert out.exit_code == 1, out.output
    said = " ".join(out.output.split())
    assert "3 rows, fewer than the 10" in said and "order download or query on it instead" in said, said
    assert ada.orders() == [], "nothing was written"
    placed = ada.order("tiny-ds", 1, "query")  # still sold, and it says what grouping gives on 3 rows
    assert "the version has 3 rows in all" in placed["offer_note"] and "note" not in placed


def test_a_payment_after_expiry_or_supersession_opens_nothing_and_is_listed_for_refund(
        stack: Stack, tmp_path: Path) -> None:
    s = stack
    s.publish_version("refund-ds", 1)
    s.publish_version("lapsing", 1)
    ada = researcher(s, BUYER_KEYS[0])
    sold = paid_order(s, ada, BUYER_KEYS[0], "refund-ds", 1, "download")  # paid before the supersession
    late = ada.order("refund-ds", 1, "download")
    lapsed = ada.order("lapsing", 1, "download")
    wait_for(lambda: ada.get_order(lapsed["order_id"])["status"] == "expired", "the unpaid order to expire")
    s.supersede("refund-ds", 1)
    assert "do not pay" in ada.get_order(late["order_id"])["note"]
    s.pay(BUYER_KEYS[0], late["order_id"], late["price_units"])
    s.pay(BUYER_KEYS[0], lapsed["order_id"], lapsed["price_units"])

    def refused(order_id: str, reason: str, words: str) -> None:
        o = ada.get_order(order_id)
        assert o["status"] == "refund-due" and o["paid_at"] is None, o
        [p] = o["refused_payments"]
        assert p["reason"] == reason and p["refund_due"] and words in o["note"] and "refunded" in o["note"]
        with pytest.raises(ApiError) as err:
            ada.grant(order_id)
        assert err.value.status == 402 and "refunded" in status_of(err)[1]

    for order_id, reason, words in ((late["order_id"], "version-superseded", "refund-ds v1 was superseded"),
                                    (lapsed["order_id"], "order-expired", "expired")):
        wait_for(lambda oid=order_id: ada.get_order(oid)["status"] == "refund-due", "the payment to be refused")
        refused(order_id, reason, words)
    listed = {p["order_id"]: p for p in s.get("/payments/unmatched").json()}
    assert listed[late["order_id"]]["refund_due"] and listed[lapsed["order_id"]]["reason"] == "order-expired"
    assert ada.grant(sold["order_id"])["grant"], "a version already sold stays with its buyer"
    assert sorted(o["status"] for o in ada.orders() if o["dataset_id"] in ("refund-ds", "lapsing")) == \
        ["paid", "refund-due", "refund-due"], "`datacoop orders` lists this status"

    # the operator's side: `datacoop refunds` lists them with the contract's word, `datacoop refund` pays back
    shown = cli(s, "refunds")
    assert shown.exit_code == 0 and late["order_id"] in shown.output and "refundable" in shown.output, shown.output
    buyer_key = tmp_path / "buyer.key"
    buyer_key.write_text(BUYER_KEYS[0])
    not_operator = cli(s, "refund", late["order_id"], "--key-file", str(buyer_key))
    assert not_operator.exit_code == 1 and "does not hold OPERATOR_ROLE" in not_operator.output, not_operator.output
    operator = {"DATACOOP_OPERATOR_KEY": s.chain_env["DATACOOP_OPERATOR_KEY"]}
    buyer = Account.from_key(BUYER_KEYS[0]).address
    balance = s.contracts.stablecoin.functions.balanceOf(buyer).call
    before = balance()
    done = cli(s, "refund", late["order_id"], env=operator)
    assert done.exit_code == 0, done.output
    assert f"{late['price_units']:,} units back to {buyer}" in done.output
    assert balance() == before + late["price_units"]
    again = cli(s, "refund", late["order_id"], env=operator)
    assert again.exit_code == 1 and "refunded already" in again.output, again.output
    nothing = cli(s, "refund", "00000000-0000-4000-8000-00000000beef", env=operator)
    assert nothing.exit_code == 1 and "no payment" in nothing.output, nothing.output
    settled_view = lambda: s.settlement_get(f"/orders/{sold['order_id']}")  # noqa: E731
    wait_for(lambda: settled_view().get("allocation") is not None, "settlement to allocate the sold order")
    before = balance()
    allocated = cli(s, "refund", sold["order_id"], env=operator)
    assert allocated.exit_code == 1 and "settlement allocated order" in allocated.output, allocated.output
    assert "refunded-after-allocation" in allocated.output and balance() == before, "nothing was sent"
    s.mine()  # one confirmation of the refund
    after = cli(s, "refunds", "--all").output
    assert "refunded" in after.split(late["order_id"])[1].split("\n")[0], after
    wait_for(lambda: ada.get_order(late["order_id"])["status"] == "refunded", "the refund to reach the order")

    s.stop_market(wipe=True)  # rebuilt from the topics: the same decisions, none taken twice
    s.start_market()
    ada.http.base_url = httpx.URL(s.url)
    assert ada.get_order(late["order_id"])["status"] == "refunded"
    assert ada.get_order(late["order_id"])["refused_payments"][0]["reason"] == "version-superseded"
    refused(lapsed["order_id"], "order-expired", "expired")
    assert ada.get_order(sold["order_id"])["status"] == "paid"


def test_a_refused_payment_refunded_on_chain_reads_refunded_and_is_owed_nowhere(stack: Stack) -> None:
    """The operator's `refund(orderId)` lands on the topics (settlement's PaymentRefunded from the contract's
    OrderRefunded log): the order reads `refunded` with the refund's tx, `GET /payments/unmatched` and
    settlement's `GET /payments/waiting` no longer hold it as owed, and a rebuild from the log agrees."""
    s = stack
    s.publish_version("refunding", 1)
    bea = researcher(s, BUYER_KEYS[1], name="Bea")
    placed = bea.order("refunding", 1, "download")
    oid = placed["order_id"]
    wait_for(lambda: bea.get_order(oid)["status"] == "expired", "the unpaid order to expire")
    s.pay(BUYER_KEYS[1], oid, placed["price_units"])
    wait_for(lambda: bea.get_order(oid)["status"] == "refund-due", "the late payment to be refused")
    waiting = f"{s.settlement.url}/payments/waiting"
    wait_for(lambda: any(p["order_id"] == oid for p in httpx.get(waiting, timeout=10).json()),
             "settlement to hold the refused payment")
    assert next(p for p in s.get("/payments/unmatched").json() if p["order_id"] == oid)["refund_due"]

    receipt = send_receipt(s.contracts.w3, s.contracts.market.functions.refund(order_id_from_uuid(uuid.UUID(oid))),
                           s.chain_env["DATACOOP_OPERATOR_KEY"])
    refund_tx = "0x" + bytes(receipt["transactionHash"]).hex()
    s.mine()  # one confirmation
    wait_for(lambda: bea.get_order(oid)["status"] == "refunded", "the refund to reach the order")

    def reads_refunded() -> None:
        o = bea.get_order(oid)
        assert o["status"] == "refunded" and o["refund_tx_hash"] == refund_tx and o["refunded_at"], o
        assert o["refunded_units"] == placed["price_units"] and "was refunded" in o["note"], o
        [p] = o["refused_payments"]
        assert p["reason"] == "order-expired" and p["refund_due"] is False and p["refund_tx_hash"] == refund_tx
        [listed] = [p for p in s.get("/payments/unmatched").json() if p["order_id"] == oid]
        assert (listed["refund_due"], listed["refunded"], listed["refund_tx_hash"]) == (False, True, refund_tx)
        assert [o["status"] for o in bea.orders() if o["order_id"] == oid] == ["refunded"]
        with pytest.raises(ApiError) as err:
            bea.grant(oid)
        assert err.value.status == 402 and refund_tx in status_of(err)[1]

    reads_refunded()
    wait_for(lambda: all(p["order_id"] != oid for p in httpx.get(waiting, timeout=10).json()),
             "settlement to stop holding the refunded payment")
    assert oid not in cli(s, "refunds").output
    assert oid in cli(s, "refunds", "--all").output

    s.stop_market(wipe=True)  # rebuilt from the topics
    s.start_market()
    bea.http.base_url = httpx.URL(s.url)
    reads_refunded()


def test_the_demo_chapter_buys_downloads_and_spends_the_budget(stack: Stack) -> None:
    from rich.console import Console

    from services.marketplace.demo import publish_sample_version, researcher_buys

    s = stack
    publish_sample_version(s.broker.bootstrap, f"{s.prefix}.", s.root / "objects", MEMBERS[:3])
    wait_for(lambda: any(v["dataset_id"] == "demo-survey" for v in s.get("/catalog").json()["versions"]),
             "the sample version listed")
    summary = researcher_buys(s.url, s.chain.url, BUYER_KEYS[1], Console(record=True), minter_key=ADMIN_KEY,
                              dataset_id="demo-survey", member=member_wallet(s, MEMBER_KEYS[0]),
                              operator_key=s.chain_env["DATACOOP_OPERATOR_KEY"])
    assert summary["rows"] == 120 and "left" in summary["refused"]
    assert {o["offer"] for o in summary["member_sales"]} == {"download", "query"}, "the refunded order sold nothing"
    assert summary["refunded"]["status"] == "refunded" and summary["refunded"]["units"] > 0, summary["refunded"]
    unmatched = {p["order_id"]: p for p in s.get("/payments/unmatched").json()}
    assert unmatched[summary["refunded"]["order_id"]]["refunded"] is True
