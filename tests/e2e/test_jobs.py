"""The jobs service and workers as processes on the real broker: submit, lease, run, signed result,
fee event; a worker killed mid-job; a tampering worker caught by redundancy."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from eth_account import Account
from typer.testing import CliRunner

from datacoop.cli import jobs as jobs_cli
from services.jobs.demo import run_jobs_demo
from services.worker.analytics import gpu_available
from services.worker.client import ApiError, ResearcherJobs, WorkerSession
from services.worker.launch import spawn_worker
from tests.e2e.conftest import start_service
from tests.e2e.jobs_fixtures import Scenario
from tests.e2e.jobs_fixtures import scenario as scenario  # the fixture


def _types(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.type.split(".")[2] for e in events]


def test_job_runs_end_to_end_with_signed_result_plot_and_fee(scenario: Scenario) -> None:
    researcher = scenario.researcher()
    with pytest.raises(ApiError) as refused:
        researcher.submit(scenario.order_id, "histogram", {"column": "weight"})
    assert refused.value.status == 422 and "'weight'" in str(refused.value) and "age" in str(refused.value)
    anonymous = httpx.post(f"{scenario.jobs.url}/jobs", json={"order_id": scenario.order_id, "analysis": "describe"})
    assert anonymous.status_code == 401

    scenario.start_worker("w1")
    job = researcher.submit(scenario.order_id, "histogram", {"column": "age", "bins": 10})
    done = researcher.wait(job["job_id"], timeout_s=60)
    assert done["status"] == "completed", scenario.worker_log("w1")
    result = researcher.result(job["job_id"])  # verifies hash + signature, plot included
    assert sum(result["result"]["counts"]) == scenario.table.num_rows
    assert researcher.plot(job["job_id"]).startswith(b"\x89PNG")
    worker = httpx.get(f"{scenario.jobs.url}/workers/w1").json()
    assert result["provider"] == worker["provider"] and worker["accepted"] == 1
    assert worker["cpu_cores"] == 1 and worker["backend"] == "numpy", "the registry shows the one core offered"

    events = scenario.job_events(job["job_id"])
    assert _types(events)[:2] == ["submitted", "leased"]
    completed = [e for e in events if e.type == "datacoop.jobs.completed.v1"]
    assert len(completed) == 1
    assert completed[0].data["fee_units"] == 250_000 and completed[0].data["provider"] == worker["provider"]
    assert completed[0].data["order_id"] == scenario.order_id

    app = typer.Typer()
    jobs_cli.register(app)
    env = {"DATACOOP_API_KEY": scenario.api_key, "DATACOOP_JOBS_URL": scenario.jobs.url}
    plot = scenario.tmp / "new" / "folder" / "h.png"  # folders are made
    shown = CliRunner().invoke(app, ["job", "results", job["job_id"], "--plot-out", str(plot)], env=env)
    assert shown.exit_code == 0, shown.output
    assert worker["provider"] in shown.output and plot.read_bytes().startswith(b"\x89PNG")
    missing = CliRunner().invoke(app, ["job", "status", "no-such-job"], env=env)
    assert missing.exit_code == 1 and "no job no-such-job" in missing.output


def test_killed_worker_loses_its_lease_and_the_job_finishes_once_elsewhere(scenario: Scenario) -> None:
    researcher = scenario.researcher()
    slow = scenario.start_worker("w-slow", DATACOOP_WORKER_DELAY_S="60")
    job_id = researcher.submit(scenario.order_id, "describe", {"columns": ["age", "income"]})["job_id"]
    scenario.wait_for(lambda: bool(researcher.status(job_id)["leases"]), what="the slow worker's lease")
    assert researcher.status(job_id)["leases"][0]["worker_id"] == "w-slow"
    scenario.wait_for(lambda: "progressed" in _types(scenario.job_events(job_id)), what="progress mid-job")
    slow.send_signal(signal.SIGKILL)
    scenario.start_worker("w-fast")
    done = researcher.wait(job_id, timeout_s=60)
    assert done["status"] == "completed", scenario.worker_log("w-fast")
    assert done["accepted_workers"] == ["w-fast"]
    assert [(lease["worker_id"], lease["state"]) for lease in done["leases"]] == \
        [("w-slow", "expired"), ("w-fast", "reported")]
    types = _types(scenario.job_events(job_id))
    assert types.count("completed") == 1 and types.count("lease_expired") == 1
    assert types.count("result_reported") == 1


def test_tampered_result_is_caught_by_redundancy_and_the_worker_excluded(scenario: Scenario) -> None:
    researcher = scenario.researcher()
    scenario.start_worker("w-bad", DATACOOP_WORKER_TAMPER="1")
    scenario.start_worker("w-a")
    job_id = researcher.submit(scenario.order_id, "ols", {"y": "income", "x": ["age"]}, redundancy=2)["job_id"]
    scenario.wait_for(lambda: len(researcher.status(job_id)["reports"]) == 2, what="two reports")
    assert researcher.status(job_id)["status"] == "running", "two disagreeing results must not complete a job"
    scenario.start_worker("w-b")
    done = researcher.wait(job_id, timeout_s=60)
    assert done["status"] == "completed", scenario.worker_log("w-b")
    assert sorted(done["accepted_workers"]) == ["w-a", "w-b"]
    bad = httpx.get(f"{scenario.jobs.url}/workers/w-bad").json()
    assert bad["marks"] == 1 and not bad["eligible"] and bad["reputation"] < 0.5
    marked = [e for e in scenario.job_events(job_id) if e.type == "datacoop.jobs.worker_marked.v1"]
    assert [e.data["worker_id"] for e in marked] == ["w-bad"]
    result = researcher.result(job_id)
    assert result["worker_id"] in ("w-a", "w-b")


def test_demo_runs_and_a_rebuilt_service_has_the_same_jobs_and_workers(scenario: Scenario, tmp_path: Path) -> None:
    scenario.start_worker("d1")
    scenario.start_worker("d2")
    finished = run_jobs_demo(scenario.jobs.url, scenario.api_key, scenario.order_id, ["age", "income"],
                             say=lambda line: None, timeout_s=60)
    assert [j["status"] for j in finished] == ["completed"] * 4
    assert sorted(finished[1]["accepted_workers"]) == ["d1", "d2"]
    researcher = scenario.researcher()
    before = [researcher.status(j["job_id"]) for j in finished]
    workers_before = httpx.get(f"{scenario.jobs.url}/workers").json()
    assert all(w["live"] and w["eligible"] and w["last_heartbeat_at"] for w in workers_before), workers_before
    scenario.stop()
    scenario.wait_for(lambda: not any(w["live"] for w in httpx.get(f"{scenario.jobs.url}/workers").json()),
                      what="the stopped workers to show as not live")
    stopped = httpx.get(f"{scenario.jobs.url}/workers").json()
    assert not any(w["eligible"] or not w["last_heartbeat_at"] for w in stopped), "stopped: not eligible for jobs"
    scenario.jobs.stop()
    rebuilt = start_service("jobs", {**scenario.jobs.env, "DATACOOP_DATA_DIR": str(tmp_path / "rebuilt"),
                                     "DATACOOP_PORT": ""}, tmp_path / "jobs-rebuilt.log")
    try:
        again = ResearcherJobs(rebuilt.url, scenario.api_key)
        assert [again.status(j["job_id"]) for j in finished] == before
        liveness = ("live", "eligible", "last_heartbeat_at")  # in memory: not heard from since the rebuild
        assert [{k: v for k, v in w.items() if k not in liveness} for w in httpx.get(f"{rebuilt.url}/workers").json()] \
            == [{k: v for k, v in w.items() if k not in liveness} for w in workers_before]
        assert not any(w["live"] or w["eligible"] or w["last_heartbeat_at"]
                       for w in httpx.get(f"{rebuilt.url}/workers").json())
        assert again.result(finished[2]["job_id"])["has_plot"]
    finally:
        rebuilt.stop()


def test_a_stalled_worker_that_wakes_after_its_lease_expired_is_ignored(scenario: Scenario) -> None:
    researcher = scenario.researcher()
    stalled = scenario.start_worker("w-stall", DATACOOP_WORKER_DELAY_S="2")
    job_id = researcher.submit(scenario.order_id, "describe", {"columns": ["bmi"]})["job_id"]
    scenario.wait_for(lambda: bool(researcher.status(job_id)["leases"]), what="the lease")
    stalled.send_signal(signal.SIGSTOP)
    try:
        scenario.start_worker("w-live")
        assert researcher.wait(job_id, timeout_s=60)["accepted_workers"] == ["w-live"]
    finally:
        stalled.send_signal(signal.SIGCONT)
    scenario.wait_for(lambda: "lease lost" in scenario.worker_log("w-stall"), what="the stalled worker's refusal")
    types = _types(scenario.job_events(job_id))
    assert types.count("result_reported") == 1 and types.count("completed") == 1


def test_an_idle_worker_stops_at_once_on_sigterm(scenario: Scenario) -> None:
    """An idle worker waits in a long poll for a lease (10 s); SIGTERM ends it at once (Ctrl-C on
    `datacoop up` stops every worker this way), and it leaves no lease behind."""
    idle = scenario.start_worker("idle")
    scenario.wait_for(lambda: "registered as idle" in scenario.worker_log("idle"), "the worker to register")
    time.sleep(0.5)  # well inside its first long poll
    asked = time.monotonic()
    idle.send_signal(signal.SIGTERM)
    assert idle.wait(timeout=8) == 0, scenario.worker_log("idle")
    assert time.monotonic() - asked < 3, "an idle worker must not wait out its long poll"
    assert "stopped after 0 job(s)" in scenario.worker_log("idle")
    researcher = scenario.researcher()
    job = researcher.submit(scenario.order_id, "describe", {"columns": ["age"]})
    time.sleep(0.3)  # the stopped worker's poll, if it were still served, would lease it now
    assert researcher.status(job["job_id"])["status"] == "queued", "no lease went to the worker that hung up"


def _session(scenario: Scenario, worker_id: str) -> WorkerSession:
    """A worker's calls made from the test itself, to hold a lease or a poll exactly where it needs to."""
    session = WorkerSession(scenario.jobs.url, Account.create().key.hex(), worker_id)
    session.register({"backend": "numpy", "cpu_cores": 1, "memory_bytes": 0, "gpus": []})
    return session


