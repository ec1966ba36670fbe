"""Vault commands: `datacoop contribute FILE --category C` (signed upload with a progress bar), and the
operator's `datacoop vault rotate-kek` (re-wrap every data key under a new key-encryption key)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import httpx
import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from datacoop.cli import stack as stack_mod
from datacoop.cli.common import (
    console,
    err,
    expect_service,
    fail,
    not_the_service,
    read_key,
    refusal,
    service_at,
    service_url,
    unreachable,
    utf8_text,
)
from datacoop.http import ApiError, check
from datacoop.keys import write_secret

if TYPE_CHECKING:  # the vault's client (eth-account, Faker) and key store load with the command that needs them:
    import duckdb  # `datacoop --help` took 2.4 s, most of it importing what no command but one uses

    from services.vault.client import VaultClient
    from services.vault.crypto import Kek

vault_app = typer.Typer(no_args_is_help=True, help="Operator commands of the vault, run where the vault runs "
                                                   "(its environment), with the vault stopped.")

_CHUNK_BYTES = 64 * 1024
RETRY_FOR_S = 10.0
"""How long `contribute` retries an upload the vault answers 503 `not-ready` (it has not read the member's
registration yet, moments after it was made, or is catching up after a start)."""
_NOT_READY = "https://datacoop.example/problems/not-ready"


def _refused(exc: ApiError, file: Path) -> NoReturn:
    """Fail on a refused upload: every bad row and field the vault named, one a line, then the one red
    line. The vault names the first MAX_REPORTED_ERRORS (200) problems and counts the rest."""
    problem = exc.problem
    # row 0 is a problem of the whole upload, which `detail` already says; a refused request (an empty body)
    # has no rows at all
    rows = [e for e in problem.get("errors") or [] if isinstance(e, dict) and e.get("row")]
    for e in rows:
        err.print(f"  {file.name} row {e['row']} {e.get('field', '')}: {e.get('message', '')}", markup=False,
                  highlight=False, soft_wrap=True)
    unlisted = int(problem.get("error_count") or len(rows)) - len(rows)
    if rows and unlisted > 0:
        err.print(f"  … and {unlisted:,} more problem(s) the vault counted but did not list (it lists the first "
                  f"{len(rows)}): fix these and contribute again to see the rest", highlight=False, soft_wrap=True)
    counted = "; a row is a record: in a CSV file, row 1 is the first after the header" \
        if rows and file.suffix.lower() == ".csv" else ""
    fail(refusal(exc.status, f"{problem.get('detail', problem)}" + (f" (each listed above{counted})" if rows else "")))


def contribute(
    file: Annotated[Path, typer.Argument(metavar="FILE",
                                         help="records as JSON lines (.jsonl) or CSV (.csv: a header row, "
                                              "comma- or semicolon-separated)")],
    category: Annotated[str, typer.Option("--category", help="demographics | health | fitness | location | finance")],
    key_file: Annotated[Path | None, typer.Option("--key-file", help="file holding the wallet's hex private key")]
    = None,
    vault_url: Annotated[str | None, typer.Option("--vault-url", help="vault URL (default: the stack's)")] = None,
    upload_format: Annotated[str | None, typer.Option("--format", help="jsonl | csv (default: from the file's "
                                                                        "extension)")] = None,
) -> None:
    """Contribute a file of records: signed by your wallet, encrypted by the vault, all rows or none."""
    if not file.exists():
        fail(f"{file} does not exist; give a .jsonl or .csv file of records", 2)
    if not file.is_file():
        fail(f"{file} is not a file; give a .jsonl or .csv file of records")
    if upload_format is not None and upload_format not in ("jsonl", "csv"):
        fail(f"--format must be jsonl or csv, not {upload_format!r}", 2)
    from services.vault.client import VaultClient
    from services.vault.client import upload_format as format_of

    upload_format = upload_format or format_of(file)
    if upload_format not in ("jsonl", "csv"):
        fail(f"cannot tell the format of {file.name}: use .jsonl or .csv (or pass --format jsonl|csv)")
    try:
        data = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    content = utf8_text(data, str(file), "contribute it again")
    if not content.strip():
        fail(f"{file} is empty: nothing to contribute; give a file with at least one record")
    url = service_url("vault", vault_url)
    key = read_key(key_file)
    try:
        try:
            client = VaultClient(key, url)  # asks GET /eip712
        except (ValueError, KeyError, TypeError):  # a 200 that is not a datacoop service's EIP-712 domain
            not_the_service("vault", url, service_at(url))
        body = json.dumps(client.contribute_body(category, content, upload_format)).encode()
        result = _retrying_not_ready(lambda: _upload(client, body))
    except ApiError as exc:
        if exc.status in (404, 405):
            expect_service("vault", url)
        _refused(exc, file)
    except httpx.HTTPError as exc:
        unreachable("vault", url, exc)
    console.print(f"contributed {result['records']} record(s) of {result['category']} as upload "
                  f"{result['upload_id']} (schema v{result['schema_version']}), encrypted with your data key")
    from_stack = vault_url is None and not os.environ.get("DATACOOP_VAULT_URL")
    _note_if_no_consent_covers(key, category, stack_vault=from_stack,
                               key_option=f" --key-file {key_file}" if key_file is not None else "")


def _note_if_no_consent_covers(key: str, category: str, stack_vault: bool, key_option: str = "") -> None:
    """A yellow note when none of the member's active consents names `category`: the records are stored, but no
    dataset may use them. Asked of the consent service where its URL is known: DATACOOP_CONSENT_URL, or the
    running stack's when the vault was the stack's too (not another deployment's). Best effort: nothing is
    said when no URL is known or the service does not answer as expected; the upload itself is done."""
    from services.consent.client import MemberWallet

    services = (stack_mod.running_stack() or {}).get("services") or {} if stack_vault else {}
    url = os.environ.get("DATACOOP_CONSENT_URL") or (services.get("consent") or {}).get("url")
    if not url:
        return
    try:
        consents = MemberWallet(key, url, http=httpx.Client(base_url=url, timeout=5)).consents()
        covered = any(c.get("state") == "active" and category in (c.get("categories") or []) for c in consents)
    except Exception:  # a hint after a done upload must never fail the command
        return
    if covered:
        return
    console.print(f"[yellow]note[/yellow]: none of your active consents covers {category}: these records are "
                  "stored, encrypted, but no dataset will use them (nor pay you for them) until you grant one: "
                  f"`datacoop consent grant --purpose P --categories {category}{key_option}` (`datacoop consent "
                  "catalog` lists "
                  "the purposes)", highlight=False, soft_wrap=True)


def _retrying_not_ready(upload: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The upload's answer, retried for up to RETRY_FOR_S while the vault answers 503 `not-ready`: just after
    `datacoop member register` the vault may not have read the registration yet (it learns of it from the
    members log a moment later); saying so once, then waiting as its Retry-After asks (at most 2 s)."""
    deadline = time.monotonic() + RETRY_FOR_S
    said = False
    while True:
        try:
            return upload()
        except ApiError as exc:
            if exc.status != 503 or exc.problem.get("type") != _NOT_READY or time.monotonic() >= deadline:
                raise
            if not said:
                err.print(f"the vault is not ready for this upload yet ({exc.problem.get('detail', '')}); retrying "
                          f"for up to {RETRY_FOR_S:.0f} s", markup=False, highlight=False, soft_wrap=True)
                said = True
            time.sleep(min(2.0, max(0.5, float(exc.problem.get("retry_after_s") or 1))))


def _upload(client: VaultClient, body: bytes) -> dict[str, Any]:
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as progress:  # no bar (nor its blank line) in a pipe
        task = progress.add_task("uploading", total=len(body))

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), _CHUNK_BYTES):
                piece = body[start:start + _CHUNK_BYTES]
                progress.advance(task, len(piece))
                yield piece
            progress.update(task, description="validating and encrypting")

        resp = client.http.post(f"/members/{client.address}/records", content=chunks(),
                                headers={"content-type": "application/json", "content-length": str(len(body))})
        return dict(check(resp))


