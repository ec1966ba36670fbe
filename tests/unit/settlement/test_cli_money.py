"""Settlement's CLI writes money as the rest of the CLI does (orders: `50,000,000`): `72,000,000 units`, never
`72000000 units`."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from datacoop.cli import app
from datacoop.cli import settlement as settlement_cli

ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
NOWHERE = "http://127.0.0.1:9"
PAYOUT = {"account": ADDRESS, "epoch": 3, "root": "0x" + "ab" * 32, "cumulative_units": 4_000_000,
          "proof": ["0x" + "cd" * 32], "claimed_units": 1_250_000, "claimable_units": 2_750_000,
          "earned_units": 4_749_999, "unposted_units": 749_999, "market_address": "0x" + "1" * 40,
          "token_address": "0x" + "2" * 40}
EPOCH = {"epoch": 3, "root": "0x" + "ab" * 32, "total_units": 72_000_000, "accounts": 12, "posted": True,
         "tx_hash": "0x" + "ef" * 32}


def _unseparated(output: str) -> list[str]:
    """Every amount of units in `output` written without thousands separators (4 digits or more)."""
    return re.findall(r"\b\d{4,} units", output)


def test_payouts_writes_every_amount_with_thousands_separators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settlement_cli, "fetch_payout", lambda url, address: PAYOUT)
    shown = CliRunner().invoke(app, ["payouts", ADDRESS, "--settlement-url", NOWHERE], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    said = " ".join(shown.output.split())
    assert "earned 4,749,999 units" in said and "claimed 1,250,000 units so far" in said, said
    assert "claimable 2,750,000 units now (cumulative 4,000,000 units in epoch 3" in said, said
    assert "not yet in a posted epoch: 749,999 units" in said and not _unseparated(shown.output), said


def test_epoch_show_writes_the_total_with_thousands_separators(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(url: str, method: str, path: str, timeout_s: float = 10, **kwargs: Any) -> httpx.Response:
        return httpx.Response(200, json=EPOCH)

    monkeypatch.setattr(settlement_cli, "_request", answer)
    shown = CliRunner().invoke(app, ["epoch", "show", "--settlement-url", NOWHERE], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "epoch 3: 72,000,000 units over 12 account(s)" in shown.output and not _unseparated(shown.output)


def test_claim_writes_what_it_claimed_with_thousands_separators(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    key = tmp_path / "me.key"
    key.write_text("0x" + "11" * 32 + "\n")
    claimed = {"account": ADDRESS, "epoch": 3, "cumulative_units": 4_000_000, "claimed_units": 2_750_000,
               "tx_hash": "0x" + "12" * 32}
    monkeypatch.setattr(settlement_cli, "claim_with_key", lambda key, url, rpc: claimed)
    shown = CliRunner().invoke(app, ["claim", "--key-file", str(key), "--settlement-url", NOWHERE, "--rpc", NOWHERE],
                               env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "claimed 2,750,000 units (cumulative 4,000,000 units, epoch 3)" in " ".join(shown.output.split())


def test_payouts_takes_the_wallets_key_file_instead_of_an_address(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Any) -> None:
    from eth_account import Account

    account = Account.create()
    key = tmp_path / "me.key"
    key.write_text(account.key.hex() + "\n")
    asked: list[str] = []
    monkeypatch.setattr(settlement_cli, "fetch_payout", lambda url, address: asked.append(address) or PAYOUT)
    shown = CliRunner().invoke(app, ["payouts", "--key-file", str(key), "--settlement-url", NOWHERE])
    assert shown.exit_code == 0 and asked == [account.address], shown.output
    both = CliRunner().invoke(app, ["payouts", ADDRESS, "--key-file", str(key), "--settlement-url", NOWHERE])
    assert both.exit_code == 2 and "ADDRESS or --key-file, not both" in both.output
    address = CliRunner().invoke(app, ["wallet", "show", "--key-file", str(key)])
    assert address.exit_code == 0 and address.output.strip() == account.address


def test_payouts_with_nothing_claimable_says_so_instead_of_pointing_to_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    claimed = {**PAYOUT, "claimed_units": 4_000_000, "claimable_units": 0}
    monkeypatch.setattr(settlement_cli, "fetch_payout", lambda url, address: claimed)
    said = " ".join(CliRunner().invoke(app, ["payouts", ADDRESS, "--settlement-url", NOWHERE]).output.split())
    assert "claimable 0 units now" in said and "nothing to claim now" in said and "datacoop claim" not in said, said
    monkeypatch.setattr(settlement_cli, "fetch_payout", lambda url, address: PAYOUT)
    said = " ".join(CliRunner().invoke(app, ["payouts", ADDRESS, "--settlement-url", NOWHERE]).output.split())
    assert "`datacoop claim --key-file FILE` takes them" in said, said
