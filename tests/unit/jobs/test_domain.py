"""Job rules as given-events / when-command / then-events, with no broker."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import pytest

from datacoop.events.jobs import (
    JobCompleted,
    JobFailed,
    JobLeased,
    JobLeaseExpired,
    JobResultReported,
    JobRunFailed,
    WorkerMarked,
    WorkerRegistered,
)
from datacoop.events.registry import Event
from services.jobs import domain

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
PROVIDERS = {w: "0x" + f"{i + 1:02x}" * 20 for i, w in enumerate(["a", "b", "c", "bad"])}
RESULT = {"params": [1.0, 2.5], "n": 300, "names": ["const", "age"]}


def given(events: Iterable[Event], redundancy: int = 1) -> domain.Job:
    job = domain.Job("j1")
    submit = domain.Submit("j1", "o1", "r1", "ds", 1, "ols", {"y": "y", "x": ["x"]}, redundancy, 500)
    for ev in [*domain.decide(submit, job, NOW), *events]:
        job = domain.evolve(job, ev)
    return job


def when(job: domain.Job, cmd: domain.Command) -> list[Event]:
    return domain.decide(cmd, job, NOW)


def lease(worker: str, provider: str | None = None) -> JobLeased:
    return JobLeased(worker_id=worker, lease_id=f"l-{worker}", leased_at=NOW, expires_at=NOW,
                     provider=provider or PROVIDERS.get(worker))


def report_cmd(worker: str, result: dict = RESULT) -> domain.ReportResult:  # type: ignore[type-arg]
    return domain.ReportResult(worker, f"l-{worker}", PROVIDERS.get(worker) or PROVIDERS[worker[0]], result, None,
                               domain.result_hash(result, None), "0x" + "00" * 65, 3)


def reported(job: domain.Job, worker: str, result: dict = RESULT) -> list[Event]:  # type: ignore[type-arg]
    return when(job, report_cmd(worker, result))


def test_one_result_completes_a_plain_job_and_pays_its_provider() -> None:
    events = reported(given([lease("a")]), "a")
    assert [type(e) for e in events] == [JobResultReported, JobCompleted]
    done = events[1]
    assert isinstance(done, JobCompleted)
    assert (done.provider, done.fee_units, done.workers, done.order_id) == (PROVIDERS["a"], 500, ["a"], "o1")


def test_a_job_is_leased_once_per_needed_run_and_once_per_worker() -> None:
    job = given([lease("a")])
    assert when(job, domain.GrantLease("b", "l-b", 5)) == []
    redundant = given([lease("a")], redundancy=2)
    assert when(redundant, domain.GrantLease("a", "l-a2", 5)) == []
    assert [type(e) for e in when(redundant, domain.GrantLease("b", "l-b", 5))] == [JobLeased]


def test_an_expired_lease_requeues_the_job_and_its_late_result_is_refused() -> None:
    job = given([lease("a"), JobLeaseExpired(worker_id="a", lease_id="l-a", expired_at=NOW)])
    assert job.status == "queued" and job.open_slots == 1
    with pytest.raises(domain.JobRefusal) as late:
        reported(job, "a")
    assert late.value.kind == "gone" and "ignored" in late.value.message
    assert job.may_lease_to("a"), "a worker that came back may take the job again"


def test_a_second_result_on_a_completed_job_is_refused() -> None:
    job = given([lease("a")])
    job = given([lease("a"), *reported(job, "a")])
    with pytest.raises(domain.JobRefusal):
        when(job, domain.ReportProgress("a", "l-a", 0.5))


def test_redundant_results_that_agree_within_tolerance_complete_the_job() -> None:
    job = given([lease("a"), lease("b")], redundancy=2)
    first = reported(job, "a")
    assert [type(e) for e in first] == [JobResultReported]
    job = given([lease("a"), lease("b"), *first], redundancy=2)
    nearly = {**RESULT, "params": [1.0 + 1e-9, 2.5]}
    events = reported(job, "b", nearly)
    assert [type(e) for e in events] == [JobResultReported, JobCompleted]
    assert events[1].workers == ["a", "b"]  # type: ignore[attr-defined]


def test_disagreement_calls_a_third_run_and_the_minority_is_marked() -> None:
    bad = {**RESULT, "params": [9.0, 2.5]}
    history: list[Event] = [lease("bad"), lease("a")]
    job = given(history, redundancy=2)
    history += reported(job, "bad", bad)
    history += reported(given(history, redundancy=2), "a")
    job = given(history, redundancy=2)
    assert job.status == "running" and job.runs_needed == 3 and job.open_slots == 1
    assert not job.may_lease_to("bad") and job.may_lease_to("c", PROVIDERS["c"])
    history += [lease("c")]
    events = reported(given(history, redundancy=2), "c")
    assert [type(e) for e in events] == [JobResultReported, JobCompleted, WorkerMarked]
    assert events[1].provider == PROVIDERS["a"] and events[2].worker_id == "bad"  # type: ignore[attr-defined]


def test_three_different_results_fail_the_job() -> None:
    history: list[Event] = [lease("a"), lease("b"), lease("c")]
    for i, w in enumerate(["a", "b", "c"]):
        history += reported(given(history, redundancy=2), w, {**RESULT, "n": i})
    assert isinstance(history[-1], JobFailed) and history[-1].reason == "no-agreement"


@pytest.mark.parametrize(("a", "b", "same"), [
    ({"x": 1.0}, {"x": 1.0 + 1e-12}, True), ({"x": 1.0}, {"x": 1.01}, False), ({"x": [1, 2]}, {"x": [1]}, False),
    ({"x": None}, {"x": None}, True), ({"x": True}, {"x": 1}, False), ({"x": "a"}, {"y": "a"}, False)])
def test_agreement_is_structural_with_numeric_tolerance(a: dict, b: dict, same: bool) -> None:  # type: ignore[type-arg]
    assert domain.agree(a, b) is same


def test_a_marked_worker_loses_reputation_and_eligibility() -> None:
    reg = WorkerRegistered(worker_id="w", provider=PROVIDERS["a"], backend="numpy", cpu_cores=2, memory_bytes=0,
                           issued_at=1, signature="0x" + "00" * 65, registered_at=NOW)
    w = domain.evolve_worker(domain.Worker("w"), reg)
    assert w.eligible(1) and w.reputation == 1.0
    w = domain.evolve_worker(w, WorkerMarked(worker_id="w", job_id="j", result_sha256="0" * 64,
                                             accepted_sha256="1" * 64, marked_at=NOW))
    assert not w.eligible(1) and w.reputation < 0.5
    with pytest.raises(domain.JobRefusal, match="belongs to provider"):
        domain.decide_register(w, reg.model_copy(update={"provider": PROVIDERS["b"], "issued_at": 2}))
    assert domain.decide_register(w, reg.model_copy(update={"issued_at": 2})) == []


def test_result_hash_binds_the_plot() -> None:
    assert domain.result_hash(RESULT, b"png") != domain.result_hash(RESULT, None)
    assert domain.result_hash({"b": 1, "a": 2}, None) == domain.result_hash({"a": 2, "b": 1}, None)


def released(job: domain.Job, worker: str, detail: str = "cannot read the version's file here") -> list[Event]:
    return when(job, domain.ReleaseLease(worker, f"l-{worker}", detail))


def test_a_lease_given_back_reopens_the_job_instead_of_failing_it() -> None:
    history: list[Event] = [lease("a"), lease("b")]
    history += reported(given(history, redundancy=2), "a")
    events = released(given(history, redundancy=2), "b")
    assert [type(e) for e in events] == [JobLeaseExpired]
    job = given([*history, *events], redundancy=2)
    assert job.status == "running" and job.failure is None and job.open_slots == 1
    assert job.may_lease_to("c", PROVIDERS["c"]) and not job.may_lease_to("a", PROVIDERS["a"])
    with pytest.raises(domain.JobRefusal) as late:
        reported(job, "b")
    assert late.value.kind == "gone"


def test_a_job_no_worker_can_run_fails_once_enough_leases_came_back_empty() -> None:
    history: list[Event] = []
    for worker in ["a", "b", "c"]:
        history += [lease(worker)]
        history += released(given(history), worker, f"{worker}: the file is not readable from here")
    assert [type(e) for e in history[-2:]] == [JobLeaseExpired, JobFailed]
    failed = history[-1]
    assert isinstance(failed, JobFailed)
    assert failed.detail.startswith("no worker could run this job: 3 leases ended without a result")
    assert "the last worker said: c: the file is not readable from here" in failed.detail
    assert given(history).status == "failed"


def test_only_a_live_lease_can_be_given_back() -> None:
    job = given([lease("a"), JobLeaseExpired(worker_id="a", lease_id="l-a", expired_at=NOW)])
    with pytest.raises(domain.JobRefusal) as refused:
        released(job, "a")
    assert refused.value.kind == "gone"
    with pytest.raises(domain.JobRefusal) as unknown:
        released(given([lease("a")]), "b")
    assert unknown.value.kind == "not_found"


# -- stranded leases, distinct providers, failures under redundancy (adversarial findings) ---------------
def test_expired_leases_count_towards_failing_a_job_every_worker_strands() -> None:
    history: list[Event] = []
    for worker in ["a", "b", "c"]:
        history += [lease(worker)]
        history += when(given(history), domain.ExpireLease(f"l-{worker}", "silent"))
    ended, failed = history[-2:]
    assert isinstance(ended, JobLeaseExpired) and ended.reason == "silent"
    assert isinstance(failed, JobFailed) and "3 leases ended without a result" in failed.detail
    assert "its worker went silent" in failed.detail


def test_a_provider_runs_a_job_once_whatever_its_worker_ids() -> None:
    job = given([lease("a")], redundancy=2)
    assert not job.may_lease_to("a2", PROVIDERS["a"]), "another worker id of the same provider"
    assert not job.may_lease_to("a2", PROVIDERS["a"].upper().replace("0X", "0x"))
    assert when(job, domain.GrantLease("a2", "l-a2", 5, PROVIDERS["a"])) == []
    assert [type(e) for e in when(job, domain.GrantLease("b", "l-b", 5, PROVIDERS["b"]))] == [JobLeased]
    # a report of the same provider on an old lease (granted before leases named providers) is refused
    old = given([lease("a"), JobLeased(worker_id="a2", lease_id="l-a2", leased_at=NOW, expires_at=NOW)],
                redundancy=2)
    old = given([lease("a"), JobLeased(worker_id="a2", lease_id="l-a2", leased_at=NOW, expires_at=NOW),
                 *reported(old, "a")], redundancy=2)
    with pytest.raises(domain.JobRefusal, match="distinct providers"):
        when(old, report_cmd("a2"))


def test_agreeing_results_of_one_provider_complete_nothing() -> None:
    job = given([lease("a"), lease("a2", PROVIDERS["a"])], redundancy=2)
    first = domain.evolve(job, reported(job, "a")[0])
    second = JobResultReported(worker_id="a2", lease_id="l-a2", provider=PROVIDERS["a"], result=RESULT,
                               result_sha256=domain.result_hash(RESULT, None), signature="0x" + "00" * 65,
                               compute_ms=1, reported_at=NOW)
    assert domain.verdict(domain.evolve(first, second), NOW) == [], "one provider does not check itself"


def test_marks_and_exclusion_apply_to_the_provider() -> None:
    reg = WorkerRegistered(worker_id="w1", provider=PROVIDERS["bad"], backend="numpy", cpu_cores=1, memory_bytes=0,
                           issued_at=1, signature="0x" + "00" * 65, registered_at=NOW)
    marked = domain.evolve_worker(domain.evolve_worker(domain.Worker("w1"), reg),
                                  WorkerMarked(worker_id="w1", job_id="j", result_sha256="0" * 64,
                                               accepted_sha256="1" * 64, marked_at=NOW))
    fresh = domain.evolve_worker(domain.Worker("w2"), reg.model_copy(update={"worker_id": "w2"}))
    marks = domain.provider_marks([marked, fresh], PROVIDERS["bad"].upper().replace("0X", "0x"))
    assert marks == 1
    assert fresh.eligible(1) and not fresh.eligible(1, marks), "a new worker id of a marked provider is excluded"


def failed_run(job: domain.Job, worker: str, detail: str = "predictors are collinear") -> list[Event]:
    return when(job, domain.ReportFailure(worker, f"l-{worker}", detail))


def test_a_failure_fails_a_plain_job() -> None:
    events = failed_run(given([lease("a")]), "a")
    assert [type(e) for e in events] == [JobRunFailed, JobFailed]
    assert events[1].detail == "predictors are collinear"  # type: ignore[attr-defined]


def test_a_failure_does_not_override_another_workers_result_it_calls_a_third_run() -> None:
    history: list[Event] = [lease("a"), lease("b")]
    history += reported(given(history, redundancy=2), "a")
    events = failed_run(given(history, redundancy=2), "b")
    assert [type(e) for e in events] == [JobRunFailed]
    history += events
    job = given(history, redundancy=2)
    assert job.status == "running" and job.runs_needed == 3 and job.open_slots == 1
    assert job.may_lease_to("c", PROVIDERS["c"]) and not job.may_lease_to("b", PROVIDERS["b"])
    history += [lease("c")]
    done = reported(given(history, redundancy=2), "c")
    assert [type(e) for e in done] == [JobResultReported, JobCompleted]
    assert done[1].workers == ["a", "c"]  # type: ignore[attr-defined]


def test_two_providers_agreeing_on_failing_fail_a_redundant_job() -> None:
    history: list[Event] = [lease("a"), lease("b")]
    history += failed_run(given(history, redundancy=2), "a")
    assert given(history, redundancy=2).status == "running"
    events = failed_run(given(history, redundancy=2), "b")
    assert [type(e) for e in events] == [JobRunFailed, JobFailed]
    assert events[1].reason == "analysis-failed"  # type: ignore[attr-defined]