def _read_kek(path: Path, what: str) -> Kek:
    from services.vault.crypto import Kek, parse_kek

    try:
        return Kek(parse_kek(path.read_text().strip()))
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the {what} KEK from {path} ({exc})")
    except ValueError as exc:
        fail(f"{path} does not hold a KEK: {exc}")


def _new_kek(path: Path, current: Kek) -> Kek:
    """The KEK in `path`, or a new one generated into it: on disk before the key store depends on it."""
    from services.vault.crypto import new_kek_b64

    if not path.exists():
        try:
            write_secret(path, (new_kek_b64() + "\n").encode())
        except OSError as exc:
            fail(f"cannot write the new KEK to {path} ({exc.strerror}); give a writable path")
        console.print(f"generated a new KEK into {path} (readable by you alone)", soft_wrap=True)
    new = _read_kek(path, "new")
    if new.key == current.key:
        fail(f"{path} holds the current KEK; give a new one (or a path that does not exist, to generate one)")
    return new


def _which_kek_opens(path: Path, current: Kek, new: Kek, new_kek_file: Path) -> str:
    """After a failed rotation, what the store opens with now: it was put in place whole or not at all."""
    import duckdb

    from datacoop.store import StoreUnusable
    from services.vault.keystore import KekMismatch, KeyStore

    for kek, words in ((new, f"the new store was put in place: it opens with the KEK in {new_kek_file}"),
                       (current, "nothing was put in place: the store still opens with the current KEK")):
        try:
            KeyStore(path, kek).close()
        except KekMismatch:
            continue
        except (duckdb.Error, StoreUnusable) as exc:
            return f"the store can't be opened now to tell which KEK it takes ({exc}); try each later"
        return words
    return "neither KEK opens the store now; restore it from a backup"


