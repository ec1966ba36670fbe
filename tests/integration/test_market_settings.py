"""A service pointed at the wrong market or token address refuses to start, naming the setting and the fix;
a chain that does not answer yet is no reason to refuse (the service waits for it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account

from datacoop.chain import ANVIL_KEYS, deploy_local_stack, market_mismatch
from datacoop.kit.settings import SettingRefused
from infra.local import Chain, free_port
from services.marketplace.service import build_app as build_marketplace
from services.marketplace.settings import MarketplaceSettings
from services.settlement.service import build_app as build_settlement
from services.settlement.settings import SettlementSettings


def test_a_wrong_market_or_token_address_is_named_with_its_fix(chain: Chain) -> None:
    env = deploy_local_stack(chain.url)
    market, token = env["DATACOOP_MARKET_ADDRESS"], env["DATACOOP_TOKEN_ADDRESS"]
    assert market_mismatch(chain.url, market, token) is None
    assert market_mismatch(chain.url, market, token.lower()) is None
    wrong_token = market_mismatch(chain.url, market, market)
    assert wrong_token is not None and f"set DATACOOP_TOKEN_ADDRESS={token}" in wrong_token
    not_a_market = market_mismatch(chain.url, token, token)
    assert not_a_market is not None and "is not a DatacoopMarket" in not_a_market
    nobody = Account.from_key(ANVIL_KEYS[7]).address
    empty = market_mismatch(chain.url, nobody, token)
    assert empty is not None and "no contract there" in empty and "DATACOOP_MARKET_ADDRESS" in empty
    assert market_mismatch(f"http://127.0.0.1:{free_port()}", nobody, token) is None, "a chain not up yet"


def test_settlement_and_the_marketplace_refuse_to_start_on_another_token(chain: Chain, tmp_path: Path) -> None:
    env = deploy_local_stack(chain.url)
    common = {"chain_url": chain.url, "market_address": env["DATACOOP_MARKET_ADDRESS"],
              "token_address": env["DATACOOP_MARKET_ADDRESS"], "data_dir": tmp_path}
    with pytest.raises(SettingRefused, match="DATACOOP_TOKEN_ADDRESS"):
        build_settlement(SettlementSettings(**common, settler_key=env["DATACOOP_SETTLER_KEY"],
                                            coop_address=env["DATACOOP_COOP_ADDRESS"]))
    with pytest.raises(SettingRefused, match="DATACOOP_TOKEN_ADDRESS"):
        build_marketplace(MarketplaceSettings(**common))
