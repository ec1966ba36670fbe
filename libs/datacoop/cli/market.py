"""Researcher commands of the marketplace.

    datacoop researcher register --name N --wallet 0x…   (prints the API key once, saves it)
    datacoop catalog
    datacoop order DATASET[@VERSION]:OFFER              (offer: download | query | compute)
    datacoop buy ORDER --key-file K                     (approve + purchase on chain)
    datacoop download ORDER --out FILE                  (signed grant, streamed, sha256 checked)
    datacoop query ORDER QUERY.json [--json]            (a DP aggregate; spends epsilon)
    datacoop orders                                     (placed, paid, expired, refund-due, refunded)
    datacoop refunds [--all]                            (operator: payments that paid no order)
    datacoop refund ORDER [--key-file K]                (operator: refund(orderId) on chain)

The API key comes from --api-key-file, else DATACOOP_API_KEY, else var/run/researcher.apikey (where
`register` saves it). The marketplace URL from --market-url, DATACOOP_MARKETPLACE_URL or the stack.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from datacoop.cli.common import (
    call_at,
    console,
    fail,
    not_the_service,
    print_table,
    read_key,
    read_text_file,
    service_at,
    service_url,
    shaped,
    wallet_address,
)
from datacoop.cli.stack import RESEARCHER_KEY_FILE

T = TypeVar("T")

_OFFER = re.compile(r"^(?P<dataset>[a-z][a-z0-9-]{1,63})(@(?P<version>[0-9]+))?:(?P<offer>download|query|compute)$")

def _offer_fault(text: str) -> str:
    """Which part of a DATASET[@VERSION]:OFFER that does not match is wrong, as a clause (or "" when unclear)."""
    dataset, colon, offer = text.rpartition(":")
    if not colon:
        return " (no `:OFFER` at its end)"
    name, at, version = dataset.partition("@")
    if offer not in ("download", "query", "compute"):
        close = difflib.get_close_matches(offer, ["download", "query", "compute"], n=1)
        return f" (unknown offer {offer!r}" + (f"; did you mean {close[0]}?)" if close else ")")
    if not re.fullmatch(r"[a-z][a-z0-9-]{1,63}", name):
        return (f" (dataset id {name!r}: lower-case letters, digits and hyphens, starting with a letter; "
                "`datacoop catalog` lists them)")
    if at and not version.isdigit():
        return f" (version {version!r} is not a number)"
    return ""


researcher_app = typer.Typer(no_args_is_help=True, help="Researcher accounts of the marketplace.")
MarketUrl = Annotated[str | None, typer.Option("--market-url", help="marketplace URL (default: the stack's)")]
ApiKeyFile = Annotated[Path | None, typer.Option("--api-key-file", help="file holding your API key")]


# POST /researchers mints "dcr_" + secrets.token_urlsafe(32) (services/marketplace/api.py: 43 characters after
# the prefix; the jobs service's stand-in marketplace for tests mints 32): the prefix is what tells a key
_API_KEY = re.compile(r"^dcr_[A-Za-z0-9_-]{16,128}$")
_REGISTER = "`datacoop researcher register --name N` prints one and saves it"
_KEY_RULE = ("dcr_ then 16 to 128 letters, digits, - or _ (`researcher register` prints one with 43 after the "
             "prefix)")


def _api_key(path: Path | None) -> str:
    """The researcher's API key from --api-key-file, DATACOOP_API_KEY or the one `researcher register` saved,
    checked here: anything else (a wallet's private key, say) is refused before it is sent anywhere."""
    if path is not None:
        if not path.exists():
            fail(f"API key file {path} does not exist; {_REGISTER}", 2)
        return _checked_api_key(read_text_file(path, "API key file", "the file holding your API key").strip(),
                                f"--api-key-file {path}")
    env = os.environ.get("DATACOOP_API_KEY", "").strip()
    if env:
        return _checked_api_key(env, "DATACOOP_API_KEY")
    if RESEARCHER_KEY_FILE.exists():  # `datacoop up` removes it: a new stack has never seen the key
        return _checked_api_key(read_text_file(RESEARCHER_KEY_FILE, "API key file", "the file holding your API key")
                                .strip(), str(RESEARCHER_KEY_FILE))
    fail("no API key: pass --api-key-file FILE (where `--save FILE` kept it) or set DATACOOP_API_KEY; without a "
         "key, register with `datacoop researcher register --name N` (a key saved by an earlier `datacoop up` is "
         "gone with that stack)", 2)


def _checked_api_key(key: str, where: str) -> str:
    if not _API_KEY.match(key):
        fail(f"{where} does not hold a researcher API key ({_KEY_RULE}: it has {_shape(key)}); nothing was sent. "
             f"Pass the file of your API key ({_REGISTER})")
    return key


def _shape(key: str) -> str:
    """What is wrong with `key` in words, never the key itself (a secret)."""
    if not key.startswith("dcr_"):
        return "no dcr_ prefix"
    rest = key.removeprefix("dcr_")
    if re.fullmatch(r"[A-Za-z0-9_-]*", rest):
        return f"{len(rest)} character(s) after dcr_"
    return "a character other than letters, digits, - or _ after dcr_"


def _client(url: str, api_key_file: Path | None) -> Any:
    from services.marketplace.client import ResearcherClient

    return ResearcherClient(url, _api_key(api_key_file))


def _order_id(value: str) -> str:
    """The order id `value` (a UUID) in its canonical form; anything else is refused here, before it is sent."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        fail(f"ORDER {value!r} is not an order id: an order id is a UUID such as "
             "3f2b1c0e-8d4a-4b6e-9f10-2a3b4c5d6e7f, as `datacoop order` printed it (`datacoop orders` lists yours)", 2)


@researcher_app.command("register")
def register_cmd(
    name: Annotated[str, typer.Option("--name", help="your name")],
    wallet: Annotated[str | None, typer.Option("--wallet", help="the address that pays (0x…)")] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="take the wallet from this key")] = None,
    organisation: Annotated[str, typer.Option("--organisation", help="your organisation")] = "",
    save: Annotated[Path, typer.Option("--save", help="where to keep the API key (mode 0600)")] = RESEARCHER_KEY_FILE,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an API key already saved at --save")]
    = False,
    market_url: MarketUrl = None,
) -> None:
    """Open a researcher account; the API key is shown once and saved (to var/run/researcher.apikey, or --save)."""
    from eth_account import Account

    from services.marketplace.client import register_researcher

    if wallet is not None:
        wallet = wallet_address(wallet, "--wallet")
        if key_file is not None and Account.from_key(read_key(key_file)).address.lower() != wallet.lower():
            fail(f"--wallet {wallet} is not the address of --key-file {key_file} "
                 f"({Account.from_key(read_key(key_file)).address}); pass one of them", 2)
    else:
        if key_file is None and not os.environ.get("DATACOOP_KEY"):
            fail("no paying wallet: pass --wallet 0x… (the address that pays), or --key-file FILE / "
                 "DATACOOP_KEY to take it from your key", 2)
        wallet = wallet_address(Account.from_key(read_key(key_file)).address, "wallet")
    if save.is_dir():
        fail(f"--save {save} is a folder; name the file to keep the API key in, e.g. --save {save / 'api.key'}")
    if save.exists() and not overwrite:  # before registering: an account whose only key is lost is no use
        fail(f"an API key is already saved at {save} (shown once when it was made); keep it and pass --save "
             "ANOTHER_FILE for this account, or --overwrite to replace it")
    url = service_url("marketplace", market_url)
    registered = call_at("marketplace", url, register_researcher, url, name, wallet, organisation)
    result = shaped("marketplace", url, registered, "api_key", "researcher_id")
    try:
        save.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(save, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, even briefly
        with os.fdopen(fd, "w") as out:
            out.write(result["api_key"] + "\n")
        save.chmod(0o600)  # a file that existed keeps its old mode through O_CREAT
    except OSError as exc:  # registered already: the key must not be lost with the error
        fail(f"registered researcher {result['researcher_id']}, but cannot save its API key to --save {save} "
             f"({exc.strerror}); keep this key, shown once: {result['api_key']}")
    console.print(f"registered researcher {result['researcher_id']} paying from {wallet}")
    console.print(f"API key (shown once, saved to {save}): {result['api_key']}", highlight=False)


def catalog(market_url: MarketUrl = None, every: Annotated[bool, typer.Option(
        "--all", help="superseded versions too (no longer on sale)")] = False) -> None:
    """Every dataset version on sale: guarantees and offers (--all: superseded versions too)."""
    from services.consent.client import check

    url = service_url("marketplace", market_url)
    answer = call_at("marketplace", url, lambda: check(httpx.get(f"{url}/catalog", timeout=30)))
    data = shaped("marketplace", url, answer, "versions")
    if not every:
        hidden = sum(1 for v in data["versions"] if v.get("status") == "superseded")
        data = {**data, "versions": [v for v in data["versions"] if v.get("status") != "superseded"]}
        if hidden and not data["versions"]:
            console.print(f"no version is on sale now ({hidden} superseded: `datacoop catalog --all` lists them)",
                          highlight=False, soft_wrap=True)
            return
    if not data["versions"]:
        console.print("nothing is on sale yet: a dataset version is listed here once the anonymizer publishes one "
                      "(`datacoop dataset list` shows the datasets defined and their versions; the operator builds "
                      "one now with `datacoop dataset build ID`)", highlight=False)
        return
    table = Table(title="datacoop catalog", box=box.SIMPLE_HEAD)
    for col in ("dataset", "purpose", "version", "rows", "guarantees", "offers (price units)"):
        table.add_column(col)
    for v in data["versions"]:
        g = v["guarantees"]
        offers = ", ".join(f"{o['offer']} {o['price_units']:,}" for o in v["offers"]) or "-"
        table.add_row(v["dataset_id"], f"[dim]{v['purpose']}[/dim]", f"{v['version']} {v['status']}",
                      f"{v['rows']:,}", f"k {g['k']}, l {g['l_diversity']:g}, ε {g['epsilon']:g}", offers)
    print_table(table, whole=(0, 5))  # ids and prices
    for v in data["versions"]:  # what an offer gives less of than one may expect (group-by cells on a small version)
        for o in v["offers"]:
            if o.get("note"):
                console.print(f"note: {v['dataset_id']} v{v['version']} {o['offer']}: {o['note']}", highlight=False,
                              markup=False, soft_wrap=True)
        for why in (v.get("not_sold") or {}).values():  # an offer missing from the list, and why
            console.print(f"[dim]{escape(v['dataset_id'])} v{v['version']}: {escape(str(why))}[/dim]",
                          highlight=False, soft_wrap=True)


def order(
    offer: Annotated[str, typer.Argument(help="DATASET[@VERSION]:OFFER, e.g. adult-census@2:download "
                                              "(no version: the current one)")],
    market_url: MarketUrl = None, api_key_file: ApiKeyFile = None,
) -> None:
    """Place an order; pay it with `datacoop buy ORDER` before it expires."""
    m = _OFFER.match(offer)
    if not m:
        fail(f"offer {offer!r} is not DATASET:OFFER or DATASET@VERSION:OFFER{_offer_fault(offer)}, OFFER one of "
             "download, query, compute (e.g. adult-census:query or census-demo@2:download)", 2)
    url = service_url("marketplace", market_url)
    client = _client(url, api_key_file)
    try:
        placed = (call_at("marketplace", url, client.order, m["dataset"], int(m["version"]), m["offer"]) if m["version"]
                  else call_at("marketplace", url, client.order_current, m["dataset"], m["offer"]))
    except LookupError as exc:
        fail(str(exc))
    console.print(f"order {placed['order_id']}: {placed['offer']} of {placed['dataset_id']} v{placed['version']} "
                  f"for {placed['price_units']:,} units; pay before {placed['expires_at']} with "
                  f"`datacoop buy {placed['order_id']} --key-file K`", highlight=False)
    if placed.get("offer_note"):
        console.print(f"note: {placed['offer_note']}", highlight=False, markup=False, soft_wrap=True)


def buy(
    order_id: Annotated[str, typer.Argument(help="the order id `datacoop order` printed")],
    key_file: Annotated[Path | None, typer.Option("--key-file", help="the paying wallet's hex private key")] = None,
    rpc: Annotated[str | None, typer.Option("--rpc", help="chain JSON-RPC (default: DATACOOP_CHAIN_URL / the "
                                                          "stack's)")] = None,
    market_url: MarketUrl = None, api_key_file: ApiKeyFile = None,
) -> None:
    """Pay an order on chain: approve the market for the price, then purchase(order id, price)."""
    from datacoop.chain import ChainError
    from datacoop.cli.settlement import rpc_url_default
    from services.marketplace.client import pay

    order_id = _order_id(order_id)
    url = service_url("marketplace", market_url)
    client = _client(url, api_key_file)
    found = shaped("marketplace", url, call_at("marketplace", url, client.get_order, order_id), "status", "price_units")
    if found["status"] == "paid":
        fail(f"order {order_id} is already paid (tx {found['tx_hash']})")
    if found["status"] in ("expired", "refund-due", "refunded"):
        fail(found.get("note") or f"order {order_id} expired at {found['expires_at']}; place a new one with "
                                   "`datacoop order`")
    if found.get("note"):  # e.g. its version was withdrawn from sale: a payment now would be refused
        fail(f"not paying: {found['note']}")
    if found.get("offer_note"):  # what the offer gives less of: said, not a reason to refuse
        console.print(f"note: {found['offer_note']}", highlight=False, markup=False, soft_wrap=True)
    payment = shaped("marketplace", url, call_at("marketplace", url, client.catalog), "payment")["payment"]
    if not payment.get("market") or not payment.get("token"):
        fail("the marketplace does not know the market contract (DATACOOP_MARKET_ADDRESS); ask the operator")
    key = read_key(key_file)
    try:
        tx = pay(rpc or rpc_url_default(), payment["token"], payment["market"], key, order_id, found["price_units"])
    except (ChainError, ValueError) as exc:
        fail(f"payment failed: {exc}")
    console.print(f"paid order {order_id}: {found['price_units']:,} units in tx {tx}; access opens once "
                  "settlement confirms it", highlight=False)


def download(
    order_id: Annotated[str, typer.Argument(help="a paid download order")],
    out: Annotated[Path, typer.Option("--out", help="where to write the Parquet file (folders are made)")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a file already at --out")] = False,
    market_url: MarketUrl = None, api_key_file: ApiKeyFile = None,
) -> None:
    """Download the order's version as Parquet (signed grant, streamed, sha256 checked)."""
    order_id = _order_id(order_id)
    if out.is_dir():
        fail(f"--out {out} is a folder; name the file to write, e.g. --out {out / 'dataset.parquet'}")
    if out.exists() and not overwrite:
        fail(f"{out} already exists; pass --overwrite to replace it, or another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot make the folder {out.parent} for --out: {exc.strerror}")
    url = service_url("marketplace", market_url)
    client = _client(url, api_key_file)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True,
                  disable=not console.is_terminal) as progress:  # no bar (nor its blank line) in a pipe
        task = progress.add_task("downloading", total=None)
        try:
            result = call_at("marketplace", url, client.download, order_id, out,
                             on_progress=lambda done, total: progress.update(task, completed=done,
                                                                             total=total or None))
        except OSError as exc:  # the file can't be written there (a read-only or special folder, a full disk)
            fail(f"cannot write --out {out}: {exc.strerror or exc}; pass an --out in a folder you can write to")
    console.print(f"wrote {result['bytes']:,} bytes to {result['path']} (sha256 {result['sha256'][:16]}…, as "
                  "published)", highlight=False)


