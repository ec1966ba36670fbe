"""What every CLI area shares: service URLs from the running stack, wallet keys from files, errors."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.segment import Segment
from rich.table import Column, Table
from rich.text import Text

from datacoop.cli import stack as stack_mod
from datacoop.http import ApiError

T = TypeVar("T")

console = Console()
err = Console(stderr=True)
_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # n: a key is 1 .. n-1
_URL_OPTION = {"marketplace": "--market-url"}  # the one service whose option is not --<name>-url


def wallet_address(value: str, what: str) -> str:
    """`value` as the APIs take a wallet address (datacoop.events.types.WalletAddress), or a failure
    naming `what` (e.g. "--address") and the same reason an API would give."""
    from pydantic import TypeAdapter, ValidationError

    from datacoop.events.types import WalletAddress

    try:
        return str(TypeAdapter(WalletAddress).validate_python(value))
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == "wallet_address":  # the shape: say it as the other CLI checks do
            fail(f"{what} {value!r} is not a wallet address: 0x followed by 40 hex digits")
        fail(f"{what} {value!r} {error['msg']}")


def operator_token(given: str | None, setting: str) -> str:
    """--token, else the environment variable `setting`, else the development token that `datacoop up`
    starts its services with (when a local stack runs); otherwise a failure that names all three."""
    from datacoop.kit.settings import DEV_OPERATOR_TOKEN

    token = given or os.environ.get(setting)
    if not token and stack_mod.running_stack() is not None:
        token = DEV_OPERATOR_TOKEN
    if not token:
        fail(f"no operator token: pass --token or set {setting} (a stack started with `datacoop up` uses "
             f"{DEV_OPERATOR_TOKEN!r} unless that variable was set)")
    return token


def fail(message: str, code: int = 1) -> NoReturn:
    """One line in red and a non-zero exit; the message says what is wrong and what to do. With the root
    `--debug` flag, the traceback of the exception being handled (if any) comes first."""
    from datacoop.cli import State  # the root callback's --debug (imported here: the root imports this module)

    if (State.debug or "--debug" in sys.argv) and sys.exc_info()[1] is not None:
        err.print_exception()
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)  # a message's [a-z] is text
    raise typer.Exit(code)


def call_service(service: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a client call; a refusal (its problem+json detail) or an unreachable service is one red line."""
    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        fail(f"{exc.status}: {exc.problem.get('detail', exc.problem)}")
    except httpx.HTTPError as exc:
        fail(f"cannot reach the {service} ({exc}); is the stack up (`datacoop up`)?")


def checked_url(value: str, where: str) -> str:
    """`value` without a trailing slash, or a failure naming `where` it came from when it is no http(s) URL."""
    if not re.match(r"^https?://[^/\s]+", value):
        fail(f"{where} {value!r} is not a URL: give http://HOST:PORT (https for a remote service)")
    return value.rstrip("/")


