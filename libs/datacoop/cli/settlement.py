"""CLI commands of the settlement service: see your payouts, claim them with your key; post an epoch.

    datacoop payouts 0xYOU
    datacoop claim --key-file me.key [--settlement-url URL] [--rpc URL]
    datacoop epoch post [--token T]        (operator)
    datacoop epoch show

URLs default to DATACOOP_SETTLEMENT_URL / DATACOOP_CHAIN_URL, then the running local stack
(var/run/stack.json), then http://127.0.0.1:8105 and http://127.0.0.1:8545.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

DEFAULT_SETTLEMENT_URL = "http://127.0.0.1:8105"
DEFAULT_RPC_URL = "http://127.0.0.1:8545"


def _from_stack(kind: str) -> str | None:
    from datacoop.cli.stack import running_stack

    data = running_stack() or {}
    found = (data.get("chain") or {}) if kind == "chain" else data.get("services", {}).get("settlement", {})
    url = found.get("url")
    return str(url) if url else None


def _env_url(name: str) -> str | None:
    from datacoop.cli.common import checked_url

    value = os.environ.get(name)
    return checked_url(value, name) if value else None


def settlement_url_default() -> str:
    from datacoop.cli.common import fail, without_service
    from datacoop.cli.stack import running_stack

    url = _env_url("DATACOOP_SETTLEMENT_URL") or _from_stack("settlement")
    stack = running_stack()
    if url is None and stack is not None and "settlement" not in (stack.get("services") or {}):
        fail(without_service("settlement", stack))
    return url or DEFAULT_SETTLEMENT_URL


def rpc_url_default() -> str:
    return _env_url("DATACOOP_CHAIN_URL") or _from_stack("chain") or DEFAULT_RPC_URL


def settlement_url_of(given: str | None) -> str:
    """--settlement-url (checked), else the default above."""
    from datacoop.cli.common import checked_url

    return checked_url(given, "--settlement-url") if given else settlement_url_default()


def _request(settlement_url: str, method: str, path: str, timeout_s: float = 10, **kwargs: Any) -> httpx.Response:
    """A request to the settlement service; RuntimeError saying what to do when it does not answer."""
    try:
        return httpx.request(method, f"{settlement_url.rstrip('/')}{path}", timeout=timeout_s, **kwargs)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"settlement service at {settlement_url} does not answer ({exc}); "
                           "start it (`datacoop up`) or pass --settlement-url") from exc


def _detail(resp: httpx.Response) -> str:
    """A refusal's problem+json `detail` (its body when it is not JSON)."""
    try:
        return str(resp.json().get("detail", resp.text))
    except ValueError:
        return resp.text