def query(
    order_id: Annotated[str, typer.Argument(help="a paid query order")],
    query_file: Annotated[Path, typer.Argument(help="the query as JSON (see docs/marketplace.md)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the marketplace's answer as JSON")] = False,
    market_url: MarketUrl = None, api_key_file: ApiKeyFile = None,
) -> None:
    """Ask a differentially private aggregate; prints its cells with the noise scale and the budget spent and
    left (--json: the answer as the marketplace gives it)."""
    order_id = _order_id(order_id)
    if query_file.is_dir():
        fail(f"query file {query_file} is a folder; pass the JSON file holding the query (see docs/marketplace.md)")
    if not query_file.is_file():
        fail(f"query file {query_file} does not exist; write the query as JSON (see docs/marketplace.md)", 2)
    try:
        body = json.loads(query_file.read_text())
    except OSError as exc:
        fail(f"cannot read {query_file}: {exc.strerror}")
    except ValueError as exc:
        fail(f"{query_file} is not JSON ({exc}); write the query as JSON (see docs/marketplace.md)")
    url = service_url("marketplace", market_url)
    answer = call_at("marketplace", url, _client(url, api_key_file).query, order_id, body)
    if as_json:
        console.print_json(data=answer)
        return
    _print_answer(shaped("marketplace", url, answer, "cells", "noise", "epsilon", "budget_remaining"))
    _note_clamped_means(body, answer)


