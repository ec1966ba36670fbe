"""Analytics jobs: the provider's worker and the researcher's job commands.

    datacoop worker --key-file K [--jobs-url URL] [--cores N] [--worker-id ID]
    datacoop job submit ORDER ANALYSIS [--params JSON] [--redundancy 2] [--wait]
    datacoop job status JOB
    datacoop job results JOB [--plot-out FILE]      (the worker's signature is verified here)

The jobs URL comes from --jobs-url, DATACOOP_JOBS_URL or the stack; the researcher's API key (the
marketplace's) from --api-key-file, DATACOOP_API_KEY or var/run/researcher.apikey.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from datacoop.cli.common import (
    call_at,
    console,
    expect_service,
    fail,
    not_the_service,
    print_table,
    read_key,
    service_at,
    service_url,
    shaped,
)
from datacoop.cli.market import ApiKeyFile, _api_key

job_app = typer.Typer(no_args_is_help=True, help="Analytics jobs on a paid compute order.")
JOB_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # the jobs service's id shape
JobsUrl = Annotated[str | None, typer.Option("--jobs-url", help="jobs service URL (default: the stack's)")]


def _researcher(jobs_url: str | None, api_key_file: Path | None) -> tuple[Any, str]:
    """The researcher's client of the jobs service, and its URL."""
    from services.worker.client import ResearcherJobs

    url = service_url("jobs", jobs_url)
    return ResearcherJobs(url, _api_key(api_key_file)), url


def _job_id(job_id: str) -> str:
    """JOB as typed, once it has a job id's shape (so `x?y` is not sent as job x with a query)."""
    if not JOB_ID.fullmatch(job_id):
        fail(f"JOB {job_id!r} is not a job id; give the id `datacoop job submit` printed (1-64 letters, digits, "
             "'.', '_', ':' or '-')")
    return job_id


def _finite_only(constant: str) -> Any:
    fail(f"--params holds {constant}, which JSON results can't carry; use finite numbers", 2)


