"""Bad CLI input is refused locally with one line naming the flag, before any service is asked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from datacoop.cli import app

WIDE = {"COLUMNS": "200"}


@pytest.mark.parametrize(("args", "expected"), [
    (["payouts", "0xnotanaddress"], "ADDRESS '0xnotanaddress' is not a wallet address"),
    (["payouts", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"], "EIP-55 checksum"),  # one letter's case wrong
    (["payouts", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "--settlement-url", "notaurl"],
     "--settlement-url 'notaurl' is not a URL"),
    (["catalog", "--market-url", "localhost:8104"], "--market-url 'localhost:8104' is not a URL"),
])
def test_a_bad_address_or_url_is_named(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 1 and expected in result.output, result.output
    assert "Traceback" not in result.output and "refused" not in result.output


def test_a_url_from_the_environment_is_checked_too() -> None:
    result = CliRunner().invoke(app, ["catalog"], env={**WIDE, "DATACOOP_MARKETPLACE_URL": "foo"})
    assert result.exit_code == 1 and "DATACOOP_MARKETPLACE_URL 'foo' is not a URL" in result.output, result.output
