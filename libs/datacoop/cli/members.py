"""Member commands (consent service): wallets, registration, consents, receipts, erasure."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from datacoop.cli.common import (
    call_at,
    configured_url,
    console,
    expect_service,
    fail,
    print_table,
    read_key,
    read_text_file,
    refusal,
    service_url,
    shaped,
    wallet_address,
)
from datacoop.http import ApiError, check
from datacoop.keys import RepeatedKey, load_document, write_secret
from services.consent.domain import CONSENT_ID_MAX, CONSENT_ID_PATTERN, CONSENT_ID_RULE, expiry_problem

if TYPE_CHECKING:  # eth-account takes ~0.8 s to import: loaded by the commands that sign, not by every start
    from services.consent.client import MemberWallet

T = TypeVar("T")

KeyFile = Annotated[Path | None, typer.Option("--key-file", help="file holding the wallet's hex private key")]
ConsentUrl = Annotated[str | None, typer.Option("--consent-url", help="consent service URL (default: the stack's)")]

wallet_app = typer.Typer(help="Local wallet keys.", no_args_is_help=True)
member_app = typer.Typer(help="Register as a member, see your state, ask to be forgotten.", no_args_is_help=True)
consent_app = typer.Typer(help="Grant, revoke and list consents; fetch receipts.", no_args_is_help=True)
receipt_app = typer.Typer(help="Consent receipts.", no_args_is_help=True)


def _wallet(key_file: Path | None, consent_url: str | None) -> tuple[MemberWallet, str]:
    """The member's wallet, signing for the consent service, and that service's URL."""
    from services.consent.client import MemberWallet

    key = read_key(key_file)
    url = service_url("consent", consent_url)
    return call_at("consent", url, MemberWallet, key, url), url  # asks GET /eip712


def _call(url: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return call_at("consent", url, fn, *args, **kwargs)


def _write(url: str, unsure: str, fn: Callable[..., T], *args: Any) -> T:
    """`_call` for a command that writes: when the service could not confirm it (503 event-log-unavailable, or
    no answer in time) it may have been recorded all the same, and `unsure` says what to check before
    sending it again."""
    def attempt() -> T:
        try:
            return fn(*args)
        except ApiError as exc:
            if exc.status == 503 and str(exc.problem.get("type", "")).endswith("/event-log-unavailable"):
                fail(unsure)
            raise
        except httpx.ReadTimeout:
            fail(unsure)
    return _call(url, attempt)


def _consent_id(value: str, what: str, then: str) -> str:
    """`value` if it can be a consent id (as the service takes them), else a failure naming `what` and the rule."""
    if len(value) > CONSENT_ID_MAX or not re.fullmatch(CONSENT_ID_PATTERN, value):
        fail(f"{what} {value!r} is not a consent id: one is {CONSENT_ID_RULE}; {then}")
    return value


def _key_option(key_file: Path | None) -> str:
    return f" --key-file {key_file}" if key_file is not None else ""


def _note(text: str) -> None:
    """A yellow note after a command's answer: something the user likely did not expect (one line, left to the
    terminal to wrap: the commands in it stay copyable)."""
    console.print(f"[yellow]note[/yellow]: {escape(text)}", highlight=False, soft_wrap=True)


@wallet_app.command("new")
def wallet_new(out: Annotated[Path, typer.Option("--out", help="where to write the key (mode 0600)")]) -> None:
    """Create a wallet key file; prints its address."""
    if out.is_dir():
        fail(f"--out {out} is a folder; name the key file to write, e.g. --out {out / 'me.key'}")
    if out.exists():
        fail(f"{out} exists; choose another path (a key file is never overwritten)")
    from eth_account import Account

    acct = Account.create()
    try:
        write_secret(out, (acct.key.hex() + "\n").encode())
    except FileExistsError:
        fail(f"{out} exists; choose another path (a key file is never overwritten)")
    except OSError as exc:  # its message names the temporary file beside `out`, not `out`
        fail(f"cannot write the key file {out}: {exc.strerror}; give --out a path in a folder you can write to")
    console.print(f"wallet {acct.address} written to {out}")


@wallet_app.command("show")
def wallet_show(key_file: KeyFile = None) -> None:
    """Print the address of a wallet key file (or of DATACOOP_KEY): what `payouts`, `member orders` and others
    name you by."""
    from eth_account import Account

    console.print(Account.from_key(read_key(key_file)).address, highlight=False)


@wallet_app.command("fund")
def wallet_fund(
    key_file: KeyFile = None,
    address: Annotated[str | None, typer.Option("--address", help="fund this address instead of the key's")] = None,
    eth: Annotated[str, typer.Option("--eth", metavar="ETH", help="test ETH for gas, 0 to 1000, e.g. 0.01 (at most "
                                                                  "18 decimals)")] = "1",
    units: Annotated[int, typer.Option("--units", min=0, help="MockStablecoin base units to mint "
                                                            "(6 decimals: 1,000,000 = 1 USD)")] = 100_000_000,
    rpc: Annotated[str | None, typer.Option("--rpc", help="local chain JSON-RPC (default: the stack's)")] = None,
    token: Annotated[str | None, typer.Option("--token", help="MockStablecoin address (default: the stack's)")] = None,
) -> None:
    """Local chain only: give a wallet test ETH for gas and mock stablecoin to pay orders with."""
    from web3 import Web3

    from datacoop.chain import ADMIN_KEY, ChainError, fund_local
    from datacoop.cli.stack import load_stack_file
    from infra.local import InfraError

    eth_wei = _wei(eth)
    if address is not None:
        to = Web3.to_checksum_address(wallet_address(address, "--address"))
    else:
        from eth_account import Account

        to = Account.from_key(read_key(key_file)).address
    admin_key = ADMIN_KEY  # anvil's account 0, which deploys the local stack
    if rpc is None or token is None:
        try:
            chain = load_stack_file().get("chain")
        except InfraError as exc:
            fail(f"{exc}; or pass --rpc and --token for another local chain")
        if not isinstance(chain, dict) or not chain.get("DATACOOP_TOKEN_ADDRESS"):
            fail("the running stack has no chain (started with --no-chain?); restart it with `datacoop up`")
        rpc, token = rpc or str(chain["url"]), token or str(chain["DATACOOP_TOKEN_ADDRESS"])
        admin_key = str(chain.get("DATACOOP_ADMIN_KEY") or ADMIN_KEY)
    wallet_address(token, "--token")  # a contract address has the same form
    try:
        balances = fund_local(rpc, token, to, eth_wei=eth_wei, units=units, admin_key=admin_key)
    except ChainError as exc:
        fail(str(exc))
    console.print(f"{to} now holds {balances['eth_wei'] / 10**18:,.4f} ETH and {balances['units']:,} stablecoin units "
                  f"({balances['units'] / 10**6:,.2f} USD)", highlight=False)


def _wei(eth: str) -> int:
    """--eth in wei, exactly (a decimal number of ETH, 1 ETH = 10**18 wei); a usage error otherwise."""
    try:
        amount = Decimal(eth.strip())
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        fail(f"--eth {eth!r} is not a number; give ETH as a decimal number, e.g. --eth 0.01", 2)
    if not 0 <= amount <= 1000:
        fail(f"--eth {eth} is out of range; give 0 to 1000 ETH", 2)
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -18:
        fail(f"--eth {eth} has more than 18 decimals (1 wei is 0.000000000000000001 ETH); round it", 2)
    return int(amount.scaleb(18))


@member_app.command("register")
def member_register(key_file: KeyFile = None, consent_url: ConsentUrl = None) -> None:
    """Register the wallet as a member (signs RegisterMember)."""
    wallet, url = _wallet(key_file, consent_url)
    view = _call(url, wallet.register)
    console.print(f"registered {view['member']} (next nonce {view['next_nonce']})")


@member_app.command("show")
def member_show(key_file: KeyFile = None, consent_url: ConsentUrl = None, as_json: Annotated[bool, typer.Option(
        "--json", help="the consent service's answer as JSON (each consent's history included)")] = False) -> None:
    """Your member state: registration, the next nonce your wallet signs with, and your consents."""
    wallet, url = _wallet(key_file, consent_url)
    view = shaped("consent", url, _call(url, wallet.state), "member", "registered", "next_nonce", "consents")
    if as_json:
        console.print_json(data=view)
        return
    if view.get("erased"):
        state = "erased (you asked to be forgotten: your consents ended, and the vault destroys your data key)"
    else:
        state = f"registered {view.get('registered_at') or ''}".rstrip() if view["registered"] else "not registered"
    console.print(f"member {view['member']}: {state} (next nonce {view['next_nonce']})", highlight=False,
                  soft_wrap=True)
    if not view["consents"]:
        console.print("no consents yet: `datacoop consent catalog` lists what you can grant, then "
                      f"`datacoop consent grant --purpose P --categories C{_key_option(key_file)}`",
                      highlight=False, soft_wrap=True)
        return
    table = Table("consent", "purpose", "categories", "state", "granted (UTC)", "expires", "ended (UTC)",
                  title="consents", title_justify="left")
    for c in view["consents"]:
        ended = [h for h in c.get("history") or [] if h["state"] != "active"]
        table.add_row(c["consent_id"], c["purpose"], ", ".join(c["categories"]), c["state"], str(c["granted_at"]),
                      c["expires_at"] or "-", f"{ended[-1]['at']}: {ended[-1]['reason']}" if ended else "-")
    print_table(table, whole=(0,))  # a whole id: `revoke` and `receipt` take it


@member_app.command("records")
def member_records(key_file: KeyFile = None, vault_url: Annotated[str | None, typer.Option(
        "--vault-url", help="vault URL (default: the stack's)")] = None) -> None:
    """Your uploads at the vault: category, records, when (no contents; a signed read of your own data)."""
    from services.vault.client import VaultClient

    key = read_key(key_file)
    url = service_url("vault", vault_url)
    client = call_at("vault", url, VaultClient, key, url)  # asks GET /eip712
    data = shaped("vault", url, call_at("vault", url, client.summary), "uploads")
    if data.get("keys_shredded") or data.get("erased"):
        console.print(f"{data['member']} asked to be forgotten: the vault destroyed the data key, so no record of "
                      "yours can be read by anyone", highlight=False, soft_wrap=True)
    if not data["uploads"]:
        if not (data.get("keys_shredded") or data.get("erased")):
            console.print("no uploads yet: contribute a file with `datacoop contribute FILE --category C`",
                          highlight=False, soft_wrap=True)
        return
    table = Table(title=f"uploads of {data['member']}")
    for col in ("upload", "category", "records", "schema", "contributed (UTC)"):
        table.add_column(col)
    for u in data["uploads"]:
        table.add_row(u["upload_id"], u["category"], f"{u['records']:,}", f"v{u['schema_version']}",
                      str(u["contributed_at"]))
    print_table(table, whole=(0,))


@member_app.command("orders")
def member_orders_cmd(key_file: KeyFile = None, market_url: Annotated[str | None, typer.Option(
        "--market-url", help="marketplace URL (default: the stack's)")] = None) -> None:
    """Paid orders of dataset versions that hold your records: who bought what, and how many of your rows."""
    from services.marketplace.client import member_orders

    key = read_key(key_file)
    url = service_url("marketplace", market_url)
    orders = call_at("marketplace", url, member_orders, url, key)
    if not isinstance(orders, list):
        shaped("marketplace", url, orders, "order_id")  # names the service answering there instead
    if not orders:
        console.print("no paid order has used your records yet (`datacoop payouts --key-file FILE` shows what you "
                      "earned)", highlight=False, soft_wrap=True)
        return
    table = Table(title="paid orders of versions holding your records")
    for col in ("order", "dataset", "v", "offer", "price", "your rows", "researcher", "paid (UTC)"):
        table.add_column(col)
    for o in orders:
        who = o["researcher"]
        buyer = " / ".join(x for x in (who.get("name"), who.get("organisation")) if x) or "-"
        table.add_row(o["order_id"], o["dataset_id"], str(o["version"]), o["offer"], f"{o['price_units']:,}",
                      f"{o['your_records']:,}", buyer, str(o["paid_at"]))
    print_table(table, whole=(0,))


@member_app.command("erase")
def member_erase(yes: Annotated[bool, typer.Option("--yes", help="confirm: this cannot be undone")] = False,
                 wait: Annotated[float, typer.Option(
                     "--wait", min=0, max=3600,
                     help="seconds to wait for the vault to confirm it destroyed your data key (0: do not wait)")]
                 = 30.0,
                 key_file: KeyFile = None, consent_url: ConsentUrl = None,
                 vault_url: Annotated[str | None, typer.Option("--vault-url", help="vault URL (default: the stack's)")]
                 = None) -> None:
    """Ask to be forgotten: every consent ends and the vault destroys your data key (this waits until the vault
    confirms that, or --wait runs out)."""
    if not yes:
        fail("erasure cannot be undone; run again with --yes to confirm", 2)
    wallet, url = _wallet(key_file, consent_url)

    def erase() -> None:
        try:
            wallet.erase()
        except ApiError as exc:
            if exc.status == 410:  # this wallet asked to be forgotten before
                console.print(f"nothing to do: {exc.problem.get('detail', 'already erased')}", highlight=False,
                              soft_wrap=True)  # asked before: what was asked for holds
                raise typer.Exit(0) from None
            raise
    _call(url, erase)
    console.print(f"erasure requested for {wallet.address}: every consent of yours has ended", highlight=False)
    check_later = (f"the vault destroys your data key as soon as it reads the request from the event log; "
                   f"`datacoop member records{_key_option(key_file)}` says when it has")
    vurl = configured_url("vault", vault_url) if wait > 0 else None
    if vurl is None:  # not asked to wait, or no vault named (--vault-url, DATACOOP_VAULT_URL, `datacoop up`)
        console.print(check_later, highlight=False, soft_wrap=True)
        return
    from services.vault.client import VaultClient

    key = read_key(key_file)
    vault: VaultClient | None = None
    deadline = time.monotonic() + wait
    with console.status("waiting for the vault to destroy your data key"):
        while True:
            try:
                vault = vault or VaultClient(key, vurl)  # asks GET /eip712
                shredded = bool(vault.summary().get("keys_shredded"))
            except (ApiError, httpx.HTTPError, ValueError) as exc:  # not ready, not reachable: asked again
                shredded, why = False, str(exc.problem.get("detail", exc)) if isinstance(exc, ApiError) else str(exc)
            else:
                why = "it has not read the request yet"
            if shredded:
                console.print("the vault destroyed your data key: no record of yours can be read by anyone, now or "
                              "from a replay of the log", highlight=False, soft_wrap=True)
                return
            if time.monotonic() >= deadline:
                _note(f"the vault did not confirm within {wait:g} s ({why}); {check_later}")
                return
            time.sleep(0.25)


@consent_app.command("catalog")
def consent_catalog(consent_url: ConsentUrl = None) -> None:
    """The purposes and data categories a consent can name (no key needed)."""
    url = service_url("consent", consent_url)
    catalog = shaped("consent", url, call_at("consent", url, lambda: check(httpx.get(f"{url}/catalog", timeout=10))),
                     "version", "purposes", "categories")
    version = f"catalog version {catalog['version']}"
    for heading, entries, title in [("purpose (--purpose)", catalog["purposes"], version),
                                    ("category (--categories)", catalog["categories"], None)]:
        table = Table(heading, "what it covers", title=title, title_justify="left")
        for name, description in entries.items():
            table.add_row(name, description)
        print_table(table, whole=(0,))


def _date_alone(text: str) -> bool:
    """Whether `text` is a date without a time (2027-06-30, or the compact 20270630 that ISO allows too)."""
    try:
        date.fromisoformat(text.strip())
    except ValueError:
        return False
    return True


@consent_app.command("grant")
def consent_grant(
    purpose: Annotated[str, typer.Option(help="a purpose from the catalog (`datacoop consent catalog` lists them)")],
    categories: Annotated[str, typer.Option(help="comma-separated data categories (see `datacoop consent "
                                                 "catalog`)")],
    expires: Annotated[str | None, typer.Option(help="expiry, ISO date/time in UTC; a date alone means the end "
                                                     "of that day, e.g. 2027-06-30 is 2027-06-30T23:59:59Z")] = None,
    consent_id: Annotated[str | None, typer.Option(
        "--consent-id", help="the new consent's id (default: a fresh UUID); give the id of a grant whose answer "
                             "was lost to retry it without recording it twice")] = None,
    key_file: KeyFile = None, consent_url: ConsentUrl = None,
) -> None:
    """Grant consent for a purpose and data categories (signs GrantConsent)."""
    expires_at = None
    if expires:
        try:
            expires_at = datetime.fromisoformat(expires)
        except ValueError as exc:  # the calendar's word where it is one ("day is out of range for month")
            why = "is not an ISO date/time" if "isoformat" in str(exc) else f"is not a date: {exc}"
            fail(f"--expires {expires!r} {why}; use e.g. 2027-06-30 or 2027-06-30T12:00:00Z", 2)
        if _date_alone(expires):  # in effect through that day
            expires_at = expires_at.replace(hour=23, minute=59, second=59)
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        problem = expiry_problem(expires_at, datetime.now(UTC), none="leave --expires out")
        if problem:
            fail(f"--expires {expires} {problem}", 2)
    cats = [c.strip() for c in categories.split(",") if c.strip()]
    if not cats:
        fail("--categories needs at least one category, e.g. --categories health,fitness", 2)
    twice = sorted({c for c in cats if cats.count(c) > 1})
    if twice:
        fail(f"--categories names {', '.join(twice)} more than once; name each category once, e.g. "
             f"--categories {','.join(dict.fromkeys(cats))}", 2)
    if consent_id is not None:
        _consent_id(consent_id, "--consent-id", "choose another, or leave --consent-id out for a fresh one")
    consent_id = consent_id or str(uuid.uuid4())
    wallet, url = _wallet(key_file, consent_url)
    key = _key_option(key_file)

    def grant() -> dict[str, Any] | None:
        try:
            return wallet.grant(purpose, cats, expires_at, consent_id)
        except ApiError as exc:
            if exc.status == 409 and str(exc.problem.get("type", "")).endswith("/already-recorded"):
                return None  # a retry (--consent-id) of a grant that was recorded
            if exc.status == 422:  # what this command signs is well formed: the refusal is of the options given
                fail(refusal(exc.status, exc.problem.get("detail", exc.problem)), 2)
            raise

    view = _write(url, f"the consent service could not confirm that consent {consent_id} was recorded (the "
                  f"event log did not answer); it may have been: check `datacoop consent list{key}` before granting "
                  f"again, and if {consent_id} is not listed, retry with the same id: add --consent-id {consent_id} "
                  "(a grant is never recorded twice under one id)", grant)
    if view is None:
        console.print(f"consent {consent_id} was already recorded (an earlier try of this grant landed); nothing "
                      f"to do: `datacoop consent list{key}` shows it", highlight=False, soft_wrap=True)
        return
    until = f"until {view['expires_at']}" if view.get("expires_at") else "until you revoke it"
    console.print(f"consent {view['consent_id']} granted: {view['purpose']} on {', '.join(view['categories'])} "
                  f"({view['state']}, {until})", highlight=False)
    overlaps = view.get("overlaps") or []
    if overlaps:
        others = "; ".join(f"{o['consent_id']} ({', '.join(o['categories'])})" for o in overlaps)
        _note(f"your other active consent(s) for {view['purpose']} already cover some of these categories: "
              f"{others}. Datasets of that purpose use your records while any of them is active; to withdraw, "
              f"revoke each (`datacoop consent revoke ID{key}`)")


@consent_app.command("revoke")
def consent_revoke(consent_id: str, key_file: KeyFile = None, consent_url: ConsentUrl = None) -> None:
    """Withdraw a consent (signs RevokeConsent)."""
    key = _key_option(key_file)
    _consent_id(consent_id, "consent", f"list yours with `datacoop consent list{key}`")
    wallet, url = _wallet(key_file, consent_url)
    view = _write(url, f"the consent service could not confirm that consent {consent_id} was revoked (the "
                  f"event log did not answer); it may have been: check `datacoop consent list{key}`, and if "
                  f"{consent_id} is still active, revoke it again", wallet.revoke, consent_id)
    console.print(f"consent {consent_id} is now {view['state']}", highlight=False)
    covering = view.get("still_covered_by") or []
    if covering:
        others = "; ".join(f"{c['consent_id']} ({', '.join(c['categories'])})" for c in covering)
        commands = " and ".join(f"`datacoop consent revoke {c['consent_id']}{key}`" for c in covering)
        _note(f"your other active consent(s) for {view['purpose']} share categories with this one: {others}. A "
              "dataset of that purpose whose categories all fall within one of them may still use your records; "
              f"to stop that, revoke them too: {commands}")


@consent_app.command("list")
def consent_list(key_file: KeyFile = None, consent_url: ConsentUrl = None) -> None:
    """Your consents with their state (active, revoked, expired)."""
    wallet, url = _wallet(key_file, consent_url)
    table = Table("consent", "purpose", "categories", "state", "expires")
    for c in _call(url, wallet.consents):
        table.add_row(c["consent_id"], c["purpose"], ", ".join(c["categories"]), c["state"], c["expires_at"] or "-")
    print_table(table, whole=(0,))  # a whole id: `revoke` and `receipt` take it


@consent_app.command("receipt")
def consent_receipt(consent_id: str, out: Annotated[Path, typer.Option("--out", help="file to write")],
                    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a file already at --out")]
                    = False,
                    key_file: KeyFile = None, consent_url: ConsentUrl = None) -> None:
    """Save the signed consent receipt (verify it with `datacoop receipt verify FILE`)."""
    if out.is_dir():
        fail(f"--out {out} is a folder; name the file to write, e.g. --out {out / 'receipt.json'}")
    if out.exists() and not overwrite:
        fail(f"{out} already exists; pass --overwrite to replace it, or another --out")
    _consent_id(consent_id, "consent", f"list yours with `datacoop consent list{_key_option(key_file)}`")
    wallet, url = _wallet(key_file, consent_url)
    receipt = _call(url, wallet.receipt, consent_id)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(receipt, indent=2) + "\n")
    except OSError as exc:
        fail(f"cannot write the receipt to --out {out}: {exc.strerror}; give a path in a folder you can write to")
    console.print(f"receipt written to {out}")


@receipt_app.command("verify")
def receipt_verify(
    file: Annotated[Path, typer.Argument(help="a receipt JSON file")],
    public_key: Annotated[str | None, typer.Option(help="the cooperative's receipt key (base64, from GET "
                                                        "/receipt-key): checks offline")] = None,
    consent_url: ConsentUrl = None,
) -> None:
    """Check a consent receipt's Ed25519 signature against the cooperative's key: the one given with
    --public-key (offline), else the one the consent service serves. The key written in a receipt is
    never trusted by itself: anyone can sign a forged receipt and name their own key in it."""
    from services.consent.receipts import ReceiptInvalid, verify_receipt

    if not file.exists():
        fail(f"{file} does not exist; pass a receipt saved by `datacoop consent receipt ID --out FILE`", 2)
    text = read_text_file(file, "receipt file", "a receipt saved by `datacoop consent receipt ID --out FILE`")
    try:
        document = load_document(text)
    except json.JSONDecodeError as exc:
        fail(f"{file} is not JSON ({exc.msg} at line {exc.lineno}); pass a receipt saved by "
             "`datacoop consent receipt`")
    except RepeatedKey as exc:  # one reader would see the signed value, another the value written beside it
        fail(f"receipt NOT valid: {exc}, so it does not read the same to every reader; a receipt the "
             "cooperative signed names each key once. Fetch it again with `datacoop consent receipt ID --out FILE`")
    if not isinstance(document, dict):
        fail(f"{file} holds JSON but not a receipt object")
    key_note = "the given key"
    if public_key is None:
        url = service_url("consent", consent_url)
        try:
            public_key = str(check(httpx.get(f"{url}/receipt-key", timeout=10))["public_key"])
        except ApiError as exc:
            if exc.status in (404, 405):
                expect_service("consent", url)
            fail(f"cannot fetch the cooperative's receipt key from {url}/receipt-key ({exc.status}: "
                 f"{exc.problem.get('detail', exc.problem)}); to check offline pass --public-key with the key from "
                 "GET /receipt-key")
        except httpx.HTTPError as exc:
            fail(f"cannot reach the consent service at {url} for the cooperative's receipt key ({exc}); start the "
                 "stack (`datacoop up`) or pass --consent-url; to check offline pass --public-key with the key from "
                 "GET /receipt-key")
        except (KeyError, TypeError, ValueError):  # a 200 without the key: not the consent service's answer
            expect_service("consent", url)
            fail(f"the consent service at {url} answered GET /receipt-key without a key; to check offline pass "
                 "--public-key with the key from GET /receipt-key")
        key_note = f"the cooperative's key from {url}/receipt-key"
    if key_note == "the given key":  # a malformed --public-key is the flag's fault, not the receipt's
        try:
            if len(base64.b64decode(public_key, validate=True)) != 32:
                raise ValueError
        except ValueError:
            fail(f"--public-key {public_key!r} is not an Ed25519 public key (32 bytes, base64); copy it from "
                 "GET /receipt-key of the consent service", 2)
    try:
        verify_receipt(document, public_key)
    except ReceiptInvalid as exc:
        fail(f"receipt NOT valid: {exc}")
    console.print(f"[green]valid[/green]: consent {escape(str(document.get('record_id')))} of "
                  f"{escape(str((document.get('data_subject') or {}).get('id')))}, {_receipt_state(document)}; "
                  f"signed by {escape(key_note)}", highlight=False, soft_wrap=True)


def _receipt_state(receipt: dict[str, Any]) -> str:
    """The consent's state as the receipt records it (when it was issued), with when it ended, in markup."""
    state, issued = str(receipt.get("state")), receipt.get("issued_at")
    ended = [h for h in receipt.get("state_history") or [] if isinstance(h, dict) and h.get("state") == state]
    if state in ("revoked", "expired"):
        when = f" at {ended[-1].get('at')} ({ended[-1].get('reason')})" if ended else ""
        text = f"[bold yellow]{state}[/bold yellow]{escape(when)}: it no longer lets anyone use the data"
    else:
        expiry = receipt.get("expiry")
        text = f"[bold]{escape(state)}[/bold]" + (f", until {escape(str(expiry))}" if expiry else "")
    return text + f" (as of the receipt's issue, {escape(str(issued))})"


def register(app: typer.Typer) -> None:
    """Add the member commands to the root CLI."""
    app.add_typer(wallet_app, name="wallet")
    app.add_typer(member_app, name="member")
    app.add_typer(consent_app, name="consent")
    app.add_typer(receipt_app, name="receipt")