def service_at(url: str) -> str | None:
    """The service name a datacoop service at `url` gives in its GET /healthz; None where none answers so
    (to tell a user who passed another service's URL which one it is)."""
    try:
        doc = httpx.get(url.rstrip("/") + "/healthz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    service = doc.get("service") if isinstance(doc, dict) else None
    return service if isinstance(service, str) else None


def service_url(name: str, given: str | None) -> str:
    """--<name>-url (--market-url), else DATACOOP_<NAME>_URL, else the running stack (var/run/stack.json)."""
    option = _URL_OPTION.get(name, f"--{name}-url")
    if given:
        return checked_url(given, option)
    env = os.environ.get(f"DATACOOP_{name.upper()}_URL")
    if env:
        return checked_url(env, f"DATACOOP_{name.upper()}_URL")
    stack = stack_mod.running_stack()
    if stack is not None:
        services = stack.get("services") or {}
        if name in services:
            return str(services[name]["url"])
        fail(without_service(name, stack))
    fail(f"no URL for the {name} service: pass {option}, set DATACOOP_{name.upper()}_URL, "
         "or start the stack with `datacoop up`")


def without_service(name: str, stack: dict[str, Any]) -> str:
    """What to tell a user whose running stack (`stack`, var/run/stack.json) lacks the service `name`: why it
    is not there, and how to reach one anyway. Starting the stack is no advice: one runs."""
    option = _URL_OPTION.get(name, f"--{name}-url")
    running = stack.get("services") or {}
    chosen = not all(s.name in running for s in stack_mod.SERVICES if not s.needs_chain)  # up --services a,b
    if any(s.name == name and s.needs_chain for s in stack_mod.SERVICES) and not stack.get("chain"):
        why = "it needs the chain, which `datacoop up --no-chain` leaves out"
        again = "without --no-chain" + (f" and with {name} in --services" if chosen else "")
    else:
        why, again = "`datacoop up --services` left it out", f"with {name} in --services, or without --services"
    return (f"the running stack has no {name} service ({why}); stop the stack (Ctrl-C where `datacoop up` runs) "
            f"and start it again {again}; or pass {option} / set DATACOOP_{name.upper()}_URL")


def read_key(key_file: Path | None, env: str = "DATACOOP_KEY") -> str:
    """A hex private key from --key-file, else the variable `env`; a failure naming the file (or variable) at
    fault."""
    if key_file is None:
        raw = os.environ.get(env, "").strip()
        if not raw:
            fail(f"no wallet key: pass --key-file FILE (make one with `datacoop wallet new`) or set {env}")
        where = env
    else:
        if not key_file.exists():
            fail(f"key file {key_file} does not exist; make one with `datacoop wallet new --out {key_file}`")
        raw = read_text_file(key_file, "key file", "the file `datacoop wallet new` wrote").strip()
        where = f"key file {key_file}"
    if not _HEX_KEY.match(raw):
        fail(f"{where} does not hold a wallet key: 32 bytes of hex (64 hex digits, optional 0x), as "
             "`datacoop wallet new --out FILE` writes")
    if not 1 <= int(raw.removeprefix("0x"), 16) < SECP256K1_ORDER:
        fail(f"{where} does not hold a valid secp256k1 private key (it must be between 1 and n-1, n the curve's "
             "order: not all zeros, nor all f's); make a new one with `datacoop wallet new --out FILE`")
    return raw if raw.startswith("0x") else "0x" + raw


def read_text_file(path: Path, what: str, expected: str) -> str:
    """The text of `path`, or a failure naming it as `what` (e.g. "key file") and saying to pass `expected`."""
    if path.is_dir():
        fail(f"{what} {path} is a folder; pass {expected}")
    try:
        return path.read_text()
    except UnicodeDecodeError:
        fail(f"{what} {path} is not text; pass {expected}")
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror}; pass {expected}")


def print_table(table: Table, whole: tuple[int, ...] = (), out: Console | None = None) -> None:
    """Print `table` with every value whole: a cell too long for its column folds onto more lines, never
    cut with an ellipsis, and no column is dropped. In a pipe or a file (no terminal) the table is as wide
    as its values, each row on one line. On a terminal, within its width, the cells of the columns in
    `whole` (ids a user copies into the next command, prices; the first most important) stay on one line
    as long as every other column keeps a few characters; past that they fold too."""
    out = out or console
    for column in table.columns:
        column.overflow = "fold"
    if not out.is_terminal:
        Console(file=out.file, width=_UNBOUNDED_WIDTH, color_system=None).print(table)
        return
    longest = [_longest_word(column) for column in table.columns]
    for keep in [whole[:n] for n in range(len(whole), -1, -1)]:
        for index, column in enumerate(table.columns):
            column.no_wrap = index in keep
            column.min_width = None if index in keep else min(longest[index], _NARROWEST)
        if _fits(out, table, keep):
            break
    else:  # a very narrow terminal: rich shares out what there is
        for column in table.columns:
            column.min_width = None
    out.print(table)


_UNBOUNDED_WIDTH = 100_000  # wider than any table: in a pipe each row stays on one line
_NARROWEST = 6  # a column squeezed narrower than this (unless its words are shorter) is hard to read


def _plain(cell: object) -> str:
    return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)


def _longest_word(column: Column) -> int:
    words = [word for cell in [column.header, *column.cells] for word in _plain(cell).split()]
    return max((len(word) for word in words), default=0)


def _fits(out: Console, table: Table, keep: tuple[int, ...]) -> bool:
    """The table renders within the terminal's width (a column's min_width can push it past, and the
    console would crop the columns on the right), with each cell of the columns in `keep` on one line."""
    lines = Segment.split_lines(out.render(table, out.options))
    rendered = [Segment.get_line_length(line) <= out.width and "".join(s.text for s in line) for line in lines]
    if not all(rendered):
        return False
    return all(any(_plain(cell) in line for line in rendered if isinstance(line, str))
               for index in keep for cell in table.columns[index].cells if "\n" not in _plain(cell))