@pytest.mark.skipif(gpu_available(), reason="a CUDA device is here: backend cupy can run")
def test_a_worker_that_cannot_work_exits_with_the_reason_instead_of_taking_jobs(scenario: Scenario) -> None:
    no_gpu = scenario.start_worker("w-gpu", DATACOOP_WORKER_BACKEND="cupy")
    assert no_gpu.wait(timeout=60) == 2, scenario.worker_log("w-gpu")
    assert "cannot run: DATACOOP_WORKER_BACKEND: backend 'cupy' asked for" in scenario.worker_log("w-gpu")
    assert httpx.get(f"{scenario.jobs.url}/workers/w-gpu").status_code == 404, "it never registered"

    scenario.start_worker("w1")
    scenario.wait_for(lambda: "registered as w1" in scenario.worker_log("w1"), "w1 to register")
    impostor = spawn_worker(scenario.jobs.url, "w1", scenario.tmp / "worker-w1-again.log",  # a fresh key: not w1's
                            env={"DATACOOP_LOG_JSON": "false"})
    scenario.workers.append(impostor)
    assert impostor.wait(timeout=60) == 2, scenario.worker_log("w1-again")
    log = scenario.worker_log("w1-again")
    assert f"the jobs service at {scenario.jobs.url} refused to register worker w1: 409 worker id w1 belongs " \
           "to provider" in log
    assert "retrying" not in log