def _note_clamped_means(body: Any, answer: dict[str, Any]) -> None:
    """A note when a noisy mean came out at one of the query's bounds: it was clamped there (a noisy sum divided by
    a noisy count fell outside them), which says the noise swamped the cell, not that the mean is that bound."""
    bounds = body.get("bounds") if isinstance(body, dict) else None
    if answer.get("aggregate") != "mean" or not isinstance(bounds, list) or len(bounds) != 2:
        return
    clamped = [c for c in answer["cells"] if c.get("mean") is not None and c["mean"] in (bounds[0], bounds[1])]
    if clamped:
        console.print(f"[yellow]note[/yellow]: {len(clamped)} of {len(answer['cells'])} noisy mean(s) came out at a "
                      f"bound of {bounds} (clamped there): the noise swamps those cells, too few rows for this ε and "
                      "these bounds; a larger ε, narrower bounds, or fewer groups give a mean that says something",
                      highlight=False, soft_wrap=True)


def rounded(value: Any) -> str:
    """A figure as a reader takes it in: 3 significant digits, whole (with thousands separators) from 1,000 up;
    a whole number as it is; `-` for none (a figure withheld or undefined)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def _total(value: Any) -> str:
    """A noisy count or sum: one decimal (the noise makes more digits meaningless)."""
    return "-" if value is None else f"{value:,.1f}"


def _print_answer(answer: dict[str, Any]) -> None:
    """A query's answer as a table of its cells, then its noise and the budget it spent."""
    group_by = [str(g) for g in answer.get("group_by") or []]
    cells: list[dict[str, Any]] = answer["cells"]
    figures = [f for f in ("count", "sum", "mean") if any(f in cell for cell in cells)]
    binned = any("bin" in cell for cell in cells)
    what = str(answer.get("aggregate", "query")) + (f" of {answer['column']}" if answer.get("column") else "") \
        + (f" by {', '.join(group_by)}" if group_by else "")
    console.print(f"query {answer.get('query_id', '?')} on order {answer.get('order_id', '?')}: {escape(what)}; "
                  "every figure below has noise added", highlight=False, soft_wrap=True)
    noise = answer["noise"]
    selection = noise.get("partition_selection") or {}
    if cells:
        table = Table(box=box.SIMPLE_HEAD)
        for col in [*group_by, *(["bin"] if binned else []), *(f"noisy {f}" for f in figures)]:
            table.add_column(escape(col), justify="right" if col.startswith("noisy ") else "left")
        for cell in cells:
            group = cell.get("group") or {}
            row = [escape("(null)" if group.get(g) is None else str(group.get(g))) for g in group_by]
            if binned:
                edges = cell.get("bin") or ()
                row.append(" to ".join(rounded(float(edge)) for edge in edges) or "-")
            row += [rounded(cell.get(f)) if f == "mean" else _total(cell.get(f)) for f in figures]
            table.add_row(*row)
        print_table(table)
        if "mean" in figures and any(cell.get("mean") is None for cell in cells):
            console.print("a mean shown as - is withheld: its cell's noisy count was below 1, so a noisy sum "
                          "divided by it would mean nothing", highlight=False, soft_wrap=True)
    else:
        console.print(f"no cell was released: none had a noisy count above the threshold "
                      f"({_total(selection.get('threshold'))} rows) a group-by cell needs to be shown",
                      highlight=False, soft_wrap=True)
    console.print(_noise_line(noise), highlight=False, soft_wrap=True)
    if selection:
        console.print(f"partition selection (threshold {_total(selection.get('threshold'))} noisy rows, δ "
                      f"{selection.get('delta', 0):g}): {selection.get('rule', '')}", highlight=False, markup=False,
                      soft_wrap=True)
    console.print(f"privacy budget: this query spent ε {answer['epsilon']:g}; ε {answer['budget_remaining']:g} "
                  "left on the order", highlight=False, soft_wrap=True)


