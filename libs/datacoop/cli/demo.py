"""The demo scenario `make run` plays against a running stack; each feature adds its chapter.

Every chapter goes through the public APIs, as the people using datacoop would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
from eth_account import Account
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from web3 import Web3

from datacoop.cli.anonymizer import chapter_datasets
from datacoop.cli.common import operator_token, print_table
from datacoop.http import ApiError, check
from services.consent.client import MemberWallet
from services.consent.receipts import verify_receipt
from services.vault.client import VaultClient, sample_rows

PURPOSES = [("health-research", ["health", "demographics"]), ("public-statistics", ["demographics"]),
            ("ai-training", ["demographics", "fitness"]), ("mobility-research", ["location"])]


@dataclass
class DemoState:
    """What the chapters hand each other."""

    stack: dict[str, Any]
    members: list[MemberWallet] = field(default_factory=list)
    consents: dict[str, list[str]] = field(default_factory=dict)
    erased: list[str] = field(default_factory=list)
    vaults: dict[str, VaultClient] = field(default_factory=dict)
    dataset_members: list[MemberWallet] = field(default_factory=list)


def chapter_members(state: DemoState, console: Console, count: int = 8) -> None:
    console.rule("members: register, consent, replay refused, receipts, expiry")
    url = state.stack["services"]["consent"]["url"]
    for i in range(count):
        wallet = MemberWallet(Account.create().key.hex(), url)
        wallet.register()
        granted = []
        for purpose, categories in PURPOSES[: 1 + i % len(PURPOSES)]:
            granted.append(wallet.grant(purpose, categories)["consent_id"])
        state.members.append(wallet)
        state.consents[wallet.address] = granted
    first = state.members[0]
    console.print(f"{count} members registered and consented (EIP-712 signatures by their wallets)")
    short = first.grant("mobility-research", ["location"], expires_at=datetime.now(UTC) + timedelta(seconds=2))
    try:
        replay = first.grant_body("public-statistics", ["demographics"], nonce=0)
        check(first.http.post(f"/members/{first.address}/consents", json=replay))
    except ApiError as exc:
        detail = escape(str(exc.problem["detail"]))
        console.print(f"a replayed signature is refused ({exc.status}): [yellow]{detail}[/yellow]")
    receipt = first.receipt(state.consents[first.address][0])
    key = first.http.get("/receipt-key").json()["public_key"]
    verify_receipt(receipt, key)
    console.print(f"consent receipt {receipt['record_id'][:8]}… for {first.address[:10]}… verifies with the "
                  f"cooperative's Ed25519 key")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        states = {c["consent_id"]: c["history"][-1]["state"] for c in first.consents()}
        if states.get(short["consent_id"]) == "expired":
            console.print("a consent granted for 2 seconds was expired by the sweeper")
            break
        time.sleep(0.3)


def chapter_vault(state: DemoState, console: Console, rows_per_member: int = 40) -> None:
    console.rule("vault: members contribute records, encrypted before they reach Kafka")
    url = state.stack["services"]["vault"]["url"]
    for i, wallet in enumerate(state.members):
        client = VaultClient(wallet.account.key.hex(), url)
        _until(partial(_vault_knows, client))
        client.contribute_rows("demographics", sample_rows("demographics", rows_per_member, seed=i))
        if i % 2 == 0:
            client.contribute_rows("fitness", sample_rows("fitness", rows_per_member // 2, seed=i))
        state.vaults[wallet.address] = client
    try:
        bad = [{**sample_rows("demographics", 1, seed=99)[0], "age": 420}]
        state.vaults[state.members[0].address].contribute_rows("demographics", bad)
    except ApiError as exc:
        console.print(f"an upload with a bad row is refused whole ({exc.status}): "
                      f"[yellow]{escape(str(exc.problem.get('detail'))[:160])}[/yellow]")
    total = sum(sum(u["records"] for u in v.summary()["uploads"]) for v in state.vaults.values())
    console.print(f"{total} records sealed with AES-256-GCM under per-member data keys")


def chapter_erasure(state: DemoState, console: Console) -> None:
    console.rule("revocation and erasure")
    second, last = state.members[1], state.members[-1]
    second.revoke(state.consents[second.address][-1])
    console.print(f"{second.address[:10]}… revoked a consent")
    last.erase()
    state.erased.append(last.address)
    try:
        last.grant("health-research", ["health"])
    except ApiError as exc:
        detail = escape(str(exc.problem["detail"]))
        console.print(f"an erased member can't consent again ({exc.status}): [yellow]{detail}[/yellow]")
    if "vault" in state.stack["services"]:
        vault = state.vaults[last.address]
        _until(lambda: vault.summary().get("keys_shredded") is True)
        console.print(f"the vault destroyed {last.address[:10]}…'s data key: their records can never be read again")
    if "anonymizer" in state.stack["services"]:
        from services.anonymizer.client import AnonymizerClient

        datasets = AnonymizerClient(state.stack["services"]["anonymizer"]["url"],
                                    operator_token(None, "DATACOOP_ANONYMIZER_OPERATOR_TOKEN"))

        def rebuilt_without_them() -> bool:  # who is in a version: the operator's view, never public
            newest = datasets.versions(DEMO_DATASET)[-1]
            return not newest["superseded"] and last.address not in datasets.contributors(DEMO_DATASET,
                                                                                          newest["version"])

        _until(rebuilt_without_them, timeout_s=60)
        newest = datasets.versions(DEMO_DATASET)[-1]
        console.print(f"{DEMO_DATASET} version {newest['version']} was built without them "
                      f"({newest['rows']} rows); versions already sold stay with their buyers")
    table = Table("member", "active", "revoked", "expired", "erased")
    for wallet in state.members:
        view = wallet.state()
        counts = {s: sum(1 for c in view["consents"] if c["state"] == s) for s in ("active", "revoked", "expired")}
        table.add_row(wallet.address, str(counts["active"]), str(counts["revoked"]), str(counts["expired"]),
                      "yes" if view["erased"] else "")
    print_table(table, whole=(0,), out=console)  # whole addresses, in a pipe too


def chapter_market(state: DemoState, console: Console) -> None:
    console.rule("marketplace: a researcher buys a download and a query order, paid on chain; one paid short is "
                 "refunded")
    from datacoop.chain import ADMIN_KEY, ANVIL_KEYS, OPERATOR_KEY
    from services.anonymizer.client import AnonymizerClient
    from services.marketplace.demo import researcher_buys

    chain = state.stack["chain"]
    market_url = state.stack["services"]["marketplace"]["url"]
    newest = AnonymizerClient(state.stack["services"]["anonymizer"]["url"]).versions(DEMO_DATASET)[-1]["version"]

    def market_offers_only_the_newest() -> bool:
        """The marketplace reads versions and supersessions from the log: wait until it has caught up."""
        catalog = httpx.get(f"{market_url}/catalog", timeout=10).json()["versions"]
        current = {v["version"] for v in catalog if v["dataset_id"] == DEMO_DATASET and v["status"] == "current"}
        return current == {newest}

    _until(market_offers_only_the_newest, timeout_s=60)
    member = state.dataset_members[1] if len(state.dataset_members) > 1 else None
    researcher_buys(market_url, chain["url"], ANVIL_KEYS[9], console,
                    minter_key=ADMIN_KEY, dataset_id=DEMO_DATASET, member=member,
                    operator_key=chain.get("DATACOOP_OPERATOR_KEY", OPERATOR_KEY))


FITNESS_DATASET = "fitness-demo"


def fitness_definition() -> dict[str, Any]:
    """Daily activity: the day is generalized (month, year) until k-anonymous; the workout and the counts are
    published as they are (`published_as_is`)."""
    return {"name": FITNESS_DATASET, "version": 1, "purpose": "health-research", "data_categories": ["fitness"],
            "columns": {"day": {"type": "date", "first": "2026-01-01", "last": "2026-12-31"},
                        "workout": {"type": "categorical", "values": ["none", "walk", "run", "cycle"]},
                        "steps": {"type": "integer", "min": 0, "max": 200_000},
                        "active_minutes": {"type": "integer", "min": 0, "max": 1440}},
            "quasi_identifiers": {"day": {"dates": {"first": "2026-01-01", "last": "2026-12-31"}}},
            "sensitive": [], "published_as_is": ["workout", "steps", "active_minutes"],
            "privacy": {"k": 3, "suppression_limit": 0.1, "max_rows_per_member": 30},
            "aggregates": {"epsilon": 1.0, "mechanism": "laplace", "value_column": "steps",
                           "value_bounds": [0, 200_000]}}


def chapter_jobs(state: DemoState, console: Console, members: int = 6) -> None:
    console.rule("analytics on members' machines: jobs run on workers, results signed, providers paid")
    from datacoop.chain import ADMIN_KEY, ANVIL_KEYS, Contracts, send_receipt
    from services.anonymizer.client import AnonymizerClient
    from services.jobs.demo import run_jobs_demo
    from services.marketplace.client import ResearcherClient, pay, register_researcher

    urls = {name: svc["url"] for name, svc in state.stack["services"].items()}
    for i in range(members):
        wallet = MemberWallet(Account.create().key.hex(), urls["consent"])
        wallet.register()
        wallet.grant("health-research", ["fitness"])
        vault = VaultClient(wallet.account.key.hex(), urls["vault"])
        _until(partial(_vault_knows, vault))
        vault.contribute_rows("fitness", sample_rows("fitness", 30, seed=100 + i))
        state.dataset_members.append(wallet)
    datasets = AnonymizerClient(urls["anonymizer"], operator_token(None, "DATACOOP_ANONYMIZER_OPERATOR_TOKEN"))
    datasets.define(fitness_definition())
    datasets.build(FITNESS_DATASET)

    def everyone_in() -> bool:  # records still arriving make the anonymizer build again (debounced)
        newest = datasets.versions(FITNESS_DATASET)[-1]
        return not newest["superseded"] and newest["contributors"] >= members

    _until(everyone_in, timeout_s=60)
    version = datasets.versions(FITNESS_DATASET)[-1]
    console.print(f"{FITNESS_DATASET} version {version['version']}: {version['rows']} rows from "
                  f"{version['contributors']} members, k={version['k']}")

    buyer_key = ANVIL_KEYS[8]
    reg = register_researcher(urls["marketplace"], "Dr. Compute", Account.from_key(buyer_key).address, "Demo Lab")
    researcher = ResearcherClient(urls["marketplace"], reg["api_key"])
    _until(lambda: any(v["dataset_id"] == FITNESS_DATASET and v["version"] >= version["version"]
                       for v in researcher.catalog()["versions"]))
    payment = researcher.catalog()["payment"]
    chain_url = state.stack["chain"]["url"]
    contracts = Contracts.at(Web3(Web3.HTTPProvider(chain_url)), payment["token"], payment["market"])
    for _ in range(3):  # a version replaced between order and payment refuses the payment: order again
        order = researcher.order_current(FITNESS_DATASET, "compute")
        send_receipt(contracts.w3, contracts.stablecoin.functions.mint(Account.from_key(buyer_key).address,
                                                                       order["price_units"]), ADMIN_KEY)
        pay(chain_url, payment["token"], payment["market"], buyer_key, order["order_id"], order["price_units"])
        _until(partial(_decided, researcher, order["order_id"]), timeout_s=60)
        seen = researcher.get_order(order["order_id"])
        if seen["status"] == "paid":
            break
        console.print(f"[yellow]payment refused[/yellow]: {escape(str(seen.get('note')))}")
    console.print(f"compute order {order['order_id']} paid {order['price_units']:,} units; "
                  "the rows go to workers, never to the researcher")
    finished = run_jobs_demo(urls["jobs"], reg["api_key"], order["order_id"], ["steps", "active_minutes"],
                             say=lambda line: console.print(line, highlight=False))
    providers = {job["provider"].lower() for job in finished if job.get("provider")}

    def providers_paid() -> bool:
        balances = httpx.get(f"{urls['settlement']}/balances", timeout=10).json()
        return all(p in balances for p in providers)

    _until(providers_paid, timeout_s=60)
    balances = httpx.get(f"{urls['settlement']}/balances", timeout=10).json()
    for provider in sorted(providers):
        console.print(f"GPU provider {provider[:10]}… earned {balances[provider]:,} units for its jobs")


def chapter_payouts(state: DemoState, console: Console) -> None:
    console.rule("settlement: revenue split by records, one Merkle root on chain, members claim")
    from services.settlement.demo import show_earnings_and_claim

    # the first dataset member revoked (nothing in the version sold); of the others, two with earnings
    # claim (a member whose one row was suppressed earned nothing)
    wallets = state.dataset_members[1:] + state.members
    settlement_url = state.stack["services"]["settlement"]["url"]

    def earning() -> list[MemberWallet]:
        balances = httpx.get(f"{settlement_url}/balances", timeout=10).json()
        return [w for w in wallets if balances.get(w.address.lower(), 0) > 0]

    _until(lambda: len(earning()) >= 2, timeout_s=60)  # settlement reads orders and payments from the log
    claimers = earning()[:2]
    for wallet in claimers:  # members' fresh wallets hold no ETH for gas: the local chain gives them some
        httpx.post(state.stack["chain"]["url"], json={"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance",
                                                      "params": [wallet.address, hex(10**18)]}, timeout=10)
    keys = [w.account.key.hex() for w in claimers + [w for w in wallets if w not in claimers]]
    show_earnings_and_claim(settlement_url, state.stack["chain"]["url"], keys, console, claimers=2)


def _decided(researcher: Any, order_id: str) -> bool:
    """The marketplace has made its call on the order's payment: paid, or refused (to be refunded)."""
    return researcher.get_order(order_id)["status"] in ("paid", "refund-due")


def _vault_knows(client: VaultClient) -> bool:
    """The vault has read the member's registration from the members topic."""
    return bool(client.summary_response().status_code == 200)


def _until(predicate: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo waited too long for a service; see var/run/logs/")
        time.sleep(0.2)


DEMO_DATASET = "census-demo"
CHAPTERS = [("consent", chapter_members), ("vault", chapter_vault), ("anonymizer", chapter_datasets),
            ("marketplace", chapter_market), ("jobs", chapter_jobs), ("settlement", chapter_payouts),
            ("consent", chapter_erasure)]


def run_demo(stack: dict[str, Any], console: Console) -> DemoState:
    state = DemoState(stack)
    console.rule("demo scenario")
    for needs, chapter in CHAPTERS:
        if needs not in stack.get("services", {}):
            console.print(f"(skipping the {needs} chapter: service not running)")
            continue
        chapter(state, console)
    console.rule("demo done")
    return state
