"""Dataset commands: `datacoop dataset list | show ID | define FILE | build ID` (build follows the API with a
progress bar)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from datacoop.cli.common import (
    call_at,
    console,
    err,
    fail,
    operator_token,
    print_table,
    read_text_file,
    refused,
    service_url,
    shaped,
    unreachable,
)
from datacoop.http import ApiError
from services.anonymizer.client import AnonymizerClient

dataset_app = typer.Typer(no_args_is_help=True, help="Datasets: the catalog, versions and their guarantees, builds.")

UrlOption = Annotated[str | None, typer.Option("--anonymizer-url", help="anonymizer URL (default: the stack's)")]


def _client(url: str | None, token: str | None = None) -> tuple[AnonymizerClient, str]:
    """The anonymizer's client, and its URL."""
    base = service_url("anonymizer", url)
    return AnonymizerClient(base, token), base


def _guarantees(v: dict[str, Any]) -> str:
    return (f"k={v['k']}, l={v['l_diversity']:g}, epsilon={v['epsilon']:g}, {v['rows']:,} rows, "
            f"{v['suppressed_rows']:,} suppressed, information loss {v['information_loss']:.4f}")


@dataset_app.command("list")
def list_datasets(anonymizer_url: UrlOption = None) -> None:
    """The catalog: every dataset and its newest version on offer."""
    client, url = _client(anonymizer_url)
    catalog = shaped("anonymizer", url, call_at("anonymizer", url, client.catalog), "dataset_id", "newest_version")
    table = Table(title="datasets")
    for col in ("dataset", "purpose", "categories", "newest version", "guarantees"):
        table.add_column(col)
    for d in catalog:
        v = d["newest_version"]
        table.add_row(d["dataset_id"], d["purpose"], ", ".join(d["categories"]), str(v["version"]) if v else "-",
                      _guarantees(v) if v else "no version yet")
    print_table(table, whole=(0,))
    _refused_files(client)


def _refused_files(client: AnonymizerClient) -> None:
    """A warning per definition file the anonymizer refused at start (else only its log says so)."""
    try:
        files = client.definition_files()
    except (ApiError, httpx.HTTPError):  # not read yet (503), or an anonymizer without the route: nothing to add
        return
    for f in files:
        if isinstance(f, dict) and f.get("outcome") in ("refused", "unreadable"):
            problems = "; ".join(map(str, f.get("problems") or []))
            err.print("[yellow]warning:[/yellow] " + escape(
                f"the definition file {f.get('file')} was {f['outcome']} at start: {problems}; fix it and restart the "
                "anonymizer, or define it with `datacoop dataset define FILE`"), highlight=False, soft_wrap=True)