def _noise_line(noise: dict[str, Any]) -> str:
    """`noise (laplace): count scale b 4 (std 5.66, sensitivity 1); ...`: each figure's noise as stated."""
    sensitivity = noise.get("sensitivity") or {}
    parts = [f"{figure} scale b {rounded(noise[f'{figure}_scale'])} (std {rounded(noise.get(f'{figure}_std'))}, "
             f"sensitivity {rounded(sensitivity.get(figure))})"
             for figure in ("count", "sum") if noise.get(f"{figure}_scale") is not None]
    return f"noise ({noise.get('mechanism', '?')}) added to each figure: " + ("; ".join(parts) or "none stated")


# how `datacoop orders` shows each status (GET /orders): what is done dim, what waits on someone in yellow
_STATUS_STYLE = {"placed": "", "paid": "green", "expired": "dim", "refund-due": "yellow", "refunded": "dim"}


def _status_cell(o: dict[str, Any]) -> str:
    """An order's status as listed: an unpaid order that must not be paid (its version left the sale, or
    it was ordered before its offer was refused; GET /orders/{id} and `datacoop buy` say so) reads `placed,
    do not pay`, so the list agrees with them; one paid short of its price (the payment opens nothing and
    waits for the operator's refund) reads `placed, paid short: refund due` (`expired, ...` once expired)."""
    status = str(o["status"])
    if status in ("placed", "expired") and o.get("short_payments"):
        return f"[yellow]{status}, paid short: refund due[/yellow]"
    if status == "placed" and o.get("note"):
        return "[yellow]placed, do not pay[/yellow]"
    style = _STATUS_STYLE.get(status, "")
    return f"[{style}]{escape(status)}[/{style}]" if style else escape(status)


