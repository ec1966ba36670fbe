"""Analytics jobs: the provider's worker and the researcher's job commands.

    datacoop worker --key-file K [--jobs-url URL] [--cores N] [--worker-id ID]
    datacoop job submit ORDER ANALYSIS [--params JSON] [--redundancy 2] [--wait]  (--wait: states as they change)
    datacoop job status JOB
    datacoop job results JOB [--plot-out FILE] [--json]  (the worker's signature is verified here)

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
    err,
    expect_service,
    fail,
    not_the_service,
    print_table,
    read_key,
    service_at,
    service_url,
    shaped,
)
from datacoop.cli.market import ApiKeyFile, _api_key, rounded

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
        _follow(client, url, str(job["job_id"]), WAIT_S)


WAIT_S = 600.0  # how long `job submit --wait` follows a job
WAIT_POLL_S = 2.0  # how often it asks (a long poll: the answer comes at once when the job ends)
WAIT_QUIET_S = 10.0  # the longest it stays silent: a line saying the job's state, changed or not


def _follow(client: Any, url: str, job_id: str, timeout_s: float) -> None:
    """Print the job's state as it changes (and every WAIT_QUIET_S at least) until it ends or `timeout_s`
    passes; a failed job fails the command, a completed one points to its results."""
    import time

    started = time.monotonic()
    said: tuple[str, int] | None = None
    said_at = started
    while True:
        asked = time.monotonic()
        left = timeout_s - (asked - started)
        job = shaped("jobs", url, _call(url, client.status, job_id, min(WAIT_POLL_S, max(0.0, left))),
                     "status", "progress")
        now = time.monotonic()
        state = (str(job["status"]), round(float(job["progress"] or 0) * 100))
        if job["status"] in ("completed", "failed"):
            break
        if state != said or now - said_at >= WAIT_QUIET_S:
            console.print(f"  {now - started:4.0f} s  {state[0]}" + (f" ({state[1]}%)" if state[0] == "running"
                                                                       else ""), highlight=False)
            said, said_at = state, now
        if now - started >= timeout_s:
            console.print(f"job {job_id} is still {job['status']} after {timeout_s:.0f} s; `datacoop job status "
                          f"{job_id}` follows it, `datacoop job results {job_id}` shows its result once it is "
                          "completed", highlight=False, soft_wrap=True)
            return
        time.sleep(max(0.0, WAIT_POLL_S - (now - asked)))  # a service that answers at once is not asked in a loop
    if job["status"] == "failed":
        fail(f"job {job_id} failed: {job.get('failure') or 'no reason given'}")
    console.print(f"job {job_id} completed in {time.monotonic() - started:.0f} s; `datacoop job results {job_id}` "
                  "shows its result", highlight=False, soft_wrap=True)


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
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON, as the worker gave it")] = False,
    jobs_url: JobsUrl = None, api_key_file: ApiKeyFile = None,
) -> None:
    """The accepted result, after checking its hash and the worker's signature (--json: as JSON)."""
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
    if as_json:
        console.print_json(json.dumps({"job_id": job_id, "verified_signer": answer["provider"],
                                       "workers": answer["workers"], "result": answer["result"]}))
    else:
        console.print(f"job {escape(job_id)}: {escape(str(answer.get('analysis') or 'result'))}, verified: signed by "
                      f"provider {answer['provider']} (worker(s) {escape(', '.join(map(str, answer['workers'])))})",
                      highlight=False, soft_wrap=True)
        _print_result(str(answer.get("analysis") or ""), answer["result"])
    said = err if as_json else console  # --json keeps standard output JSON alone
    if plot_out is not None and not answer["has_plot"]:  # the result is what was asked for; say what is missing
        said.print(f"[yellow]note[/yellow]: job {job_id}'s analysis draws no plot (histogram, pca and kmeans "
                      f"do); nothing was written to {escape(str(plot_out))}", highlight=False, soft_wrap=True)
    elif plot_out is not None:
        said.print(f"plot written to {escape(str(plot_out))}", highlight=False, soft_wrap=True)
    elif answer["has_plot"]:
        said.print(f"this result has a plot: `datacoop job results {job_id} --plot-out plot.png` writes it",
                      highlight=False, markup=False, soft_wrap=True)