_LOCK_WORDS = ("conflicting lock", "could not set lock", "already open")


def _unopenable_store(path: Path, exc: duckdb.Error) -> str:
    """Why DuckDB could not open `path` as the key store, and what to do: "in use" only when it says another
    process holds the file's lock (a running vault); any other refusal (not a DuckDB file: a wrong path, the
    KEK file given by mistake) means the path is not the key store."""
    said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if any(words in said.lower() for words in _LOCK_WORDS):
        return f"the key store {path} is in use ({said}); stop the vault, then run this again"
    return (f"{path} is not a vault key store (a DuckDB file); give the vault's key store with --keys-file "
            f"(DuckDB: {said})")


@vault_app.command("rotate-kek")
def rotate_kek(
    new_kek_file: Annotated[Path, typer.Option(
        "--new-kek-file", help="file holding the new KEK (base64 of 32 bytes); if it does not exist, a new KEK is "
                               "generated into it (mode 0600) first")],
    kek_file: Annotated[Path | None, typer.Option(
        "--kek-file", help="file holding the current KEK (default: DATACOOP_VAULT_KEK, as the vault has it)")] = None,
    keys_file: Annotated[Path | None, typer.Option(
        "--keys-file", help="the vault's key store (default: DATACOOP_VAULT_KEYS_FILE, else "
                            "DATACOOP_DATA_DIR/vault-keys.duckdb)")] = None,
) -> None:
    """Re-wrap every member's data key under a new key-encryption key (KEK), with the vault stopped.

    The key store is rewritten into a fresh file that replaces the old one whole. Afterwards the store
    opens only with the new KEK: set DATACOOP_VAULT_KEK to it, start the vault, then destroy the old KEK,
    which leaves the old file's remnants on disk and every backup taken before unreadable."""
    import duckdb
    from pydantic import ValidationError

    from datacoop.store import StoreUnusable
    from services.vault.crypto import Kek, KeyUnwrapFailed, parse_kek
    from services.vault.keystore import KekMismatch, KeyStore
    from services.vault.settings import VaultSettings

    try:
        settings = VaultSettings()
    except ValidationError as exc:
        fail("bad vault settings in the environment: " + "; ".join(
            f"DATACOOP_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()))
    path = keys_file or settings.vault_keys_file or settings.data_dir / "vault-keys.duckdb"
    if not path.is_file():
        fail(f"no key store at {path}; give the vault's with --keys-file (its DATACOOP_VAULT_KEYS_FILE, or "
             "vault-keys.duckdb in its DATACOOP_DATA_DIR)")
    if kek_file is not None:
        current = _read_kek(kek_file, "current")
    elif settings.vault_kek:
        try:
            current = Kek(parse_kek(settings.vault_kek))
        except ValueError as exc:
            fail(f"DATACOOP_VAULT_KEK: {exc}")
    else:
        fail("no current KEK: set DATACOOP_VAULT_KEK as the vault has it, or give --kek-file FILE")
    try:
        store = KeyStore(path, current)
    except KekMismatch as exc:
        fail(str(exc))
    except StoreUnusable as exc:  # the CLI's words: it was given the file, the vault was not started
        cause = exc.__cause__
        fail(_unopenable_store(path, cause) if isinstance(cause, duckdb.Error) else str(exc))
    try:
        new = _new_kek(new_kek_file, current)
        with Progress(TextColumn("re-wrapping data keys"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task("rotate", total=store.count())
            count = store.rotate(new, progress=lambda done, total: progress.update(task, completed=done))
    except KeyUnwrapFailed as exc:
        fail(f"{exc}; nothing was changed: the store still opens with the current KEK")
    except (duckdb.Error, OSError) as exc:
        with contextlib.suppress(duckdb.Error):
            store.close()
        fail(f"the rotation failed ({exc}); {_which_kek_opens(path, current, new, new_kek_file)}")
    finally:
        with contextlib.suppress(duckdb.Error):
            store.close()
    console.print(f"re-wrapped {count} data key(s) in {path} under the KEK in {new_kek_file}; the store now opens "
                  "with that KEK alone. Next: set DATACOOP_VAULT_KEK to it and start the vault; then destroy the old "
                  "KEK, and with it every backup of the key store taken before now (they open only with the old one)",
                  soft_wrap=True)


def _allowed(spec: dict[str, Any]) -> str:
    """What a field takes beyond its type, as a person reads it: a value set, a range, a length, a pattern."""
    parts = []
    if "enum" in spec:
        parts.append(" | ".join(str(v) for v in spec["enum"]))
    if "min" in spec or "max" in spec:
        parts.append(f"{spec.get('min', '…')} to {spec.get('max', '…')}")
    if "max_length" in spec:
        parts.append(f"at most {spec['max_length']:,} characters")
    if "pattern" in spec:
        parts.append(f"matching {spec['pattern']}")
    return "; ".join(parts) or "-"


def categories(
    category: Annotated[str | None, typer.Argument(help="one category: its fields (default: list them all)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the vault's answer as JSON")] = False,
    vault_url: Annotated[str | None, typer.Option("--vault-url", help="vault URL (default: the stack's)")] = None,
) -> None:
    """The data categories the vault takes, or one category's fields: type, required, allowed values (what a
    `datacoop contribute` file must hold; no key needed)."""
    from rich.markup import escape
    from rich.table import Table

    from datacoop.cli.common import call_at, print_table, shaped

    url = service_url("vault", vault_url)
    found = call_at("vault", url, lambda: check(httpx.get(f"{url}/categories", timeout=10)))
    if not isinstance(found, dict) or not all(isinstance(v, dict) and "fields" in v for v in found.values()):
        shaped("vault", url, found, "fields")  # names what answers there instead
    if category is not None and category not in found:
        fail(f"no category {category!r}; the vault takes {', '.join(sorted(found))}", 2)
    if as_json:
        console.print_json(json.dumps(found[category] if category else found))
        return
    if category is None:
        table = Table("category", "version", "fields (required first)", "what it holds")
        for name, schema in sorted(found.items()):
            fields = sorted(schema["fields"].items(), key=lambda kv: not kv[1].get("required"))
            table.add_row(name, f"v{schema['version']}", ", ".join(f for f, _ in fields),
                          escape(str(schema.get("description", ""))))
        print_table(table, whole=(0,))
        console.print("one category's fields and the values each takes: `datacoop categories NAME`",
                      highlight=False)
        return
    schema = found[category]
    table = Table("field", "type", "required", "allowed", title=f"{category} v{schema['version']}: "
                  f"{escape(str(schema.get('description', '')))}", title_justify="left")
    for name, spec in schema["fields"].items():
        table.add_row(escape(name), str(spec.get("type", "?")), "yes" if spec.get("required") else "no",
                      escape(_allowed(spec)))
    print_table(table, whole=(0,))
    console.print(f"upload rows of it as JSON lines or CSV (a header of these names): `datacoop contribute FILE "
                  f"--category {category}`", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root CLI."""
    app.command("contribute")(contribute)
    app.command("categories")(categories)
    app.add_typer(vault_app, name="vault")