def orders(market_url: MarketUrl = None, api_key_file: ApiKeyFile = None) -> None:
    """Your orders and their state: placed (pay it with `datacoop buy`), paid, expired (unpaid in time),
    refund-due (a payment that paid nothing, to be refunded by the operator), paid short (the same, for a
    payment short of the price) or refunded (it was)."""
    table = Table(title="your orders")
    for col in ("order", "dataset", "v", "offer", "price", "status", "budget left"):
        table.add_column(col)
    url = service_url("marketplace", market_url)
    orders = call_at("marketplace", url, _client(url, api_key_file).orders)
    if not isinstance(orders, list) or any(not isinstance(o, dict) or "order_id" not in o for o in orders):
        not_the_service("marketplace", url, service_at(url))
    if not orders:
        console.print("no orders yet: place one with `datacoop order DATASET:OFFER` (`datacoop catalog` lists what is "
                      "on sale)", highlight=False, soft_wrap=True)
        return
    for o in orders:
        left = f"{o['budget']['remaining']:g}" if "budget" in o else "-"
        table.add_row(o["order_id"], o["dataset_id"], str(o["version"]), o["offer"], f"{o['price_units']:,}",
                      _status_cell(o), left)
    print_table(table, whole=(0, 1, 4))
    for o in orders:
        if (o["status"] == "placed" and o.get("note")) or (o["status"] == "expired" and o.get("short_payments")):
            console.print(f"{o['order_id']}: {o['note']}", highlight=False, markup=False, soft_wrap=True)