def _dataset_id(value: str) -> str:
    """A dataset id as the services take them (a slug), or a usage error that says the rule and where ids are."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{1,63}", value):
        fail(f"{value!r} is not a dataset id: one is 2 to 64 lower-case letters, digits and hyphens, starting with a "
             "letter (`datacoop dataset list` lists them)", 2)
    return value


@dataset_app.command("show")
def show(dataset_id: Annotated[str, typer.Argument(help="the dataset id", callback=_dataset_id)],
         version: Annotated[int | None, typer.Option("--version", help="a version (default: every one)")] = None,
         anonymizer_url: UrlOption = None) -> None:
    """A dataset's definition (without --version) and its versions: location, sha256, contributors and
    what each guarantees."""
    if version is not None and version < 1:
        fail(f"--version {version} is no version: versions are numbered from 1 (`datacoop dataset show {dataset_id}` "
             "lists them)", 2)
    client, url = _client(anonymizer_url)
    defined = None if version is not None else call_at("anonymizer", url, client.definition, dataset_id)
    versions = ([call_at("anonymizer", url, client.version, dataset_id, version)] if version is not None
                else call_at("anonymizer", url, client.versions, dataset_id))
    shaped("anonymizer", url, versions, "version", "superseded")
    if defined is not None:
        _print_definition(defined)
    if not versions:
        console.print(f"{dataset_id} has no version yet; build one with `datacoop dataset build {dataset_id}`")
    for v in versions:
        state = f"superseded by {v['superseded_by']}" if v["superseded"] else "on offer"
        console.print(f"[bold]{dataset_id} version {v['version']}[/bold] ({state}): {_guarantees(v)}; "
                      f"{v['contributors']} contributor(s); {v['privacy_model']}", highlight=False)
        console.print(f"  {v['location']}\n  sha256 {v['sha256']}", highlight=False)


def _print_definition(d: dict[str, Any]) -> None:
    body = d.get("definition") or {}
    privacy = body.get("privacy") or {}
    aggregates = body.get("aggregates") or {}
    model = ", ".join(f"{k} {v}" for k, v in privacy.items())
    console.print(f"[bold]{d['dataset_id']}[/bold] (definition v{d.get('definition_version')}): purpose "
                  f"{d.get('purpose')}, categories {', '.join(d.get('categories') or [])}", highlight=False)
    console.print(f"  quasi-identifiers: {', '.join(body.get('quasi_identifiers') or {}) or '-'}; sensitive: "
                  f"{', '.join(body.get('sensitive') or []) or '-'}; published as is: "
                  f"{', '.join(body.get('published_as_is') or []) or '-'}", highlight=False)
    console.print(f"  privacy: {model or '-'}" + (f"; aggregates epsilon {aggregates['epsilon']}"
                                                  if "epsilon" in aggregates else ""), highlight=False)


@dataset_app.command("define")
def define(file: Annotated[Path, typer.Argument(help="the definition, YAML or JSON (format: docs/anonymization.md)")],
           check_only: Annotated[bool, typer.Option("--check", help="only check it (POST /definitions/validate); "
                                                    "define nothing")] = False,
           token: Annotated[str | None, typer.Option("--token", help="operator token (default: "
                                                     "DATACOOP_ANONYMIZER_OPERATOR_TOKEN, else the local "
                                                     "stack's development token)")] = None,
           anonymizer_url: UrlOption = None) -> None:
    """Define a dataset, or a new version of its definition, from a file (POST /definitions): the anonymizer
    checks it and, when it refuses it, every problem is listed with its fix. Then `datacoop dataset build`."""
    if not file.exists():
        fail(f"definition file {file} does not exist; pass a dataset definition in YAML or JSON", 2)
    text = read_text_file(file, "definition file", "a dataset definition in YAML or JSON")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        fail(f"definition file {file} is not YAML or JSON{at} ({getattr(exc, 'problem', None) or exc}); fix it", 2)
    if not isinstance(raw, dict):
        fail(f"definition file {file} must hold one mapping (name, version, purpose, columns, quasi_identifiers, "
             "...; docs/anonymization.md), not a list or a single value", 2)
    try:  # YAML's dates and the like as JSON sends them (the service reads "2026-01-01" as a date)
        raw = json.loads(json.dumps(raw, default=str, allow_nan=False))
    except ValueError as exc:
        fail(f"definition file {file} holds a value JSON cannot carry ({exc}); write numbers as finite numbers", 2)
    client, url = _client(anonymizer_url, operator_token(token, "DATACOOP_ANONYMIZER_OPERATOR_TOKEN"))
    try:
        answer = client.validate(raw) if check_only else client.define(raw)
    except ApiError as exc:
        problems = exc.problem.get("problems")
        if exc.status == 422 and isinstance(problems, list) and problems:
            err.print(f"[red]error:[/red] the anonymizer refused {file} ({len(problems)} problem(s)):", highlight=False)
            for problem in problems:
                err.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        refused("anonymizer", url, exc.status, exc.problem.get("detail", exc.problem))
    except httpx.HTTPError as exc:
        unreachable("anonymizer", url, exc)
    if check_only:
        console.print(f"{file} is a valid definition of {answer['dataset_id']} ({answer['privacy_model']}); "
                      f"generalized: {', '.join(answer['quasi_identifiers']) or 'none'}; published as is: "
                      f"{', '.join(answer['published_as_is']) or 'none'}", highlight=False, soft_wrap=True)
        return
    what = "defined" if answer.get("created") else "already defined, unchanged:"
    console.print(f"{what} {answer.get('dataset_id', raw.get('name'))} definition version "
                  f"{answer.get('definition_version', raw.get('version'))}; build a version with `datacoop dataset "
                  f"build {answer.get('dataset_id', raw.get('name'))}`", highlight=False, soft_wrap=True)


@dataset_app.command("build")
def build(dataset_id: Annotated[str, typer.Argument(help="the dataset id", callback=_dataset_id)],
          token: Annotated[str | None, typer.Option("--token", help="operator token (default: "
                                                    "DATACOOP_ANONYMIZER_OPERATOR_TOKEN, else the local "
                                                    "stack's development token)")] = None,
          anonymizer_url: UrlOption = None,
          timeout_s: Annotated[float, typer.Option("--timeout-s", help="give up after this long")] = 600,
          force: Annotated[bool, typer.Option("--force", help="publish even when the newest version already holds "
                                                             "the records eligible now, or what they give")] = False
          ) -> None:
    """Build a new version now and follow it with a progress bar (nothing is published when the newest version
    on offer already holds exactly the records eligible now, or exactly the rows and contributors they give,
    unless --force)."""
    client, url = _client(anonymizer_url, operator_token(token, "DATACOOP_ANONYMIZER_OPERATOR_TOKEN"))
    v = call_at("anonymizer", url, _build, client, dataset_id, force, timeout_s)
    if v is not None:
        console.print(f"published {dataset_id} version {v['version']}: {_guarantees(v)}; "
                      f"{v['contributors']} contributor(s)", highlight=False)


def _build(client: AnonymizerClient, dataset_id: str, force: bool, timeout_s: float) -> dict[str, Any] | None:
    """Request a build and follow it: the version it published, or None when it published nothing."""
    build_id = client.request_build(dataset_id, force)["build_id"]
    status = _follow(client, dataset_id, build_id, timeout_s)
    if status.get("outcome") == "unchanged":
        console.print(f"nothing published: version {status.get('version')} of {dataset_id} already holds "
                      f"exactly the records eligible now, or the same rows and contributors they give; "
                      f"`datacoop dataset build {dataset_id} --force` publishes them again "
                      "(e.g. after changing the anonymizer's mode)", highlight=False, markup=False)
        return None
    if status.get("outcome") != "published":
        fail(f"build {build_id} of {dataset_id} failed: {status.get('detail') or 'no reason given'}")
    return client.version(dataset_id, int(status["version"]))


def _follow(client: AnonymizerClient, dataset_id: str, build_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True,
                  disable=not console.is_terminal) as progress:  # no bar (nor its blank line) in a pipe
        task = progress.add_task("queued", total=None)
        while time.monotonic() < deadline:
            status = client.build_status(dataset_id, build_id)
            if status.get("outcome"):
                return status
            total = int(status.get("total") or 0)
            progress.update(task, description=str(status.get("stage")), completed=int(status.get("done") or 0),
                            total=total or None)
            time.sleep(0.2)
    fail(f"build {build_id} of {dataset_id} did not finish within {timeout_s:.0f} s; "
         f"follow it with `datacoop dataset show {dataset_id}`")


# -- the demo chapter -------------------------------------------------------------------------------

ADULT_QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]


def demo_definition(name: str = "census-demo") -> dict[str, Any]:
    """A census dataset over the vault's demographics records (UCI Adult hierarchies from the shared dir)."""
    columns: dict[str, Any] = {c: {"type": "categorical"} for c in ADULT_QIS}
    columns["age"] = {"type": "integer", "min": 17, "max": 90}
    columns["salary-class"] = {"type": "categorical", "values": ["<=50K", ">50K"]}
    return {"name": name, "version": 1, "purpose": "public-statistics", "data_categories": ["demographics"],
            "columns": columns,
            "quasi_identifiers": {c: {"csv": f"data/adult/adult_hierarchy_{c}.csv"} for c in ADULT_QIS},
            "sensitive": ["salary-class"], "privacy": {"k": 3, "l": 2, "l_kind": "distinct", "suppression_limit": 0.1},
            "aggregates": {"epsilon": 1.0, "mechanism": "laplace", "value_column": "age", "value_bounds": [17, 90]}}


