"""The settlement service as a process on the real broker and a real anvil: payments seen on chain,
orders split, one epoch posted, everyone claims to the unit; and SIGKILL at every step changes none
of that."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from eth_account import Account
from typer.testing import CliRunner

from datacoop.chain import order_id_from_uuid, root_posted_log, send_receipt
from datacoop.cli import app
from datacoop.cli.settlement import claim_with_key
from infra.local import Broker, Chain
from services.settlement.service import CRASH_STEPS
from tests.e2e.settlement_fixtures import (
    COOP_KEY,
    MEMBER_KEYS,
    OPERATOR_TOKEN,
    Settlement,
    buy,
    decide_payment,
    expected_split,
    publish,
    publish_order,
    publish_version,
    settlement,  # noqa: F401  (fixture)
)
from tests.e2e.waiting import wait_for

MEMBERS = [Account.from_key(k).address for k in MEMBER_KEYS]
V1 = dict(zip(MEMBERS, [1, 2, 3, 5, 7], strict=True))
V2 = dict(zip(MEMBERS[:3], [4, 1, 2], strict=True))
ORDERS = [(uuid.uuid4(), 1, 1_000_003), (uuid.uuid4(), 1, 2_500_000), (uuid.uuid4(), 2, 777_777)]


def expected_totals() -> tuple[dict[str, int], int]:
    members = dict.fromkeys(MEMBERS, 0)
    coop = 0
    for _, version, price in ORDERS:
        split, coop_units = expected_split(price, V1 if version == 1 else V2)
        for account, units in split.items():
            members[account] += units
        coop += coop_units
    return members, coop


def allocated(s: Settlement, order: uuid.UUID) -> bool:
    resp = s.get(f"/orders/{order}")
    return resp.status_code == 200 and resp.json()["allocation"] is not None


def play_orders(s: Settlement, broker: Broker, prefix: str) -> None:
    """Versions and the first two orders are known before payment; the third is paid first."""
    publish_version(broker.bootstrap, prefix, "health-survey", 1, V1)
    publish_version(broker.bootstrap, prefix, "health-survey", 2, V2)
    for order, version, price in ORDERS[:2]:
        publish_order(broker.bootstrap, prefix, order, "health-survey", version, price)
        buy(s, order, price)
    late, version, price = ORDERS[2]
    buy(s, late, price)


def claim_everyone(s: Settlement, chain: Chain, tmp_path: Path) -> None:
    runner = CliRunner()
    for i, key in enumerate(MEMBER_KEYS):
        if i % 2 == 0:  # half through `datacoop claim`, half through the function behind it
            key_file = tmp_path / f"member-{i}.key"
            key_file.write_text(key)
            result = runner.invoke(app, ["claim", "--key-file", str(key_file), "--settlement-url", s.url,
                                         "--rpc", chain.url])
            assert result.exit_code == 0, result.output
            assert "claimed" in result.output
        else:
            assert claim_with_key(key, s.url, chain.url)["claimed_units"] > 0
    assert claim_with_key(COOP_KEY, s.url, chain.url)["claimed_units"] > 0


def assert_paid_exactly(s: Settlement) -> None:
    members, coop = expected_totals()
    token = s.contracts.stablecoin.functions
    market = s.contracts.market
    for account, units in members.items():
        assert token.balanceOf(account).call() == units, account
    assert token.balanceOf(s.coop).call() == coop
    allocations = [s.get(f"/orders/{o}").json()["allocation"] for o, _, _ in ORDERS]
    assert coop == sum(a["fee_units"] + a["remainder_units"] for a in allocations), "coop = fees + remainders"
    assert all(a["remainder_units"] >= 0 for a in allocations)
    assert token.balanceOf(market.address).call() == 0, "escrow must end empty"
    assert sum(members.values()) + coop == sum(p for _, _, p in ORDERS)
    assert market.functions.currentEpoch().call() == 1
    logs = market.events.RootPosted().get_logs(from_block=0)
    assert len(logs) == 1, "exactly one root posted"


def test_three_orders_one_epoch_every_member_claims_to_the_unit(
    settlement: Settlement, broker: Broker, chain: Chain, prefix: str, tmp_path: Path  # noqa: F811
) -> None:
    s = settlement
    s.start()
    play_orders(s, broker, prefix)
    late, version, price = ORDERS[2]
    wait_for(lambda: any(p["order_id"] == str(late) for p in s.get("/payments/waiting").json()),
             "the payment of an unknown order to be held")
    assert not allocated(s, late)
    publish_order(broker.bootstrap, prefix, late, "health-survey", version, price)
    wait_for(lambda: all(allocated(s, o) for o, _, _ in ORDERS), "all three orders allocated")

    members, coop = expected_totals()
    assert s.get("/balances").json() == {**{a.lower(): u for a, u in members.items()}, s.coop.lower(): coop}
    alloc = s.get(f"/orders/{ORDERS[0][0]}").json()["allocation"]
    assert alloc["fee_units"] == 1_000_003 * 250 // 10_000
    assert alloc["cooperative_units"] == alloc["fee_units"] + alloc["remainder_units"]

    for token in (None, "datacoop-dev-operator-token"):  # no token, and the development default it was not given
        refused = s.post_epoch(token)
        assert refused is not None and refused.status_code == 401, refused and refused.text
        assert refused.json()["type"].endswith("/bad-operator-token")
        assert "DATACOOP_SETTLEMENT_OPERATOR_TOKEN" in refused.json()["detail"]
    assert s.get("/epochs/latest").status_code == 404, "a refused POST /epochs must not post anything"
    assert s.contracts.market.functions.currentEpoch().call() == 0, "nor put a root on chain"
    before = CliRunner().invoke(app, ["payouts", MEMBERS[4], "--settlement-url", s.url])
    assert before.exit_code == 0 and "no payout epoch has been posted yet" in before.output, before.output
    assert "None" not in before.output
    shown = CliRunner().invoke(app, ["epoch", "show", "--settlement-url", s.url])
    assert shown.exit_code == 0 and "no epoch yet" in shown.output, shown.output
    wrong = CliRunner().invoke(app, ["epoch", "post", "--settlement-url", s.url, "--token", "not-the-token"])
    assert wrong.exit_code == 1 and "DATACOOP_SETTLEMENT_OPERATOR_TOKEN" in wrong.output, wrong.output
    posted = CliRunner().invoke(app, ["epoch", "post", "--settlement-url", s.url, "--token", OPERATOR_TOKEN])
    assert posted.exit_code == 0 and "epoch 1:" in posted.output and "posted in 0x" in posted.output, posted.output
    assert s.get("/epochs/latest").json()["posted"] and s.contracts.market.functions.currentEpoch().call() == 1
    again = CliRunner().invoke(app, ["epoch", "post", "--settlement-url", s.url],
                               env={"DATACOOP_SETTLEMENT_OPERATOR_TOKEN": OPERATOR_TOKEN})
    assert again.exit_code == 0 and "nothing new to post" in again.output, again.output
    assert s.post_epoch().status_code == 409  # type: ignore[union-attr]

    out = CliRunner().invoke(app, ["payouts", MEMBERS[4], "--settlement-url", s.url])
    assert out.exit_code == 0 and f"{members[MEMBERS[4]]:,} units" in out.output, out.output
    claim_everyone(s, chain, tmp_path)
    assert_paid_exactly(s)
    assert claim_with_key(MEMBER_KEYS[0], s.url, chain.url)["claimed_units"] == 0, "a second claim pays nothing"


def test_a_short_payment_is_held_for_a_refund_and_an_overpayment_is_split_on_what_was_paid(
    settlement: Settlement, broker: Broker, prefix: str  # noqa: F811
) -> None:
    """A short payment pays no order and can't be topped up (the contract takes one payment per order id):
    it is flagged and held for the operator's refund, never split, so refunding it leaves the next root
    free to be posted (had it been allocated, the refund would stop every root: refunded-after-allocation).
    An overpayment pays its order: flagged, and split on the whole amount paid."""
    s = settlement
    s.start()
    publish_version(broker.bootstrap, prefix, "mobility", 1, V2)
    short, over = uuid.uuid4(), uuid.uuid4()
    for order in (short, over):
        publish_order(broker.bootstrap, prefix, order, "mobility", 1, 1_000_000)
    buy(s, short, 999_999, marketplace=None)  # a short payment pays no order: the marketplace makes no call
    buy(s, over, 1_000_001)
    wait_for(lambda: allocated(s, over), "the overpaid order allocated")
    wait_for(lambda: s.get(f"/orders/{short}").json()["flags"] != [], "the short payment flagged")
    time.sleep(0.5)  # many polls of the loop (0.05 s): the short payment may not be allocated meanwhile
    view = s.get(f"/orders/{short}").json()
    assert [f["reason"] for f in view["flags"]] == ["amount-mismatch"] and "Refund it" in view["flags"][0]["detail"]
    assert view["allocation"] is None
    [waiting] = s.get("/payments/waiting").json()
    assert waiting["order_id"] == str(short) and "short of the price" in waiting["marketplace"]
    assert "held for a refund" in waiting["marketplace"]
    overpaid = s.get(f"/orders/{over}").json()
    assert [f["reason"] for f in overpaid["flags"]] == ["amount-mismatch"]
    assert overpaid["allocation"]["amount_units"] == 1_000_001
    members, coop = expected_split(1_000_001, V2)  # the short payment is in no balance
    assert s.get("/balances").json() == {**{a.lower(): u for a, u in members.items()}, s.coop.lower(): coop}

    send_receipt(s.w3, s.contracts.market.functions.refund(order_id_from_uuid(short)), s.env["DATACOOP_OPERATOR_KEY"])
    s.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]  # one confirmation
    wait_for(lambda: s.get("/payments/waiting").json() == [], "the refunded short payment no longer held")
    assert s.get(f"/orders/{short}").json()["refund"]["amount_units"] == 999_999
    posted = s.post_epoch()
    assert posted is not None and posted.status_code == 200, posted and posted.text
    assert posted.json()["total_units"] == 1_000_001 and s.contracts.market.functions.currentEpoch().call() == 1


def test_a_payment_is_allocated_only_once_the_marketplace_pays_the_order_and_never_when_it_refuses(
    settlement: Settlement, broker: Broker, prefix: str  # noqa: F811
) -> None:
    """A payment that arrives after its order expired (or its version was withdrawn) opens nothing and is
    to be refunded: settlement must not split it among members before, or after, the marketplace says so."""
    s = settlement
    s.start()
    publish_version(broker.bootstrap, prefix, "mobility", 1, V2)
    refused, pending = uuid.uuid4(), uuid.uuid4()
    for order in (refused, pending):
        publish_order(broker.bootstrap, prefix, order, "mobility", 1, 1_000_000)
    buy(s, refused, 1_000_000, marketplace="refuses")
    tx_hash = buy(s, pending, 1_000_000, marketplace=None)
    wait_for(lambda: len(s.get("/payments/waiting").json()) == 2, "both payments confirmed")
    time.sleep(1.0)  # many polls of the loop (0.05 s): neither may be allocated meanwhile
    waiting = {w["order_id"]: w for w in s.get("/payments/waiting").json()}
    assert "refused" in waiting[str(refused)]["marketplace"] and "refunded" in waiting[str(refused)]["marketplace"]
    assert "awaiting the marketplace" in waiting[str(pending)]["marketplace"]
    assert not allocated(s, refused) and not allocated(s, pending)
    decide_payment(s, pending, 1_000_000, tx_hash, paid=True)
    wait_for(lambda: allocated(s, pending), "the order the marketplace paid allocated")
    assert not allocated(s, refused)
    members, coop = expected_split(1_000_000, V2)  # one order's split: the refused payment's is in no balance
    assert s.get("/balances").json() == {**{a.lower(): u for a, u in members.items()}, s.coop.lower(): coop}


def test_claim_without_an_epoch_fails_with_one_line(settlement: Settlement, chain: Chain,  # noqa: F811
                                                     tmp_path: Path) -> None:
    s = settlement
    s.start()
    key_file = tmp_path / "k"
    key_file.write_text(MEMBER_KEYS[0])
    result = CliRunner().invoke(app, ["claim", "--key-file", str(key_file), "--settlement-url", s.url,
                                      "--rpc", chain.url])
    assert result.exit_code != 0
    assert "nothing to claim" in result.output


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_sigkill_at_any_step_then_restart_pays_everyone_once(
    step: str, settlement: Settlement, broker: Broker, chain: Chain, prefix: str, tmp_path: Path  # noqa: F811
) -> None:
    s = settlement
    s.env["DATACOOP_SETTLEMENT_CRASH_AT"] = step
    s.start()
    play_orders(s, broker, prefix)
    late, version, price = ORDERS[2]
    publish_order(broker.bootstrap, prefix, late, "health-survey", version, price)
    crashed = False
    if step in ("after_payment", "after_allocation"):
        s.wait_dead()
        crashed = True
        s.start()
    wait_for(lambda: all(allocated(s, o) for o, _, _ in ORDERS), "all three orders allocated")
    resp = s.post_epoch()
    if step not in ("after_payment", "after_allocation"):
        assert resp is None, "the crash hook should have killed the process"
        s.wait_dead()
        crashed = True
        s.start()
        wait_for(lambda: s.get("/epochs/latest").status_code == 200 and s.get("/epochs/latest").json()["posted"],
                 "the prepared epoch posted after restart")
    else:
        assert resp is not None and resp.status_code == 200, resp and resp.text
    assert crashed
    assert (tmp_path / "data" / f"settlement-crashed-at-{step}").exists()
    assert root_posted_log(s.contracts.market, 1) is not None
    assert s.post_epoch().status_code == 409  # type: ignore[union-attr]
    claim_everyone(s, chain, tmp_path)
    assert_paid_exactly(s)


def test_payments_made_while_stopped_are_picked_up_and_a_deleted_projection_rebuilds(
    settlement: Settlement, broker: Broker, chain: Chain, prefix: str, tmp_path: Path  # noqa: F811
) -> None:
    s = settlement
    s.start()
    publish_version(broker.bootstrap, prefix, "health-survey", 1, V1)
    first, second = uuid.uuid4(), uuid.uuid4()
    for order in (first, second):
        publish_order(broker.bootstrap, prefix, order, "health-survey", 1, 3_000_000)
    buy(s, first, 3_000_000)
    wait_for(lambda: allocated(s, first), "the first order allocated")
    s.stop()
    buy(s, second, 3_000_000)  # while the service is down
    s.start()
    wait_for(lambda: allocated(s, second), "the order paid while stopped allocated")
    posted = s.post_epoch()
    assert posted is not None and posted.status_code == 200
    balances = s.get("/balances").json()
    assert sum(balances.values()) == 6_000_000, "each payment allocated once"

    s.stop()
    for path in (tmp_path / "data").glob("settlement.duckdb*"):
        path.unlink()
    s.start()
    wait_for(lambda: s.get("/balances").json() == balances, "balances rebuilt from the log")
    latest = s.get("/epochs/latest").json()
    assert latest["epoch"] == 1 and latest["posted"] and latest["root"] == posted.json()["root"]
    time_to_settle = s.post_epoch()
    assert time_to_settle is not None and time_to_settle.status_code == 409, "nothing new after a rebuild"
    assert len(s.contracts.market.events.RootPosted().get_logs(from_block=0)) == 1


def test_demo_shows_earnings_and_claims(settlement: Settlement, broker: Broker, chain: Chain,  # noqa: F811
                                        prefix: str) -> None:
    from rich.console import Console

    from services.settlement.demo import show_earnings_and_claim

    s = settlement
    s.start()
    play_orders(s, broker, prefix)
    late, version, price = ORDERS[2]
    publish_order(broker.bootstrap, prefix, late, "health-survey", version, price)
    wait_for(lambda: all(allocated(s, o) for o, _, _ in ORDERS), "all three orders allocated")
    console = Console(record=True, width=200)
    shown = show_earnings_and_claim(s.url, chain.url, MEMBER_KEYS, console, operator_token=OPERATOR_TOKEN)
    members, _ = expected_totals()
    assert shown["epoch"] == 1 and shown["earnings"] == members
    assert shown["claims"][0]["claimed_units"] == members[MEMBERS[0]]
    assert "claimed" in console.export_text()


def test_threshold_posts_epochs_by_itself_and_a_second_epoch_pays_only_the_difference(
    settlement: Settlement, broker: Broker, chain: Chain, prefix: str  # noqa: F811
) -> None:
    s = settlement
    s.env["DATACOOP_EPOCH_THRESHOLD_UNITS"] = "1000000"
    s.start()
    publish_version(broker.bootstrap, prefix, "health-survey", 1, V1)
    member_key, member = MEMBER_KEYS[4], MEMBERS[4]
    earned = 0
    for epoch in (1, 2):
        order = uuid.uuid4()
        publish_order(broker.bootstrap, prefix, order, "health-survey", 1, 3_000_001)
        buy(s, order, 3_000_001)
        earned += expected_split(3_000_001, V1)[0][member]
        wait_for(lambda epoch=epoch: s.get("/epochs/latest").status_code == 200
                 and s.get("/epochs/latest").json()["epoch"] == epoch and s.get("/epochs/latest").json()["posted"],
                 f"epoch {epoch} posted by the threshold")
        before = s.get(f"/payouts/{member}").json()
        assert before["claimable_units"] == earned - before["claimed_units"] > 0
        result = claim_with_key(member_key, s.url, chain.url)
        assert result["cumulative_units"] == earned
        assert s.contracts.stablecoin.functions.balanceOf(member).call() == earned
        after = s.get(f"/payouts/{member}").json()  # what the member sees once claimed: nothing left to take
        assert (after["claimed_units"], after["claimable_units"]) == (earned, 0)
    assert result["claimed_units"] == expected_split(3_000_001, V1)[0][member], "only the new earnings"


def test_no_root_is_posted_over_an_order_refunded_after_it_was_allocated(
    settlement: Settlement, broker: Broker, prefix: str  # noqa: F811
) -> None:
    s = settlement
    s.start()
    publish_version(broker.bootstrap, prefix, "health-survey", 1, V1)
    order = uuid.uuid4()
    publish_order(broker.bootstrap, prefix, order, "health-survey", 1, 2_000_000)
    buy(s, order, 2_000_000)
    wait_for(lambda: allocated(s, order), "the order allocated")
    send_receipt(s.w3, s.contracts.market.functions.refund(order_id_from_uuid(order)), s.env["DATACOOP_OPERATOR_KEY"])
    refused = s.post_epoch()
    assert refused is not None and refused.status_code == 409
    assert str(order) in refused.json()["detail"] and "refunded" in refused.json()["detail"]
    assert s.contracts.market.functions.currentEpoch().call() == 0


def test_job_fees_are_paid_to_providers_out_of_the_compute_orders_reserve(
    settlement: Settlement, broker: Broker, chain: Chain, prefix: str, tmp_path: Path  # noqa: F811
) -> None:
    """A compute order holds half its price back; each JobCompleted on datacoop.jobs pays its provider
    once from that reserve, capped by what is left, so the root never promises more than escrow holds."""
    from datacoop.events.jobs import JobCompleted
    from datacoop.topics import JOBS

    s = settlement
    s.start()
    order, price = uuid.uuid4(), 4_000_000
    weights = {MEMBERS[0]: 1, MEMBERS[1]: 3}
    publish_version(broker.bootstrap, prefix, "compute-set", 1, weights)
    publish_order(broker.bootstrap, prefix, order, "compute-set", 1, price, offer="compute")
    buy(s, order, price)
    wait_for(lambda: allocated(s, order), "the compute order allocated")
    alloc = s.get(f"/orders/{order}").json()["allocation"]
    assert alloc["compute_reserve_units"] == price // 2
    assert sum(alloc["allocations"].values()) + alloc["cooperative_units"] == price - price // 2

    provider_a, provider_b = Account.create().address, Account.create().address
    for job_id, provider, fee in (("job-1", provider_a, 1_500_000), ("job-2", provider_b, 1_500_000),
                                  ("job-1", provider_a, 1_500_000)):  # job-1 reported twice: paid once
        ev = JobCompleted(job_id=job_id, order_id=str(order), result_sha256="a" * 64, workers=["w"], provider=provider,
                          fee_units=fee, completed_at=datetime.now(UTC))
        publish(broker.bootstrap, prefix, JOBS, job_id, "datacoop/jobs", ev)
    wait_for(lambda: provider_b.lower() in s.get("/balances").json(), "both job fees allocated")
    balances = s.get("/balances").json()
    assert balances[provider_a.lower()] == 1_500_000
    assert balances[provider_b.lower()] == 500_000, "capped at what the reserve still held"
    posted = s.post_epoch()
    assert posted is not None and posted.status_code == 200, posted and posted.text