def _market_get(url: str, path: str) -> Any:
    """GET `path` of the marketplace, no API key (the operator's reads): a failure in words otherwise."""
    from datacoop.http import check

    answer = call_at("marketplace", url, lambda: check(httpx.get(f"{url.rstrip('/')}{path}", timeout=30)))
    return answer


def _payment_contracts(url: str) -> dict[str, str]:
    payment = shaped("marketplace", url, _market_get(url, "/catalog"), "payment")["payment"]
    if not payment.get("market") or not payment.get("token"):
        fail("the marketplace does not know the market contract (DATACOOP_MARKET_ADDRESS); set it where the "
             "marketplace runs")
    return {"market": str(payment["market"]), "token": str(payment["token"])}


def _operator_key(key_file: Path | None) -> str:
    """--key-file, else DATACOOP_OPERATOR_KEY, else the refund operator's key of the running local stack."""
    from datacoop.cli.stack import running_stack

    if key_file is None and not os.environ.get("DATACOOP_OPERATOR_KEY"):
        local = ((running_stack() or {}).get("chain") or {}).get("DATACOOP_OPERATOR_KEY")
        if local:
            return str(local)
        fail("no refund operator key: pass --key-file FILE (a wallet holding OPERATOR_ROLE on the market "
             "contract) or set DATACOOP_OPERATOR_KEY")
    return read_key(key_file, "DATACOOP_OPERATOR_KEY")