def _print_result(analysis: str, result: Any) -> None:
    """An analysis' result in tables and `name: value` lines, every figure rounded for reading (--json has
    them whole); a result of a shape this CLI does not know is printed as lines, nothing left out."""
    if not isinstance(result, dict):
        console.print(_value(result), highlight=False, markup=False, soft_wrap=True)
        return
    shown: set[str] = set()
    show = _SHOWS.get(analysis)
    if show is not None:
        try:
            shown = show(result)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):  # another shape: every key as a line
            shown = set()
    for key, value in result.items():
        if key not in shown:
            console.print(f"{key.replace('_', ' ')}: {_value(value)}", highlight=False, markup=False, soft_wrap=True)


def _value(value: Any) -> str:
    """A figure, list or mapping of a result in one line, numbers rounded (datacoop.cli.market.rounded)."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        if value and all(isinstance(v, list) for v in value):
            return "; ".join(f"[{_value(v)}]" for v in value)
        return ", ".join(_value(v) for v in value) or "-"
    return rounded(value)


def _table(columns: list[str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for i, col in enumerate(columns):
        table.add_column(escape(col), justify="left" if i == 0 else "right")
    return table


def _suppressed_note(what: str, smallest: Any, advice: str) -> None:
    console.print(f"[yellow]every {what} was suppressed: each held fewer than {smallest} rows; {advice}[/yellow]",
                  highlight=False, soft_wrap=True)


def _histogram(result: dict[str, Any]) -> set[str]:
    edges, counts, smallest = result["edges"], result["counts"], result["min_group_size"]
    table = _table(["bin", "rows"])
    for i, count in enumerate(counts):
        table.add_row(f"{rounded(edges[i])} to {rounded(edges[i + 1])}",
                      f"suppressed (< {smallest} rows)" if count is None else f"{count:,}")
    console.print(f"histogram of {escape(str(result['column']))}: rows per bin (the last bin includes its upper "
                  "edge)", highlight=False)
    print_table(table)
    console.print(f"nulls: {rounded(result['nulls'])}; outside the bins: {rounded(result['outside'])}; "
                  f"suppressed: {rounded(result['bins_suppressed'])} bin(s) holding "
                  f"{rounded(result['rows_suppressed'])} row(s), each under {smallest} rows", highlight=False)
    if smallest > 1:
        console.print(f"asked without a range, the bins span the mean of the {smallest} smallest values through "
                      f"that of the {smallest} largest, and the first and last bins also count the values beyond",
                      highlight=False)
    if result["bins_suppressed"] and not any(counts):
        _suppressed_note("bin" if all(c is None for c in counts) else "bin that held rows", smallest,
                         "the dataset version is too small for this histogram — try fewer bins")
    return {"column", "edges", "counts", "nulls", "outside", "bins_suppressed", "rows_suppressed", "min_group_size"}


def _describe(result: dict[str, Any]) -> set[str]:
    stats = ["mean", "std", "min", "q25", "median", "q75", "max"]
    smallest = result["min_group_size"]
    starred = smallest > 1  # min and max are the means of the smallest and the largest values, not one row's
    table = _table(["column", "count", "nulls", *(f"{s}*" if starred and s in ("min", "max") else s for s in stats)])
    for column, entry in result["columns"].items():
        figures = [rounded(entry.get(stat)) for stat in stats]
        if column in result["columns_suppressed"]:
            figures = [f"suppressed (< {smallest} values)"] + [""] * (len(stats) - 1)
        table.add_row(escape(column), rounded(entry["count"]), rounded(entry["nulls"]), *figures)
    print_table(table, whole=(0,))
    console.print(f"rows: {rounded(result['rows'])}; a column with fewer than {smallest} values shows its counts "
                  "only", highlight=False)
    if starred:
        console.print(f"min*, max*: the mean of the {smallest} smallest and of the {smallest} largest values, so no "
                      "single row's value is shown (they can fall inside the quartiles)", highlight=False)
    if result["columns_suppressed"] and all(e["count"] == 0 or c in result["columns_suppressed"]
                                            for c, e in result["columns"].items()):
        _suppressed_note("column", smallest, "the dataset version is too small for these statistics")
    return {"columns", "rows", "columns_suppressed", "min_group_size"}


def _aggregate(result: dict[str, Any]) -> set[str]:
    group_by, aggregates = list(result["group_by"]), result["aggregates"]
    figures = [(column, function) for column, functions in aggregates.items() for function in functions]
    table = _table([*group_by, *(f"{function} of {column}" for column, function in figures)])
    for g, key in enumerate(result["keys"]):
        table.add_row(*(escape("(null)" if v is None else str(v)) for v in key),
                      *(rounded(aggregates[column][function][g]) for column, function in figures))
    print_table(table, whole=tuple(range(len(group_by))))
    smallest = result["min_group_size"]
    console.print(f"suppressed: {rounded(result['groups_suppressed'])} group(s) holding "
                  f"{rounded(result['rows_suppressed'])} row(s), each under {smallest} rows; `-`: fewer than "
                  f"{smallest} values of that column in the group", highlight=False)
    return {"group_by", "keys", "aggregates", "groups_suppressed", "rows_suppressed", "min_group_size"}


def _correlation(result: dict[str, Any]) -> set[str]:
    columns = [str(c) for c in result["columns"]]
    table = _table([f"{result['method']} correlation", *columns])
    for column, row in zip(columns, result["matrix"], strict=True):
        table.add_row(escape(column), *(rounded(v) for v in row))
    print_table(table, whole=(0,))
    console.print("`-`: undefined (a constant column)", highlight=False, markup=False)
    return {"columns", "matrix", "method"}


def _regression(result: dict[str, Any]) -> set[str]:
    statistic = "t" if result.get("model") == "ols" else "z"
    table = _table(["term", "coefficient", "std error", statistic, "p", "95% interval"])
    for i, name in enumerate(result["names"]):
        low, high = result["conf_int_95"][i]
        table.add_row(escape(str(name)), rounded(result["params"][i]), rounded(result["bse"][i]),
                      rounded(result["statistic"][i]), rounded(result["p_values"][i]),
                      f"{rounded(low)} to {rounded(high)}")
    console.print(f"{result.get('model', 'regression')} of {escape(str(result['y']))}", highlight=False)
    print_table(table, whole=(0,))
    return {"names", "params", "bse", "statistic", "p_values", "conf_int_95", "model", "y"}


def _kmeans(result: dict[str, Any]) -> set[str]:
    columns = [str(c) for c in result["columns"]]
    table = _table(["cluster", "rows", *(f"center {c}" for c in columns)])
    for i, (size, center) in enumerate(zip(result["sizes"], result["centers"], strict=True)):
        table.add_row(str(i + 1), rounded(size), *(rounded(v) for v in center))
    print_table(table)
    smallest = result["min_group_size"]
    console.print(f"suppressed: {rounded(result['clusters_suppressed'])} cluster(s) holding "
                  f"{rounded(result['rows_suppressed'])} row(s), each under {smallest} rows", highlight=False)
    return {"columns", "sizes", "centers", "clusters_suppressed", "rows_suppressed", "min_group_size"}


def _pca(result: dict[str, Any]) -> set[str]:
    columns = [str(c) for c in result["columns"]]
    table = _table(["component", "explained variance", "ratio", *(f"loading {c}" for c in columns)])
    for i, (variance, ratio, loadings) in enumerate(zip(result["explained_variance"],
                                                       result["explained_variance_ratio"], result["components"],
                                                       strict=True)):
        table.add_row(str(i + 1), rounded(variance), rounded(ratio), *(rounded(v) for v in loadings))
    print_table(table)
    for key in ("mean", "scale"):
        if result.get(key) is not None:
            console.print(f"{key} of each column: " + ", ".join(f"{c} {rounded(v)}" for c, v in
                                                                zip(columns, result[key], strict=True)),
                          highlight=False, markup=False, soft_wrap=True)
    return {"columns", "explained_variance", "explained_variance_ratio", "components", "mean", "scale"}


_SHOWS: dict[str, Any] = {"histogram": _histogram, "describe": _describe, "aggregate": _aggregate,
                          "correlation": _correlation, "ols": _regression, "logistic": _regression,
                          "kmeans": _kmeans, "pca": _pca}


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
    console.print('--params is a JSON object of these, e.g. --params \'{"column": "steps", "bins": 20}\' for histogram',
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
