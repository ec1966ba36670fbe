"""The demo scenario `make run` plays against a running stack; each feature adds its chapter.

Every chapter goes through the public APIs, as the people using datacoop would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from eth_account import Account
from rich.console import Console
from rich.table import Table

from services.consent.client import ApiError, MemberWallet, check
from services.consent.receipts import verify_receipt

PURPOSES = [("health-research", ["health", "demographics"]), ("public-statistics", ["demographics"]),
            ("ai-training", ["demographics", "fitness"]), ("mobility-research", ["location"])]


@dataclass
class DemoState:
    """What the chapters hand each other."""

    stack: dict[str, Any]
    members: list[MemberWallet] = field(default_factory=list)
    consents: dict[str, list[str]] = field(default_factory=dict)
    erased: list[str] = field(default_factory=list)


def chapter_members(state: DemoState, console: Console, count: int = 6) -> None:
    console.rule("members: register, consent, revoke, expire, erase")
    url = state.stack["services"]["consent"]["url"]
    for i in range(count):
        wallet = MemberWallet(Account.create().key.hex(), url)
        wallet.register()
        granted = []
        for purpose, categories in PURPOSES[: 1 + i % len(PURPOSES)]:
            granted.append(wallet.grant(purpose, categories)["consent_id"])
        state.members.append(wallet)
        state.consents[wallet.address] = granted
    first, second, third = state.members[0], state.members[1], state.members[-1]
    second.revoke(state.consents[second.address][-1])
    short = first.grant("mobility-research", ["location"], expires_at=datetime.now(UTC) + timedelta(seconds=2))
    try:
        replay = first.grant_body("public-statistics", ["demographics"], nonce=0)
        check(first.http.post(f"/members/{first.address}/consents", json=replay))
    except ApiError as exc:
        console.print(f"a replayed signature is refused ({exc.status}): [yellow]{exc.problem['detail']}[/yellow]")
    third.erase()
    state.erased.append(third.address)
    try:
        third.grant("health-research", ["health"])
    except ApiError as exc:
        console.print(f"an erased member can't consent again: [yellow]{exc.problem['detail']}[/yellow]")
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
    table = Table("member", "active", "revoked", "expired", "erased")
    for wallet in state.members:
        view = wallet.http.get(f"/members/{wallet.address}").json()
        counts = {s: sum(1 for c in view["consents"] if c["state"] == s) for s in ("active", "revoked", "expired")}
        table.add_row(wallet.address, str(counts["active"]), str(counts["revoked"]), str(counts["expired"]),
                      "yes" if view["erased"] else "")
    console.print(table)


CHAPTERS = [("consent", chapter_members)]


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