def refunds(
    show_all: Annotated[bool, typer.Option("--all", help="payments refunded already too")] = False,
    market_url: MarketUrl = None,
    rpc: Annotated[str | None, typer.Option("--rpc", help="chain JSON-RPC (default: DATACOOP_CHAIN_URL / the "
                                                          "stack's)")] = None,
) -> None:
    """Payments that paid no order (GET /payments/unmatched), with what the market contract says of each:
    the operator's list of refunds to make with `datacoop refund ORDER`. Those refunded already (recorded on
    the topics once settlement confirms the refund) are left out unless --all."""
    from web3 import Web3

    from datacoop.chain import Contracts, order_id_from_uuid
    from datacoop.cli.settlement import rpc_url_default
    from services.marketplace.client import chain_order

    url = service_url("marketplace", market_url)
    unmatched = _market_get(url, "/payments/unmatched")
    if not isinstance(unmatched, list) or any(not isinstance(p, dict) or "order_id" not in p for p in unmatched):
        not_the_service("marketplace", url, service_at(url))
    done = [p for p in unmatched if p.get("refunded")]
    if not show_all:
        unmatched = [p for p in unmatched if not p.get("refunded")]
    if not unmatched and show_all:  # nothing refunded either: --all is about those too
        console.print("no unmatched or refunded payment: every payment on chain paid its order", highlight=False,
                      soft_wrap=True)
        return
    if not unmatched:
        refunded = f" or was refunded ({len(done)} refunded; `datacoop refunds --all` lists them)" if done else ""
        console.print("no payment waits for a refund: every payment on chain paid its order" + refunded,
                      highlight=False, soft_wrap=True)
        return
    where = _payment_contracts(url)
    contracts = Contracts.at(Web3(Web3.HTTPProvider(rpc or rpc_url_default())), where["token"], where["market"])
    table = Table(title="payments that paid no order" + (", and those refunded" if show_all and done else ""))
    for col in ("order", "units", "reason", "on chain", "tx"):
        table.add_column(col)
    for p in unmatched:
        try:
            state, _amount, _buyer = chain_order(contracts, str(uuid.UUID(p["order_id"])))
            if state == "paid" and contracts.market.functions.isSettled(
                    order_id_from_uuid(uuid.UUID(p["order_id"]))).call():
                state = "settled (not refundable)"
            elif state == "paid":
                state = "refundable"
        except ValueError:
            state = "?"
        except Exception as exc:  # the chain is away: the list is still worth showing
            state = f"unknown ({type(exc).__name__})"
        table.add_row(p["order_id"], f"{p['amount_units']:,}", escape(p["reason"]), state, p["tx_hash"])
    print_table(table, whole=(0, 1))
    if done and not show_all:
        console.print(f"{len(done)} refunded already: `datacoop refunds --all` lists them", highlight=False)


