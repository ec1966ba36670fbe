"""`datacoop job results` prints a result as a reader takes it in (a histogram as a table of bins, suppressed bins
named as such, other analyses as tables and `name: value` lines, rounded), says plainly when every bin was
suppressed and where the plot went; --json gives the result whole. `job submit --wait` says what the job does
while it waits, and where its result is once it completed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datacoop.cli import app
from datacoop.cli import jobs as jobs_cli
from services.worker import client as jobs_client

ENV = {"COLUMNS": "200", "DATACOOP_API_KEY": "dcr_" + "a" * 43}
NOWHERE = "http://127.0.0.1:9"
PROVIDER = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"

HISTOGRAM = {"backend": "numpy", "column": "age", "edges": [17.0, 41.333333333333336, 65.66666666666667, 90.0],
             "counts": [1234, None, 0], "nulls": 2, "outside": 0, "min_group_size": 10, "bins_suppressed": 1,
             "rows_suppressed": 4}
OLS = {"backend": "numpy", "model": "ols", "y": "income", "n": 1200, "rows_dropped": 3, "df_resid": 1198,
       "names": ["const", "age"], "params": [1234.56789, 0.123456789], "bse": [10.1234, 0.0123456],
       "statistic": [121.9, 10.0], "p_values": [0.0, 1.234567e-22], "conf_int_95": [[1214.7, 1254.4], [0.099, 0.148]],
       "rsquared": 0.4567891, "rsquared_adj": 0.456, "sigma": 15.123456}


def _answer(analysis: str, result: dict[str, Any], has_plot: bool) -> dict[str, Any]:
    return {"job_id": "j-1", "analysis": analysis, "result": result, "result_sha256": "0" * 64, "has_plot": has_plot,
            "signature": "0x", "provider": PROVIDER, "worker_id": "w-1", "lease_id": "l-1", "workers": ["w-1"],
            "compute_ms": 12}


@pytest.fixture
def results(monkeypatch: pytest.MonkeyPatch) -> Any:
    """results(analysis, result, *flags, has_plot=) -> the CLI's result of `datacoop job results j-1`."""
    monkeypatch.setattr(jobs_client.ResearcherJobs, "plot", lambda self, job_id: b"\x89PNG fake")

    def run(analysis: str, result: dict[str, Any], *flags: str, has_plot: bool = False) -> Any:
        answer = _answer(analysis, result, has_plot)
        monkeypatch.setattr(jobs_client.ResearcherJobs, "result", lambda self, job_id: answer)
        return CliRunner().invoke(app, ["job", "results", "j-1", "--jobs-url", NOWHERE, *flags], env=ENV)

    return run


def test_a_histogram_is_a_table_of_bins_with_suppressed_bins_named(results: Any) -> None:
    shown = results("histogram", HISTOGRAM, has_plot=True)
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "{" not in out and "41.333333333333336" not in out, "no JSON dump, no 15 decimals"
    rows = [" ".join(line.split()) for line in out.splitlines() if " to " in line and "plot" not in line]
    assert rows == ["17 to 41.3 1,234", "41.3 to 65.7 suppressed (< 10 rows)", "65.7 to 90 0"], out
    said = " ".join(out.split())
    assert PROVIDER in said and "w-1" in said and "histogram of age" in said
    assert "nulls: 2; outside the bins: 0; suppressed: 1 bin(s) holding 4 row(s), each under 10 rows" in said
    assert "every bin" not in said
    assert "asked without a range, the bins span the mean of the 10 smallest values through that of the 10 " \
           "largest, and the first and last bins also count the values beyond" in said, said
    assert "this result has a plot: `datacoop job results j-1 --plot-out plot.png` writes it" in said


def test_describe_marks_min_and_max_as_means_of_the_extremes(results: Any) -> None:
    """A walkthrough read min 9,020 above q25 7,558 as a bug: they are means of the 10 extremes, now said so."""
    describe = {"rows": 11, "min_group_size": 10, "columns_suppressed": [],
                "columns": {"steps": {"count": 11, "nulls": 0, "mean": 9386.0, "std": 2424.1, "min": 9020.4,
                                      "q25": 7558.5, "median": 9386.0, "q75": 11213.5, "max": 9751.6}}}
    shown = results("describe", describe)
    assert shown.exit_code == 0, shown.output
    header = next(line.split() for line in shown.output.splitlines() if "median" in line)
    assert header == ["column", "count", "nulls", "mean", "std", "min*", "q25", "median", "q75", "max*"], header
    said = " ".join(shown.output.split())
    assert "min*, max*: the mean of the 10 smallest and of the 10 largest values" in said, said
    exact = results("describe", {**describe, "min_group_size": 1})
    assert "min*" not in exact.output and "max*" not in exact.output, "with 1, they are the exact min and max"