def chapter_datasets(state: Any, console: Any, members: int = 20, rows_each: int = 2) -> None:
    """Members consent and contribute; the operator defines a dataset and builds it; one member revokes
    and the next version (built by itself) leaves them out. `state.stack` is the stack description."""
    from eth_account import Account

    from services.consent.client import MemberWallet
    from services.vault.client import VaultClient, sample_rows

    console.rule("datasets: consented records -> k-anonymous version; revocation -> a new version")
    urls = {name: svc["url"] for name, svc in state.stack["services"].items()}
    client = AnonymizerClient(urls["anonymizer"], operator_token(None, "DATACOOP_ANONYMIZER_OPERATOR_TOKEN"))
    wallets = []
    for i in range(members):
        key = Account.create().key.hex()
        wallet = MemberWallet(key, urls["consent"])
        wallet.register()
        consent_id = wallet.grant("public-statistics", ["demographics"])["consent_id"]
        vault = VaultClient(key, urls["vault"])
        deadline = time.monotonic() + 15
        while vault.summary_response().status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the vault did not see a registration within 15 s")
            time.sleep(0.1)
        vault.contribute_rows("demographics", sample_rows("demographics", rows_each, seed=i))
        wallets.append((wallet, consent_id))
    if hasattr(state, "dataset_members"):
        state.dataset_members.extend(w for w, _ in wallets)
    definition = demo_definition()
    client.define(definition)
    first = client.build(definition["name"])
    console.print(f"{definition['name']} version {first['version']}: {_guarantees(first)}; "
                  f"{first['contributors']} contributor(s)", highlight=False)
    leaver, consent_id = wallets[0]
    leaver.revoke(consent_id)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        versions = client.versions(definition["name"])
        newest = versions[-1]
        # the version without them (a rebuild for records still arriving may have replaced `first` before)
        if not newest["superseded"] and all(v["superseded"] for v in versions[:-1]) \
                and leaver.address not in client.contributors(definition["name"], newest["version"]):
            left = next((v for v in versions if v["superseded"] and "consent ended" in (v["superseded_reason"] or "")),
                        versions[first["version"] - 1])
            console.print(f"{leaver.address[:10]}… revoked: version {left['version']} superseded "
                          f"({left['superseded_reason']}); version {newest['version']}: "
                          f"{_guarantees(newest)}; {newest['contributors']} contributor(s), without them (the "
                          "operator's view of who is in a version: GET .../contributors)", highlight=False)
            return
        time.sleep(0.3)
    console.print("[yellow]no new version within 60 s of the revocation[/yellow]")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root CLI."""
    app.add_typer(dataset_app, name="dataset")