def test_a_worker_that_cannot_run_a_job_gives_it_back_and_another_worker_completes_it(scenario: Scenario) -> None:
    """Redundancy 2: one worker reports, the other can't run the job on its machine. The job is not
    failed: it goes to a third worker, and the one that gave it back is not asked again."""
    researcher = scenario.researcher()
    scenario.start_worker("w-a")
    job_id = researcher.submit(scenario.order_id, "describe", {"columns": ["age", "bmi"]}, redundancy=2)["job_id"]
    scenario.wait_for(lambda: len(researcher.status(job_id)["reports"]) == 1, what="w-a's report")
    broken = _session(scenario, "w-broken")
    offer = broken.lease(wait_s=10)
    assert offer is not None and offer["job_id"] == job_id
    broken.release(job_id, offer["lease_id"], "cannot read the version's file from this machine")
    job = researcher.status(job_id)
    assert job["status"] == "running" and job["failure"] is None
    assert [(lease["worker_id"], lease["state"]) for lease in job["leases"]] == \
        [("w-a", "reported"), ("w-broken", "expired")]
    again = broken.lease(wait_s=0.5)  # the only other live worker already ran it: none else may take it
    assert again is not None and again["job_id"] == job_id, "a job no other live worker may take comes back"
    broken.release(job_id, again["lease_id"], "still cannot read the version's file")
    _session(scenario, "w-waiting")  # live, and may take the job: the one that gave it back must wait
    assert broken.lease(wait_s=0.5) is None, "a job given back is not offered again while another may take it"
    scenario.start_worker("w-b")
    done = researcher.wait(job_id, timeout_s=60)
    assert done["status"] == "completed", scenario.worker_log("w-b")
    assert sorted(done["accepted_workers"]) == ["w-a", "w-b"]
    assert researcher.result(job_id)["result"]["columns"]["age"]["count"] == scenario.table.num_rows


