"""Bad CLI input is refused locally with one line naming the flag, before any service is asked."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account
from typer.testing import CliRunner

from datacoop.cli import app

WIDE = {"COLUMNS": "200"}


@pytest.mark.parametrize(("args", "expected"), [
    (["payouts", "0xnotanaddress"], "ADDRESS '0xnotanaddress' is not a wallet address"),
    (["payouts", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"], "EIP-55 checksum"),  # one letter's case wrong
])
def test_a_bad_address_is_named(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 2 and expected in result.output, result.output
    assert "Traceback" not in result.output and "refused" not in result.output


@pytest.mark.parametrize(("args", "expected"), [
    (["payouts", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "--settlement-url", "notaurl"],
     "--settlement-url 'notaurl' is not a URL"),
    (["catalog", "--market-url", "localhost:8104"], "--market-url 'localhost:8104' is not a URL"),
])
def test_a_url_option_that_is_no_url_is_a_usage_error(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 2 and expected in result.output, result.output
    assert "Traceback" not in result.output and "refused" not in result.output


def test_a_url_from_the_environment_is_checked_too() -> None:
    result = CliRunner().invoke(app, ["catalog"], env={**WIDE, "DATACOOP_MARKETPLACE_URL": "foo"})
    assert result.exit_code == 2 and "DATACOOP_MARKETPLACE_URL 'foo' is not a URL" in result.output, result.output


def test_a_wallet_that_is_not_the_key_files_address_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "r.key"
    key.write_text(Account.create().key.hex())
    other = Account.create().address
    result = CliRunner().invoke(app, ["researcher", "register", "--name", "M", "--key-file", str(key),
                                      "--wallet", other, "--save", str(tmp_path / "api.key"),
                                      "--market-url", "http://127.0.0.1:9"], env=WIDE)
    assert result.exit_code == 2 and f"--wallet {other} is not the address of --key-file" in result.output


def test_a_bad_wallet_is_named_before_a_saved_api_key_is_mentioned(tmp_path: Path) -> None:
    saved = tmp_path / "api.key"
    saved.write_text("k\n")
    result = CliRunner().invoke(app, ["researcher", "register", "--name", "M", "--wallet", "0xbad",
                                      "--save", str(saved)], env=WIDE)
    assert result.exit_code == 2 and "'0xbad' is not a wallet address" in result.output, result.output
    assert "already saved" not in result.output


def test_debug_shows_the_traceback_behind_a_one_line_error(tmp_path: Path) -> None:
    key = tmp_path / "m.key"
    key.write_text(Account.create().key.hex())
    args = ["member", "show", "--key-file", str(key), "--consent-url", "http://127.0.0.1:9"]  # nothing listens
    plain = CliRunner().invoke(app, args, env=WIDE)
    debug = CliRunner().invoke(app, ["--debug", *args], env=WIDE)
    assert plain.exit_code == debug.exit_code == 1
    assert "Traceback" not in plain.output
    assert "Traceback" in debug.output and "error:" in debug.output, debug.output