def _call(url: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from services.worker.client import ResultInvalid

    try:
        return call_at("jobs", url, fn, *args, **kwargs)
    except ResultInvalid as exc:
        fail(f"the result does not verify: {exc}")


def worker(
    key_file: Annotated[Path | None, typer.Option("--key-file", envvar="DATACOOP_WORKER_KEY_FILE",
                                                  help="the provider's payout key (hex); else DATACOOP_KEY")] = None,
    jobs_url: JobsUrl = None,
    cores: Annotated[int | None, typer.Option("--cores", min=1, envvar="DATACOOP_WORKER_CORES",
                                              help="CPU threads to offer (BLAS threads)")] = None,
    worker_id: Annotated[str | None, typer.Option("--worker-id", envvar="DATACOOP_WORKER_ID",
                                                  help="default: host name + a hash of the provider address and "
                                                       "host name (the same on every run of this machine with this "
                                                       "key)")] = None,
    object_store: Annotated[str | None, typer.Option("--object-store", envvar="DATACOOP_WORKER_OBJECT_STORE",
                                                     help="folder of relative locations")] = None,
) -> None:
    """Run a worker: register this machine with your payout address, heartbeat, take and run jobs.
    Exits non-zero, saying why, when it can't (its backend can't run here, its registration is refused)."""
    from services.worker.main import run
    from services.worker.worker import JobsServiceUnreachable, WorkerCannotStart

    key = read_key(key_file, bad_key_code=2)  # docs/jobs.md: a setting it can't use stops it with status 2
    url = service_url("jobs", jobs_url)
    os.environ.setdefault("DATACOOP_LOG_JSON", "false")  # a person reads this terminal, not a log shipper
    try:
        run(url, key, worker_id, cores, object_store)
    except JobsServiceUnreachable as exc:
        fail(f"the worker cannot run: {exc}", code=3)
    except WorkerCannotStart as exc:
        expect_service("jobs", url, unknown_ok=True, code=2)  # refused by another service (its URL given)?
        fail(f"the worker cannot run: {exc}", code=2)


@job_app.command("submit")
def submit(
    order_id: Annotated[str, typer.Argument(help="a paid order with offer `compute`")],
    analysis: Annotated[str, typer.Argument(help="describe, aggregate, histogram, correlation, ols, logistic, "
                                                 "kmeans, pca")],
    params: Annotated[str, typer.Option("--params", help="the analysis' parameters as JSON")] = "{}",
    redundancy: Annotated[int | None, typer.Option("--redundancy", min=1, max=2,
                                                   help="2: two workers must agree")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the job to finish")] = False,
    jobs_url: JobsUrl = None, api_key_file: ApiKeyFile = None,
) -> None:
    """Submit a job; its parameters are checked against the version's columns now."""
    try:
        parsed = json.loads(params, parse_constant=_finite_only)
    except json.JSONDecodeError as exc:
        fail(f"--params is not JSON ({exc.msg}); e.g. --params '{{\"column\": \"age\"}}'", 2)
    if not isinstance(parsed, dict):
        fail("--params must be a JSON object", 2)
    client, url = _researcher(jobs_url, api_key_file)
    job = shaped("jobs", url, _call(url, client.submit, order_id, analysis, parsed, redundancy), "job_id", "redundancy")
    console.print(f"job {job['job_id']} submitted ({analysis}, redundancy {job['redundancy']})", highlight=False)
    if wait:
        job = _call(url, client.wait, job["job_id"], 600)
        console.print(f"job {job['job_id']} is {job['status']}", highlight=False)
        if job["status"] == "failed":
            fail(f"job {job['job_id']} failed: {job['failure']}")


@job_app.command("status")
def status(job_id: str, jobs_url: JobsUrl = None, api_key_file: ApiKeyFile = None) -> None:
    """A job's state, progress and leases."""
    _job_id(job_id)
    client, url = _researcher(jobs_url, api_key_file)
    job = shaped("jobs", url, _call(url, client.status, job_id), "status", "progress", "leases")
    console.print(f"job {job_id}: {job['status']} ({job['progress']:.0%}) {job['analysis']} on "
                  f"{job['dataset_id']}@{job['version']}", highlight=False)
    for lease in job["leases"]:
        console.print(f"  lease {lease['lease_id'][:8]} worker {lease['worker_id']}: {lease['state']}",
                      highlight=False)
    if job["failure"]:
        console.print(f"  failure: {job['failure']}", highlight=False)


@job_app.command("results")
def results(
    job_id: str,
    plot_out: Annotated[Path | None, typer.Option("--plot-out", help="write the PNG plot here")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a file already at --plot-out")] = False,
    jobs_url: JobsUrl = None, api_key_file: ApiKeyFile = None,
) -> None:
    """The accepted result as JSON, after checking its hash and the worker's signature."""
    if plot_out is not None and plot_out.is_dir():
        fail(f"--plot-out {plot_out} is a folder; name the file to write, e.g. --plot-out {plot_out / 'plot.png'}")
    if plot_out is not None and plot_out.exists() and not overwrite:
        fail(f"{plot_out} already exists; pass --overwrite to replace it, or another --plot-out")
    _job_id(job_id)
    client, url = _researcher(jobs_url, api_key_file)
    answer = shaped("jobs", url, _call(url, client.result, job_id), "has_plot", "result")
    if plot_out is not None and answer["has_plot"]:
        png = _call(url, client.plot, job_id)
        try:
            plot_out.parent.mkdir(parents=True, exist_ok=True)
            plot_out.write_bytes(png)
        except OSError as exc:
            fail(f"cannot write the plot to --plot-out {plot_out}: {exc.strerror}; give a path you can write to")
    console.print_json(json.dumps({"job_id": job_id, "verified_signer": answer["provider"],
                                   "workers": answer["workers"], "result": answer["result"]}))
    if plot_out is not None and not answer["has_plot"]:  # the result is what was asked for; say what is missing
        console.print(f"[yellow]note[/yellow]: job {job_id}'s analysis draws no plot (histogram, pca and kmeans "
                      f"do); nothing was written to {escape(str(plot_out))}", highlight=False, soft_wrap=True)


@job_app.command("analyses")
def analyses(jobs_url: JobsUrl = None) -> None:
    """The vetted analyses a job may run, with each one's parameters: type, required or optional, default."""
    from datacoop.http import check

    url = service_url("jobs", jobs_url)
    catalog = call_at("jobs", url, lambda: check(httpx.get(f"{url}/analyses", timeout=30)))
    if not isinstance(catalog, dict) or not all(isinstance(s, dict) for s in catalog.values()):
        not_the_service("jobs", url, service_at(url))
    table = Table(title="analyses (`datacoop job submit ORDER ANALYSIS --params JSON`)", box=box.SIMPLE_HEAD)
    for col in ("analysis", "parameter", "type", "required", "default"):
        table.add_column(col)
    for name, schema in catalog.items():
        required = set(schema.get("required") or [])
        for param, spec in (schema.get("properties") or {}).items():
            table.add_row(escape(name), escape(param), escape(_type(spec)),  # `[number, number]` is text, not markup
                          "required" if param in required else "optional",
                          "-" if param in required or "default" not in spec else escape(json.dumps(spec["default"])))
    print_table(table, whole=(0, 1))
    console.print('--params is a JSON object of these, e.g. --params \'{"column": "age", "bins": 20}\' for histogram',
                  highlight=False, markup=False, soft_wrap=True)


def _type(spec: dict[str, Any]) -> str:
    """A JSON schema (pydantic's) in a few words: `list of string (1-256)`, `integer (1-1000)`, `pearson|spearman`."""
    if "anyOf" in spec:
        return " or ".join(_type(option) for option in spec["anyOf"])
    if "const" in spec:
        return json.dumps(spec["const"])
    if "enum" in spec:
        return "|".join(str(v) for v in spec["enum"])
    kind = spec.get("type", "any")
    if kind == "array":
        if "prefixItems" in spec:
            return "[" + ", ".join(_type(item) for item in spec["prefixItems"]) + "]"
        words = f"list of {_type(spec.get('items') or {})}"
        return words + _bounds(spec.get("minItems"), spec.get("maxItems"), " items")
    if kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        words = "{name: " + _type(spec["additionalProperties"]) + "}"
        return words + _bounds(spec.get("minProperties"), spec.get("maxProperties"), " names")
    words = str(kind)
    if "exclusiveMinimum" in spec:
        words += f" (> {spec['exclusiveMinimum']:g}" + (f", <= {spec['maximum']:g})" if "maximum" in spec else ")")
        return words
    return words + _bounds(spec.get("minimum"), spec.get("maximum"), "")


def _bounds(least: Any, most: Any, unit: str) -> str:
    """` (1 to 256 items)`, ` (>= 0)`, ` (<= 4 items)`, or nothing without bounds."""
    if least is None and most is None:
        return ""
    if most is None:
        return f" (>= {least:g}{unit})"
    if least is None:
        return f" (<= {most:g}{unit})"
    return f" ({least:g} to {most:g}{unit})"


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root CLI."""
    app.command("worker")(worker)
    app.add_typer(job_app, name="job")