def test_a_job_that_the_only_worker_gives_back_is_failed_not_left_queued(scenario: Scenario) -> None:
    """With fewer live workers than it takes give-backs to fail a job, the job goes back to the worker that
    gave it back (no other is there) until it fails, saying so; it must not wait forever."""
    researcher = scenario.researcher()
    job_id = researcher.submit(scenario.order_id, "describe", {"columns": ["age"]}, redundancy=1)["job_id"]
    lonely = _session(scenario, "w-lonely")
    for _ in range(3):
        offer = lonely.lease(wait_s=10)
        assert offer is not None and offer["job_id"] == job_id
        lonely.release(job_id, offer["lease_id"], "no GPU driver on this machine")
    job = researcher.status(job_id)
    assert job["status"] == "failed" and "no worker could run this job" in job["failure"], job


def test_the_jobs_service_ends_open_long_polls_when_it_shuts_down(scenario: Scenario) -> None:
    """Ctrl-C on the stack: a worker's lease poll and a researcher's job wait are answered (no job; the
    job as it is), the service exits, and its log holds no traceback of a cancelled request."""
    researcher = scenario.researcher()
    job_id = researcher.submit(scenario.order_id, "describe", {"columns": ["age"]})["job_id"]
    idle = _session(scenario, "w-idle")
    assert idle.lease(wait_s=10) is not None  # it holds the one job (heartbeating), so its next poll waits
    shut = threading.Event()

    def heartbeats() -> None:
        while not shut.wait(0.2):
            try:
                idle.heartbeat()
            except Exception:
                return

    threading.Thread(target=heartbeats, daemon=True).start()
    answers: dict[str, Any] = {}

    def ask(name: str, call: Any) -> None:
        try:
            answers[name] = call()
        except Exception as exc:
            answers[name] = exc

    polls = [threading.Thread(target=ask, args=("lease", lambda: idle.lease(wait_s=30))),
             threading.Thread(target=ask, args=("wait", lambda: ResearcherJobs(scenario.jobs.url, scenario.api_key)
                                                .status(job_id, wait_s=30)))]
    for poll in polls:
        poll.start()
    time.sleep(1.0)  # both polls are open on the service
    scenario.jobs.proc.send_signal(signal.SIGINT)
    for poll in polls:
        poll.join(timeout=30)
    shut.set()
    scenario.jobs.proc.wait(timeout=30)
    log = scenario.jobs.log_path.read_text(errors="replace")
    assert answers.get("lease", "no answer") is None, f"{answers}\n{log[-3000:]}"
    assert isinstance(answers.get("wait"), dict) and answers["wait"]["status"] == "running", answers
    for trace in ("Exception in ASGI application", "CancelledError", "Traceback"):
        assert trace not in log, log[-3000:]


