"""A service checking its market address on an install without the contract artifacts says that, not that the
address is wrong (an image with the code in site-packages sent operators after a right address)."""

from __future__ import annotations

from pathlib import Path

import pytest

from datacoop import chain

MARKET = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def test_missing_contract_artifacts_are_named_with_the_fix_not_blamed_on_the_address(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(chain, "ARTIFACTS_DIR", tmp_path)
    said = chain.market_mismatch("http://127.0.0.1:9", MARKET, TOKEN, timeout_s=1)
    assert said is not None, "a missing artifact is reported whether the chain answers or not"
    assert str(tmp_path / "DatacoopMarket.json") in said and "make contracts" in said
    assert "not a DatacoopMarket" not in said
