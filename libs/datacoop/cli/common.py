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
            fail(f"{what} {value!r} is not a wallet address: 0x followed by 40 hex digits", 2)
        fail(f"{what} {value!r} {error['msg']}", 2)


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


# -- another service's URL, or none at all: the one check every area uses ------------------------------------

_CALLED = {"marketplace": "the marketplace", "vault": "the vault", "anonymizer": "the anonymizer"}


def called(name: str) -> str:
    """How a message names the service `name` (as its GET /healthz does): "the consent service", "the vault"."""
    return _CALLED.get(name, f"the {name} service")


def url_option(name: str) -> str:
    return _URL_OPTION.get(name, f"--{name}-url")


def call_at(name: str, url: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a client call on the service `name` at `url`, failing in one line that says what to do: a 404 or
    405 from something that is not that service (another service's URL) names what answers there; another
    refusal gives its problem+json detail; no answer, or none in time, names the service and the URL."""
    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        refused(name, url, exc.status, exc.problem.get("detail", exc.problem))
    except httpx.HTTPError as exc:
        unreachable(name, url, exc)


def refused(name: str, url: str, status: int, detail: object) -> NoReturn:
    """Fail on a refusal from `url`; a 404 or 405 first asks GET /healthz whether `name` is what answered."""
    if status in (404, 405):
        expect_service(name, url)
    fail(refusal(status, detail))


# the --key-file this command was given (read_key), which a service's hint to run a member command lacks
_KEY_FILE: list[Path] = []
# commands a service's refusal may tell a member to run: they sign with the member's key
_SIGNED_HINTS = ("`datacoop member register`",)


def refusal(status: int, detail: object) -> str:
    """A service's refusal as the CLI says it: its words first, the HTTP status after them. A hint in them to run
    a command signed with the member's key gets the --key-file this command was given, so it runs as written."""
    text = str(detail)
    if _KEY_FILE:
        for hint in _SIGNED_HINTS:
            text = text.replace(hint, f"{hint[:-1]} --key-file {_KEY_FILE[-1]}`")
    return f"{text} (HTTP {status})"


def unreachable(name: str, url: str, exc: httpx.HTTPError) -> NoReturn:
    """Fail on a request to the service `name` at `url` that got no answer (refused, or not in time)."""
    option = url_option(name)
    if isinstance(exc, httpx.TimeoutException):
        fail(f"{called(name)} at {url} did not answer in time ({exc or 'timed out'}); it may be stuck or busy: "
             f"check it (`datacoop status`, its log in var/run/logs/) and try again, or pass {option}")
    fail(f"cannot reach {called(name)} at {url} ({exc}); start the stack (`datacoop up`) or pass {option} with "
         f"{called(name)}'s URL")


def expect_service(name: str, url: str, unknown_ok: bool = False, code: int = 2) -> None:
    """Return when the service at `url` says (GET /healthz) that it is `name`; otherwise fail with `code`,
    naming what answers there (with `unknown_ok`, return too when no datacoop service answers: nothing to tell)."""
    found = service_at(url)
    if found == name or (unknown_ok and found is None):
        return
    not_the_service(name, url, found, code)


def not_the_service(name: str, url: str, found: str | None, code: int = 2) -> NoReturn:
    """Fail on a URL that is not the service `name`'s, naming what answers there (`found`, its GET /healthz)
    and where `name` is."""
    there = f"it answers as the {found} service" if found else "no datacoop service answers GET /healthz there"
    option, env = url_option(name), f"DATACOOP_{name.upper()}_URL"
    known = known_url(name)
    where = (f"{called(name)}'s URL is {known}: pass it with {option}" if known and known != url
             else f"pass {called(name)}'s URL with {option}")
    fail(f"{url} is not {called(name)} ({there}); {where} (or set {env}; `datacoop status` lists the stack's "
         "services)", code)


def known_url(name: str) -> str | None:
    """Where the service `name` is: DATACOOP_<NAME>_URL, else the running stack's, else its default port here."""
    env = os.environ.get(f"DATACOOP_{name.upper()}_URL")
    if env:
        return env.rstrip("/")
    stack = stack_mod.running_stack() or {}
    running = (stack.get("services") or {}).get(name)
    if isinstance(running, dict) and running.get("url"):
        return str(running["url"])
    port = next((s.default_port for s in stack_mod.SERVICES if s.name == name), None)
    return f"http://127.0.0.1:{port} on a local stack (`datacoop up`)" if port else None


def shaped(name: str, url: str, data: Any, *keys: str) -> Any:
    """`data` when it is an object with `keys` (or a list of such objects): an answer without them is not
    the service `name`'s, and the failure names what answers at `url`."""
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(item, dict) and all(k in item for k in keys) for item in items):
        not_the_service(name, url, service_at(url))
    return data


def checked_url(value: str, where: str) -> str:
    """`value` without a trailing slash, or a failure naming `where` it came from when it is no http(s) URL
    (a usage error: exit status 2)."""
    if not re.match(r"^https?://[^/\s]+", value):
        fail(f"{where} {value!r} is not a URL: give http://HOST:PORT (https for a remote service)", 2)
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
    misnamed = f"DATACOOP_{option.removeprefix('--').replace('-', '_').upper()}"  # from the option: MARKET_URL
    if misnamed != f"DATACOOP_{name.upper()}_URL" and os.environ.get(misnamed):
        fail(f"{misnamed} is set, but the {name}'s URL is read from DATACOOP_{name.upper()}_URL (or {option}): "
             f"rename the variable", 2)
    stack = stack_mod.running_stack()
    if stack is not None:
        services = stack.get("services") or {}
        if name in services:
            return str(services[name]["url"])
        fail(without_service(name, stack))
    fail(f"no URL for the {name} service: pass {option}, set DATACOOP_{name.upper()}_URL, "
         "or start the stack with `datacoop up`")


def configured_url(name: str, given: str | None) -> str | None:
    """`service_url`'s answer where something names the service (the option, the variable, a running stack that
    has it), else None: for a step a command may leave out instead of failing."""
    if given or os.environ.get(f"DATACOOP_{name.upper()}_URL"):
        return service_url(name, given)
    running = ((stack_mod.running_stack() or {}).get("services") or {}).get(name)
    return str(running["url"]) if isinstance(running, dict) and running.get("url") else None


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


def read_key(key_file: Path | None, env: str = "DATACOOP_KEY", bad_key_code: int = 1) -> str:
    """A hex private key from --key-file, else the variable `env`; a failure naming the file (or variable) at
    fault. No key, or a --key-file that does not exist, is a usage error (exit status 2); a key that is not one
    fails with `bad_key_code`."""
    if key_file is None:
        raw = os.environ.get(env, "").strip()
        if not raw:
            fail(f"no wallet key: pass --key-file FILE (make one with `datacoop wallet new`) or set {env}", 2)
        where = env
    else:
        if not key_file.exists():
            fail(f"key file {key_file} does not exist; make one with `datacoop wallet new --out {key_file}`", 2)
        raw = read_text_file(key_file, "key file", "the file `datacoop wallet new` wrote").strip()
        where = f"key file {key_file}"
        _KEY_FILE.append(key_file)
    if not _HEX_KEY.match(raw):
        fail(f"{where} does not hold a wallet key: 32 bytes of hex (64 hex digits, optional 0x), as "
             "`datacoop wallet new --out FILE` writes", bad_key_code)
    if not 1 <= int(raw.removeprefix("0x"), 16) < SECP256K1_ORDER:
        fail(f"{where} does not hold a valid secp256k1 private key (it must be between 1 and n-1, n the curve's "
             "order: not all zeros, nor all f's); make a new one with `datacoop wallet new --out FILE`", bad_key_code)
    return raw if raw.startswith("0x") else "0x" + raw


def read_text_file(path: Path, what: str, expected: str) -> str:
    """The text of `path`, or a failure naming it as `what` (e.g. "key file") and saying to pass `expected`."""
    if path.is_dir():
        fail(f"{what} {path} is a folder; pass {expected}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror}; pass {expected}")
    return utf8_text(data, f"{what} {path}", f"pass {expected}")


def utf8_text(data: bytes, what: str, then: str) -> str:
    """`data` decoded as UTF-8 (a UTF-8 BOM dropped), or a failure saying what the bytes are instead: UTF-16
    (its BOM), binary (NUL bytes), or text in another encoding, with the line and column of the first byte
    that is not UTF-8 and how to convert the file. `what` names the file ("receipt file r.json"), `then` what
    to do once it is text."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        fail(f"{what} is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8 (e.g. `iconv -f "
             f"utf-16 -t utf-8 FILE > NEW`), then {then}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = exc.start
    if b"\x00" in data[:8192]:
        fail(f"{what} is a binary file, not text (it holds NUL bytes); {then}")
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    line = data.count(b"\n", start, bad) + 1
    line_start = data.rfind(b"\n", start, bad) + 1 or start
    column = len(data[line_start:bad].decode("utf-8", errors="replace")) + 1
    fail(f"{what} is not UTF-8 text: byte 0x{data[bad]:02x} on line {line}, column {column} is not UTF-8 (the file "
         "is likely Latin-1 or Windows-1252); save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > NEW`), "
         f"then {then}")


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