def _hand_session(scenario: Scenario, worker_id: str, key: str) -> WorkerSession:
    session = WorkerSession(scenario.jobs.url, key, worker_id)
    session.register({"backend": "numpy", "cpu_cores": 1, "memory_bytes": 0, "gpus": []})
    return session


def _lease_job(session: WorkerSession, job_id: str) -> dict[str, Any]:
    for _ in range(5):
        offer = session.lease(wait_s=2)
        if offer is not None and offer["job_id"] == job_id:
            return offer
    raise AssertionError(f"{session.worker_id} got no lease on {job_id}")


def test_a_worker_that_restarts_or_stops_naming_a_lease_does_not_strand_its_job(scenario: Scenario) -> None:
    """Liveness is per lease: a worker registering again (it restarted under the same id) ends its active
    leases, so the job is leased again at once (the restarted worker's poll takes it); a lease the
    worker's heartbeats stop naming expires although the worker stays alive."""
    researcher = scenario.researcher()
    key = Account.create().key.hex()
    first = _hand_session(scenario, "w-restart", key)
    job_id = researcher.submit(scenario.order_id, "describe", {"columns": ["age"]})["job_id"]
    dropped = _lease_job(first, job_id)
    time.sleep(1.1)  # a registration signs unix seconds: the next must be newer
    again = _hand_session(scenario, "w-restart", key)  # the process restarted: it forgot the lease
    offer = again.lease(wait_s=2)
    assert offer is not None and offer["job_id"] == job_id and offer["lease_id"] != dropped["lease_id"]
    leases = researcher.status(job_id)["leases"]
    assert (leases[0]["lease_id"], leases[0]["state"]) == (dropped["lease_id"], "expired")
    with pytest.raises(ApiError) as late:
        again.report(job_id, dropped["lease_id"], {"n": 1}, None, 1)
    assert late.value.status == 410, "the restarted worker's old lease was ended"
    for _ in range(12):  # alive, but no longer running the job: its heartbeats name no lease
        httpx.post(f"{scenario.jobs.url}/workers/w-restart/heartbeat", json={"leases": []},
                   headers={"authorization": f"Bearer {again.token}"}).raise_for_status()
        time.sleep(0.25)
    scenario.wait_for(lambda: researcher.status(job_id)["status"] == "queued", what="the unnamed lease to expire")
    ended = [e for e in scenario.job_events(job_id) if e.type == "datacoop.jobs.lease_expired.v1"]
    assert [e.data["reason"] for e in ended] == ["re-registered", "not-held"]


def test_one_provider_cannot_check_itself_and_its_marks_follow_it(scenario: Scenario) -> None:
    """Redundancy 2: a job's runs come from distinct providers, a failure report doesn't override another
    provider's result (it calls a third run), and a marked provider's new worker id is excluded too."""
    researcher = scenario.researcher()
    keys = {name: Account.create().key.hex() for name in ("a", "b", "c")}
    a1, a2 = _hand_session(scenario, "a1", keys["a"]), _hand_session(scenario, "a2", keys["a"])
    job_id = researcher.submit(scenario.order_id, "describe", {"columns": ["age"]}, redundancy=2)["job_id"]
    offer_a = _lease_job(a1, job_id)
    assert a2.lease(wait_s=0.5) is None, "the same provider's second worker id gets no second run"
    a1.report(job_id, offer_a["lease_id"], {"mean": 1.0}, None, 1)
    b = _hand_session(scenario, "b1", keys["b"])
    offer_b = _lease_job(b, job_id)
    b.fail(job_id, offer_b["lease_id"], "predictors are collinear")
    job = researcher.status(job_id)
    assert job["status"] == "running" and job["failure"] is None, "one failure must not override a result"
    c = _hand_session(scenario, "c1", keys["c"])
    offer_c = _lease_job(c, job_id)
    assert c.report(job_id, offer_c["lease_id"], {"mean": 1.0}, None, 1)["status"] == "completed"

    job2 = researcher.submit(scenario.order_id, "describe", {"columns": ["bmi"]}, redundancy=2)["job_id"]
    for session, mean in ((a1, 2.0), (b, 9.0), (c, 2.0)):
        offer = _lease_job(session, job2)
        session.report(job2, offer["lease_id"], {"mean": mean}, None, 1)
    assert researcher.status(job2)["status"] == "completed"
    b2 = _hand_session(scenario, "b2", keys["b"])  # the marked provider, under a new worker id
    assert httpx.get(f"{scenario.jobs.url}/workers/b2").json()["eligible"] is False
    with pytest.raises(ApiError) as excluded:
        b2.lease(wait_s=0)
    assert excluded.value.status == 403 and "provider" in str(excluded.value)


