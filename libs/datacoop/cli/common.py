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
from rich.table import Table

from datacoop.cli.stack import running_stack
from datacoop.http import ApiError

T = TypeVar("T")

console = Console()
err = Console(stderr=True)
_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
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
    if not token and running_stack() is not None:
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


def service_url(name: str, given: str | None) -> str:
    """--<name>-url (--market-url), else DATACOOP_<NAME>_URL, else the running stack (var/run/stack.json)."""
    option = _URL_OPTION.get(name, f"--{name}-url")
    if given:
        return checked_url(given, option)
    env = os.environ.get(f"DATACOOP_{name.upper()}_URL")
    if env:
        return checked_url(env, f"DATACOOP_{name.upper()}_URL")
    services = (running_stack() or {}).get("services", {})
    if name in services:
        return str(services[name]["url"])
    fail(f"no URL for the {name} service: pass {option}, set DATACOOP_{name.upper()}_URL, "
         "or start the stack with `datacoop up`")


def read_key(key_file: Path | None) -> str:
    """A hex private key from --key-file, else DATACOOP_KEY."""
    if key_file is None:
        raw = os.environ.get("DATACOOP_KEY", "")
        if not raw:
            fail("no wallet key: pass --key-file FILE (make one with `datacoop wallet new`) or set DATACOOP_KEY")
    else:
        if not key_file.exists():
            fail(f"key file {key_file} does not exist; make one with `datacoop wallet new --out {key_file}`")
        raw = key_file.read_text().strip()
    if not _HEX_KEY.match(raw):
        fail("the wallet key must be 32 bytes of hex (64 hex digits, optional 0x)")
    return raw if raw.startswith("0x") else "0x" + raw


def keep_whole(table: Table, columns: dict[int, list[str]]) -> None:
    """Never cut or wrap the values of `columns` (index -> the values shown): ids a user copies into the
    next command, prices. Other columns wrap to fit a narrow terminal (or a pipe, 80 columns)."""
    for index, values in columns.items():
        column = table.columns[index]
        words = [word for value in [*values, str(column.header)] for word in value.split()]
        column.min_width = max((len(word) for word in words), default=0)
        column.overflow = "fold"
