"""The jobs part of the demo: a researcher with a paid compute order runs a few analyses on the
workers `datacoop up` started, one of them redundantly, and checks every worker signature.

    from services.jobs.demo import run_jobs_demo
    run_jobs_demo(jobs_url, api_key, order_id, columns=["age", "income"], say=print)

`columns` are numeric columns of the order's version. Returns the finished jobs' views.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from services.worker.client import ApiError, ResearcherJobs

_NOT_YET = ("unknown-order", "order-unpaid", "version-unknown", "not-ready")


def submit_when_seen(researcher: ResearcherJobs, order_id: str, analysis: str, params: dict[str, Any],
                     redundancy: int = 1, timeout_s: float = 30) -> dict[str, Any]:
    """Submit, retrying while the jobs service has not yet read the order, its payment or its version."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return researcher.submit(order_id, analysis, params, redundancy)
        except ApiError as exc:
            if not str(exc.problem.get("type", "")).endswith(_NOT_YET) or time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def run_jobs_demo(jobs_url: str, api_key: str, order_id: str, columns: list[str],
                  say: Callable[[str], None] = print, timeout_s: float = 120) -> list[dict[str, Any]]:
    if not columns:
        raise ValueError("the jobs demo needs at least one numeric column of the version")
    researcher = ResearcherJobs(jobs_url, api_key)
    plan: list[tuple[str, dict[str, Any], int]] = [
        ("describe", {"columns": columns}, 1),
        ("histogram", {"column": columns[0], "bins": 12}, 2),
    ]
    if len(columns) >= 2:
        plan.append(("kmeans", {"columns": columns[:2], "k": 3}, 1))
        plan.append(("ols", {"y": columns[1], "x": [columns[0]]}, 2))
    submitted = [(name, submit_when_seen(researcher, order_id, name, params, redundancy))
                 for name, params, redundancy in plan]
    say(f"jobs: submitted {len(submitted)} analyses on order {order_id[:8]}…")
    finished = []
    for name, job in submitted:
        done = researcher.wait(job["job_id"], timeout_s)
        finished.append(done)
        if done["status"] != "completed":
            say(f"jobs: {name} {job['job_id'][:8]}… {done['status']} {done.get('failure') or ''}")
            continue
        answer = researcher.result(job["job_id"])  # hash and worker signature verified
        workers = ", ".join(done["accepted_workers"])
        say(f"jobs: {name} done by {workers} (signed by {answer['provider'][:10]}…, verified; "
            f"fee {done['fee_units']:,} units){' + plot' if answer['has_plot'] else ''}")
    return finished
