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
from rich.markup import escape

from datacoop.cli.common import console, fail, read_key, service_url
from datacoop.cli.market import ApiKeyFile, _api_key

job_app = typer.Typer(no_args_is_help=True, help="Analytics jobs on a paid compute order.")
JOB_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # the jobs service's id shape
JobsUrl = Annotated[str | None, typer.Option("--jobs-url", help="jobs service URL (default: the stack's)")]


def _researcher(jobs_url: str | None, api_key_file: Path | None) -> Any:
    from services.worker.client import ResearcherJobs

    return ResearcherJobs(service_url("jobs", jobs_url), _api_key(api_key_file))


def _job_id(job_id: str) -> str:
    """JOB as typed, once it has a job id's shape (so `x?y` is not sent as job x with a query)."""
    if not JOB_ID.fullmatch(job_id):
        fail(f"JOB {job_id!r} is not a job id; give the id `datacoop job submit` printed (1-64 letters, digits, "
             "'.', '_', ':' or '-')")
    return job_id


def _finite_only(constant: str) -> Any:
    fail(f"--params holds {constant}, which JSON results can't carry; use finite numbers")


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from services.worker.client import ApiError, ResultInvalid

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        fail(f"{exc.status}: {exc.problem.get('detail', exc.problem)}")
    except ResultInvalid as exc:
        fail(f"the result does not verify: {exc}")
    except httpx.HTTPError as exc:
        fail(f"cannot reach the jobs service ({exc}); is the stack up (`datacoop up`)?")


def worker(
    key_file: Annotated[Path | None, typer.Option("--key-file", envvar="DATACOOP_WORKER_KEY_FILE",
                                                  help="the provider's payout key (hex); else DATACOOP_KEY")] = None,
    jobs_url: JobsUrl = None,
    cores: Annotated[int | None, typer.Option("--cores", min=1, envvar="DATACOOP_WORKER_CORES",
                                              help="CPU threads to offer (BLAS threads)")] = None,
    worker_id: Annotated[str | None, typer.Option("--worker-id", envvar="DATACOOP_WORKER_ID",
                                                  help="default: host name + random suffix")] = None,
    object_store: Annotated[str | None, typer.Option("--object-store", envvar="DATACOOP_WORKER_OBJECT_STORE",
                                                     help="folder of relative locations")] = None,
) -> None:
    """Run a worker: register this machine with your payout address, heartbeat, take and run jobs.
    Exits non-zero, saying why, when it can't (its backend can't run here, its registration is refused)."""
    from services.worker.main import run
    from services.worker.worker import WorkerCannotStart

    key = read_key(key_file)
    os.environ.setdefault("DATACOOP_LOG_JSON", "false")  # a person reads this terminal, not a log shipper
    try:
        run(service_url("jobs", jobs_url), key, worker_id, cores, object_store)
    except WorkerCannotStart as exc:
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
        fail(f"--params is not JSON ({exc.msg}); e.g. --params '{{\"column\": \"age\"}}'")
    if not isinstance(parsed, dict):
        fail("--params must be a JSON object")
    client = _researcher(jobs_url, api_key_file)
    job = _call(client.submit, order_id, analysis, parsed, redundancy)
    console.print(f"job {job['job_id']} submitted ({analysis}, redundancy {job['redundancy']})", highlight=False)
    if wait:
        job = _call(client.wait, job["job_id"], 600)
        console.print(f"job {job['job_id']} is {job['status']}", highlight=False)
        if job["status"] == "failed":
            fail(f"job {job['job_id']} failed: {job['failure']}")


@job_app.command("status")
def status(job_id: str, jobs_url: JobsUrl = None, api_key_file: ApiKeyFile = None) -> None:
    """A job's state, progress and leases."""
    _job_id(job_id)
    job = _call(_researcher(jobs_url, api_key_file).status, job_id)
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
    jobs_url: JobsUrl = None, api_key_file: ApiKeyFile = None,
) -> None:
    """The accepted result as JSON, after checking its hash and the worker's signature."""
    if plot_out is not None and plot_out.is_dir():
        fail(f"--plot-out {plot_out} is a folder; name the file to write, e.g. --plot-out {plot_out / 'plot.png'}")
    _job_id(job_id)
    client = _researcher(jobs_url, api_key_file)
    answer = _call(client.result, job_id)
    if plot_out is not None and answer["has_plot"]:
        png = _call(client.plot, job_id)
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


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root CLI."""
    app.command("worker")(worker)
    app.add_typer(job_app, name="job")