class SettlementRefused(RuntimeError):
    """The settlement service (or what answers at its URL) refused a request: its status and detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"settlement service refused: {detail}")
        self.status, self.detail = status, detail


def fetch_payout(settlement_url: str, address: str) -> dict[str, Any]:
    """GET /payouts/{address}; raises RuntimeError with what to do when the service can't answer
    (SettlementRefused when it refuses)."""
    resp = _request(settlement_url, "GET", f"/payouts/{address}")
    if resp.status_code != 200:
        raise SettlementRefused(resp.status_code, _detail(resp))
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or any(k not in data for k in ("account", "earned_units", "epoch", "proof")):
        raise SettlementRefused(404, f"GET /payouts/{address} answered without a payout")  # not the settlement's
    return data


def claim_with_key(key: str, settlement_url: str, rpc_url: str) -> dict[str, Any]:
    """Claim what the key's account can claim in the latest posted epoch; returns what happened.

    `claimed_units` is 0 when everything was already claimed (the contract pays nothing twice).
    """
    from eth_account import Account
    from web3 import Web3

    from datacoop.chain import Contracts, send_receipt

    account = Account.from_key(key).address
    info = fetch_payout(settlement_url, account)
    cumulative = int(info["cumulative_units"])
    if cumulative == 0:
        raise RuntimeError(f"{account} has nothing to claim yet (earned {units(info['earned_units'])}, none in a "
                           "posted epoch); wait for the next epoch (the operator posts one now with "
                           "`datacoop epoch post`)")
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    if not w3.is_connected():
        raise RuntimeError(f"no chain answers at {rpc_url}; pass --rpc")
    contracts = Contracts.at(w3, info["token_address"], info["market_address"])
    already = int(contracts.market.functions.claimed(account).call())
    result = {"account": account, "epoch": info["epoch"], "cumulative_units": cumulative, "claimed_units": 0,
              "tx_hash": None}
    if already >= cumulative:
        return result
    proof = [bytes.fromhex(p[2:]) for p in info["proof"]]
    receipt = send_receipt(w3, contracts.market.functions.claim(account, cumulative, proof), key)
    result.update(claimed_units=cumulative - already, tx_hash="0x" + bytes(receipt["transactionHash"]).hex())
    return result


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def units(amount: Any) -> str:
    """An amount of stablecoin units as the CLI writes money everywhere: `72,000,000 units`."""
    try:
        return f"{int(amount):,} units"
    except (TypeError, ValueError):  # not a whole number: shown as given rather than hidden
        return f"{amount} units"


def _epoch_line(epoch: dict[str, Any]) -> str:
    state = f"posted in {epoch['tx_hash']}" if epoch.get("posted") else "prepared, not yet posted"
    return (f"epoch {epoch['epoch']}: {units(epoch['total_units'])} over {epoch['accounts']} account(s), "
            f"root {epoch['root']}; {state}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root CLI."""
    from datacoop.cli import console, fail
    from datacoop.cli.common import (
        checked_url,
        expect_service,
        operator_token,
        read_key,
        refused,
        shaped,
        wallet_address,
    )

    epoch_app = typer.Typer(help="Payout epochs: the Merkle roots members claim against.", no_args_is_help=True)
    app.add_typer(epoch_app, name="epoch")

    def _epochs(settlement_url: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = settlement_url_of(settlement_url)  # outside the try: its failure (typer.Exit) is a RuntimeError too
        try:  # posting waits for the chain
            resp = _request(url, method, path, timeout_s=120, **kwargs)
        except RuntimeError as exc:
            fail(str(exc))
        if resp.status_code in (404, 405):  # the settlement's "no epoch yet", or another service's "Not Found"
            expect_service("settlement", url)
        elif resp.status_code == 200:
            shaped("settlement", url, _json(resp), "epoch", "root", "total_units")
        return resp

    @epoch_app.command("post")
    def epoch_post(
        token: Annotated[str | None, typer.Option("--token", help="operator token (default: "
                                                  "DATACOOP_SETTLEMENT_OPERATOR_TOKEN, else the local stack's "
                                                  "development token)")] = None,
        settlement_url: Annotated[str | None, typer.Option(help="settlement service URL")] = None,
    ) -> None:
        """Post a payout epoch now (operator): a root over every account's earnings so far, on chain."""
        secret = operator_token(token, "DATACOOP_SETTLEMENT_OPERATOR_TOKEN")
        resp = _epochs(settlement_url, "POST", "/epochs", headers={"Authorization": f"Bearer {secret}"})
        if resp.status_code == 409 and resp.json().get("type", "").endswith("/nothing-to-post"):
            console.print(f"nothing posted: {_detail(resp)}", highlight=False, markup=False, soft_wrap=True)
            return
        if resp.status_code != 200:
            fail(f"settlement refused ({resp.status_code}): {_detail(resp)}")
        console.print(_epoch_line(resp.json()), highlight=False, soft_wrap=True)

    @epoch_app.command("show")
    def epoch_show(settlement_url: Annotated[str | None, typer.Option(help="settlement service URL")] = None) -> None:
        """The latest epoch: its root, total, accounts and whether it is on chain."""
        resp = _epochs(settlement_url, "GET", "/epochs/latest")
        if resp.status_code == 404:
            console.print("no epoch yet: one is posted when due, or now with `datacoop epoch post`")
            return
        if resp.status_code != 200:
            fail(f"settlement refused ({resp.status_code}): {_detail(resp)}")
        console.print(_epoch_line(resp.json()), highlight=False, soft_wrap=True)

    @app.command()
    def payouts(
        address: Annotated[str | None, typer.Argument(help="wallet address (0x…); or give --key-file")] = None,
        key_file: Annotated[Path | None, typer.Option("--key-file", help="your wallet's key file, for its address "
                                                      "(instead of ADDRESS)")] = None,
        settlement_url: Annotated[str | None, typer.Option(help="settlement service URL")] = None,
    ) -> None:
        """Show what ADDRESS (or your wallet's) has earned, what the latest posted epoch lets it claim, and its
        proof."""
        if address is not None and key_file is not None:
            fail("give ADDRESS or --key-file, not both", 2)
        if address is None:
            from eth_account import Account

            address = str(Account.from_key(read_key(key_file)).address)
        address = wallet_address(address, "ADDRESS")
        url = settlement_url_of(settlement_url)
        try:
            info = fetch_payout(url, address)
        except SettlementRefused as exc:
            refused("settlement", url, exc.status, exc.detail)
        except RuntimeError as exc:
            fail(str(exc))
        console.print(f"account      {info['account']}")
        console.print(f"earned       {units(info['earned_units'])} (all orders so far)")
        if info["epoch"] is None:
            console.print("claimable    0 units: no payout epoch has been posted yet")
        elif info.get("claimed_units") is None:
            console.print(f"claimable    up to {units(info['cumulative_units'])} (cumulative in epoch "
                          f"{info['epoch']}; what you already claimed is unknown: the chain did not answer)")
        else:
            console.print(f"claimed      {units(info['claimed_units'])} so far")
            take = ("`datacoop claim --key-file FILE` takes them" if info["claimable_units"]
                    else "nothing to claim now: the next posted epoch holds what you earn from here")
            console.print(f"claimable    {units(info['claimable_units'])} now (cumulative "
                          f"{units(info['cumulative_units'])} in epoch {info['epoch']}; {take})")
        console.print(f"not yet in a posted epoch: {units(info['unposted_units'])}")
        console.print(f"proof        {len(info['proof'])} hashes; market {info['market_address']}")

    @app.command()
    def claim(
        key_file: Annotated[Path, typer.Option("--key-file", help="file holding your hex private key")],
        settlement_url: Annotated[str | None, typer.Option(help="settlement service URL")] = None,
        rpc: Annotated[str | None, typer.Option("--rpc", help="chain JSON-RPC URL")] = None,
    ) -> None:
        """Claim your earnings on chain, signed with your key (the tokens go to your account)."""
        url = settlement_url_of(settlement_url)
        chain = checked_url(rpc, "--rpc") if rpc else rpc_url_default()
        key = read_key(key_file)  # outside the try: its failure (typer.Exit) is an Exception too
        try:
            result = claim_with_key(key, url, chain)
        except SettlementRefused as exc:
            refused("settlement", url, exc.status, exc.detail)
        except Exception as exc:  # chain errors included: one red line
            fail(str(exc))
        if result["claimed_units"] == 0:
            console.print(f"{result['account']}: nothing new to claim (cumulative "
                          f"{units(result['cumulative_units'])} already claimed)")
        else:
            console.print(f"{result['account']}: claimed {units(result['claimed_units'])} "
                          f"(cumulative {units(result['cumulative_units'])}, epoch {result['epoch']}) in "
                          f"{result['tx_hash']}")