def test_a_histogram_whose_every_bin_was_suppressed_says_so(results: Any) -> None:
    hidden = {**HISTOGRAM, "counts": [None, None, None], "bins_suppressed": 3, "rows_suppressed": 12}
    said = " ".join(results("histogram", hidden).output.split())
    assert "every bin was suppressed: each held fewer than 10 rows; the dataset version is too small for this " \
           "histogram — try fewer bins" in said, said


def test_the_plot_written_is_named(results: Any, tmp_path: Path) -> None:
    plot = tmp_path / "h.png"
    shown = results("histogram", HISTOGRAM, "--plot-out", str(plot), has_plot=True)
    assert shown.exit_code == 0, shown.output
    assert f"plot written to {plot}" in " ".join(shown.output.split()) and plot.read_bytes() == b"\x89PNG fake"


def test_a_regression_is_a_table_of_terms_and_rounded_lines(results: Any) -> None:
    shown = results("ols", OLS)
    assert shown.exit_code == 0, shown.output
    rows = {line.split()[0]: " ".join(line.split()) for line in shown.output.splitlines()
            if line.split()[:1] in (["const"], ["age"])}
    assert rows["age"] == "age 0.123 0.0123 10 1.23e-22 0.099 to 0.148", shown.output
    assert rows["const"] == "const 1,235 10.1 122 0 1,215 to 1,254", shown.output
    lines = shown.output.splitlines()
    assert "rsquared: 0.457" in lines and "n: 1,200" in lines and "sigma: 15.1" in lines, shown.output
    assert "plot" not in shown.output


def test_json_prints_the_result_whole(results: Any) -> None:
    shown = results("histogram", HISTOGRAM, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == {"job_id": "j-1", "verified_signer": PROVIDER, "workers": ["w-1"],
                                        "result": HISTOGRAM}


def test_submit_wait_says_each_change_and_where_the_result_is(monkeypatch: pytest.MonkeyPatch) -> None:
    states = iter([("queued", 0.0), ("running", 0.0), ("running", 0.5), ("completed", 1.0)])
    monkeypatch.setattr(jobs_cli, "WAIT_POLL_S", 0.0, raising=False)  # no such knob before --wait said anything
    monkeypatch.setattr(jobs_client.ResearcherJobs, "submit", lambda self, *a: {"job_id": "j-7", "redundancy": 1})

    def status(self: Any, job_id: str, wait_s: float = 0) -> dict[str, Any]:
        state, progress = next(states)
        return {"job_id": job_id, "status": state, "progress": progress, "failure": None}

    monkeypatch.setattr(jobs_client.ResearcherJobs, "status", status)
    shown = CliRunner().invoke(app, ["job", "submit", "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a001", "describe", "--wait",
                                     "--jobs-url", NOWHERE], env=ENV)
    assert shown.exit_code == 0, shown.output
    lines = [" ".join(line.split()[2:]) if line.startswith(" ") else line for line in shown.output.splitlines()]
    assert lines[0].startswith("job j-7 submitted") and lines[1:4] == ["queued", "running (0%)", "running (50%)"], \
        shown.output
    assert "job j-7 completed" in lines[4] and "`datacoop job results j-7` shows its result" in shown.output


def test_submit_wait_on_a_failed_job_fails_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_cli, "WAIT_POLL_S", 0.0, raising=False)  # no such knob before --wait said anything
    monkeypatch.setattr(jobs_client.ResearcherJobs, "submit", lambda self, *a: {"job_id": "j-8", "redundancy": 1})
    monkeypatch.setattr(jobs_client.ResearcherJobs, "status", lambda self, job_id, wait_s=0: {
        "job_id": job_id, "status": "failed", "progress": 0.0, "failure": "column 'x' is empty"})
    shown = CliRunner().invoke(app, ["job", "submit", "0b7c9a3e-8e0f-4f5e-9a40-4f1ad1f0a001", "describe", "--wait",
                                     "--jobs-url", NOWHERE], env=ENV)
    assert shown.exit_code == 1 and "job j-8 failed: column 'x' is empty" in shown.output, shown.output