def test_bad_worker_input_is_refused_with_what_is_wrong_and_nothing_written(scenario: Scenario) -> None:
    url, researcher = scenario.jobs.url, scenario.researcher()
    for bad_id in (".", ".."):
        refused = researcher.http.post("/jobs", json={"order_id": scenario.order_id, "analysis": "describe",
                                                      "params": {"columns": ["age"]}, "job_id": bad_id})
        assert refused.status_code == 422 and "only dots" in refused.text, refused.text
    key = Account.create().key.hex()
    w = _hand_session(scenario, "w-in", key)
    body: dict[str, Any] = {"worker_id": "w-x", "provider": w.provider, "issued_at": 2**256,
                            "signature": "0x" + "11" * 65,
            "hardware": {"backend": "numpy", "cpu_cores": 1, "memory_bytes": 0, "gpus": []}}
    huge = httpx.post(f"{url}/workers", json=body)
    assert huge.status_code == 422 and "issued_at" in huge.text, huge.text
    gpus = [{"name": "x" * 1000}]
    fat = httpx.post(f"{url}/workers", json={**body, "issued_at": 1, "hardware": {**body["hardware"], "gpus": gpus}})
    assert fat.status_code == 422 and "gpus" in fat.text, fat.text
    dots = httpx.post(f"{url}/workers", json={**body, "issued_at": 1, "worker_id": ".."})
    assert dots.status_code == 422 and "only dots" in dots.text
    other = httpx.post(f"{url}/workers/w-else/heartbeat", headers={"authorization": f"Bearer {w.token}"})
    assert other.status_code == 401 and "belongs to worker w-in" in other.text, other.text

    job_id = researcher.submit(scenario.order_id, "describe", {"columns": ["age"]})["job_id"]
    offer = _lease_job(w, job_id)
    with pytest.raises(ApiError) as not_png:
        w.report(job_id, offer["lease_id"], {"n": 1}, b"GIF89a not a png", 1)
    assert not_png.value.status == 422 and "PNG" in str(not_png.value)
    with pytest.raises(ApiError) as too_large:
        w.report(job_id, offer["lease_id"], {"blob": "x" * (7 * 1024 * 1024)}, None, 1)
    assert too_large.value.status == 413 and "release" in str(too_large.value)
    nan = httpx.post(f"{url}/jobs/{job_id}/result", headers={"authorization": f"Bearer {w.token}",
                                                              "content-type": "application/json"},
                     content=f'{{"worker_id": "w-in", "lease_id": "{offer["lease_id"]}", "result": {{"m": NaN}}, '
                             f'"result_sha256": "{"0" * 64}", "signature": "0x{"11" * 65}", "compute_ms": 1}}')
    assert nan.status_code == 422 and "NaN" in nan.text, nan.text
    job = researcher.status(job_id)
    assert job["status"] == "running" and job["reports"] == [] and job["leases"][0]["state"] == "active"
    assert w.report(job_id, offer["lease_id"], {"n": 1}, b"\x89PNG\r\n\x1a\n" + b"0" * 10, 1)["status"] == "completed"