def refund(
    order_id: Annotated[str, typer.Argument(help="the order whose payment goes back (`datacoop refunds` lists them)")],
    key_file: Annotated[Path | None, typer.Option("--key-file", help="the refund operator's hex private key "
                                                  "(default: DATACOOP_OPERATOR_KEY, else the local stack's)")] = None,
    rpc: Annotated[str | None, typer.Option("--rpc", help="chain JSON-RPC (default: DATACOOP_CHAIN_URL / the "
                                                          "stack's)")] = None,
    market_url: MarketUrl = None,
    settlement_url: Annotated[str | None, typer.Option("--settlement-url", help="settlement service URL, asked "
                                                       "whether the order is allocated (default: "
                                                       "DATACOOP_SETTLEMENT_URL / the stack's)")] = None,
    token: Annotated[str | None, typer.Option("--token", help="settlement's operator token (default: "
                                              "DATACOOP_SETTLEMENT_OPERATOR_TOKEN, else the local stack's)")] = None,
) -> None:
    """Return an order's payment to the wallet that paid it (the operator's). Refused when the order is settled
    (the contract's word) or when settlement allocated it to members already (its GET /orders/{id}): a refund
    of an allocated order would stop every later payout root, since reversing allocations is not built."""
    from datacoop.chain import ChainError
    from datacoop.cli.settlement import rpc_url_default
    from services.marketplace import client

    order_id = _order_id(order_id)
    url = service_url("marketplace", market_url)
    where = _payment_contracts(url)
    key = _operator_key(key_file)
    _not_allocated(order_id, settlement_url, token)
    try:
        tx, amount, buyer = client.refund(rpc or rpc_url_default(), where["token"], where["market"], key, order_id)
    except (ChainError, ValueError) as exc:
        fail(f"refund not made: {exc}")
    console.print(f"refunded order {order_id}: {amount:,} units back to {buyer} in tx {tx}", highlight=False,
                  soft_wrap=True)


def _not_allocated(order_id: str, settlement_url: str | None, token: str | None) -> None:
    """Return when settlement has not allocated `order_id`'s payment (it asks the contract before allocating,
    so an order refunded first is never allocated); otherwise fail, with nothing sent."""
    from datacoop.cli.common import expect_service, operator_token, unreachable
    from datacoop.cli.settlement import settlement_url_of

    url = settlement_url_of(settlement_url)
    secret = operator_token(token, "DATACOOP_SETTLEMENT_OPERATOR_TOKEN")
    try:
        resp = httpx.get(f"{url.rstrip('/')}/orders/{order_id}", headers={"Authorization": f"Bearer {secret}"},
                         timeout=10)
    except httpx.HTTPError as exc:
        unreachable("settlement", url, exc)
    if resp.status_code == 404:
        expect_service("settlement", url)  # another service's URL also answers 404
        return  # settlement has not seen the payment yet
    if resp.status_code == 401:
        expect_service("settlement", url)  # another service's URL (the marketplace also serves /orders/{id})
        fail(f"refund not made: settlement at {url} refused the operator token; pass --token or set "
             "DATACOOP_SETTLEMENT_OPERATOR_TOKEN (settlement must say the order is not allocated first)")
    if resp.status_code != 200:
        expect_service("settlement", url)
        fail(f"refund not made: settlement at {url} answered {resp.status_code} for order {order_id} "
             f"({resp.text[:300]}); it must say the order is not allocated first: try again once it is ready")
    try:
        answer = resp.json()
    except ValueError:
        answer = None
    view = shaped("settlement", url, answer, "allocation")
    if view["allocation"]:
        fail(f"refund not made: settlement allocated order {order_id}'s payment to the members of the version sold; "
             "refunding it now would make settlement refuse every later payout root (refunded-after-allocation), "
             "since reversing an allocation is not built (docs/payments.md, Refunds)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root CLI."""
    app.add_typer(researcher_app, name="researcher")
    for fn in (catalog, order, buy, download, query, orders, refunds, refund):
        app.command(fn.__name__)(fn)
