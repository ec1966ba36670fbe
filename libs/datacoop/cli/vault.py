"""Vault commands: `datacoop contribute FILE --category C` (signed upload with a progress bar)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from datacoop.cli.common import console, fail, read_key, service_url
from datacoop.http import ApiError, check
from services.vault.client import VaultClient
from services.vault.client import upload_format as format_of

_CHUNK_BYTES = 64 * 1024


def _problem_line(exc: ApiError) -> str:
    problem = exc.problem
    line = f"{exc.status}: {problem.get('detail', problem)}"
    # an upload's bad rows, each named (a refused request, e.g. an empty body, says it all in `detail`)
    # (row 0: a problem of the whole upload, which `detail` already says)
    rows = [e for e in problem.get("errors") or [] if isinstance(e, dict) and e.get("row")]
    if rows:
        shown = "; ".join(f"row {e['row']} {e.get('field', '')}: {e.get('message', '')}" for e in rows[:5])
        more = problem.get("error_count", len(rows)) - min(len(rows), 5)
        line += f" — {shown}" + (f"; and {more} more" if more > 0 else "")
    return line


def contribute(
    file: Annotated[Path, typer.Argument(metavar="FILE",
                                         help="records as JSON lines (.jsonl) or CSV (.csv, header row, , or ;)")],
    category: Annotated[str, typer.Option("--category", help="demographics | health | fitness | location | finance")],
    key_file: Annotated[Path | None, typer.Option("--key-file", help="file holding the wallet's hex private key")]
    = None,
    vault_url: Annotated[str | None, typer.Option("--vault-url", help="vault URL (default: the stack's)")] = None,
    upload_format: Annotated[str | None, typer.Option("--format", help="jsonl | csv (default: from the file's "
                                                                        "extension)")] = None,
) -> None:
    """Contribute a file of records: signed by your wallet, encrypted by the vault, all rows or none."""
    if not file.is_file():
        fail(f"{file} does not exist or is not a file; give a .jsonl or .csv file of records")
    if upload_format is not None and upload_format not in ("jsonl", "csv"):
        fail(f"--format must be jsonl or csv, not {upload_format!r}")
    upload_format = upload_format or format_of(file)
    if upload_format not in ("jsonl", "csv"):
        fail(f"cannot tell the format of {file.name}: use .jsonl or .csv (or pass --format jsonl|csv)")
    try:
        content = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file} as UTF-8 text ({exc})")
    if not content.strip():
        fail(f"{file} is empty: nothing to contribute; give a file with at least one record")
    url = service_url("vault", vault_url)
    try:
        client = VaultClient(read_key(key_file), url)
        body = json.dumps(client.contribute_body(category, content, upload_format)).encode()
        result = _upload(client, body)
    except ApiError as exc:
        fail(_problem_line(exc))
    except httpx.HTTPError as exc:
        fail(f"cannot reach the vault at {url} ({exc}); is the stack up (`datacoop up`)?")
    console.print(f"contributed {result['records']} record(s) of {result['category']} as upload "
                  f"{result['upload_id']} (schema v{result['schema_version']}), encrypted with your data key")


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


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root CLI."""
    app.command("contribute")(contribute)
