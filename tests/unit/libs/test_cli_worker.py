"""`datacoop worker` reads the same DATACOOP_WORKER_* settings as `python -m services.worker.main`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from datacoop.cli import app


def test_worker_settings_come_from_the_environment_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "provider.key"
    key_file.write_text("ab" * 32)
    started: dict[str, object] = {}

    def run(url: str, key: str, worker_id: str | None, cores: int | None, object_store: str | None) -> None:
        started.update(url=url, key=key, worker_id=worker_id, cores=cores, object_store=object_store)

    monkeypatch.setattr("services.worker.main.run", run)
    env = {"DATACOOP_WORKER_KEY_FILE": str(key_file), "DATACOOP_WORKER_CORES": "3", "DATACOOP_WORKER_ID": "gpu-7",
           "DATACOOP_WORKER_OBJECT_STORE": str(tmp_path), "DATACOOP_JOBS_URL": "http://127.0.0.1:9"}
    result = CliRunner().invoke(app, ["worker"], env=env)
    assert result.exit_code == 0, result.output
    assert started == {"url": "http://127.0.0.1:9", "key": "0x" + "ab" * 32, "worker_id": "gpu-7", "cores": 3,
                       "object_store": str(tmp_path)}


def test_a_missing_key_file_from_the_environment_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.key"
    result = CliRunner().invoke(app, ["worker"], env={"DATACOOP_WORKER_KEY_FILE": str(missing),
                                                      "DATACOOP_JOBS_URL": "http://127.0.0.1:9"})
    assert result.exit_code != 0
    assert str(missing) in result.output


def test_a_bad_worker_id_is_named_as_the_flag(tmp_path: Path) -> None:
    key_file = tmp_path / "provider.key"
    key_file.write_text("ab" * 32)
    result = CliRunner().invoke(app, ["worker", "--key-file", str(key_file), "--worker-id", "a b",
                                      "--jobs-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "--worker-id 'a b' is not a valid worker id" in result.output
    assert "Traceback" not in result.output


def test_job_params_with_nan_name_the_flag(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["job", "submit", "o-1", "kmeans", "--params", '{"tol": NaN}',
                                      "--jobs-url", "http://127.0.0.1:9"], env={"DATACOOP_API_KEY": "dcr_abc"})
    assert result.exit_code == 2 and "--params holds NaN" in result.output and "finite numbers" in result.output


@pytest.mark.parametrize("job_id", ["?x=1", "x?y", "a/b", ""])
def test_a_job_id_of_the_wrong_shape_is_refused_locally(job_id: str) -> None:
    for command in ("status", "results"):
        result = CliRunner().invoke(app, ["job", command, job_id, "--jobs-url", "http://127.0.0.1:9"],
                                    env={"DATACOOP_API_KEY": "dcr_abc"})
        assert result.exit_code == 1 and "is not a job id" in result.output, result.output


def test_path_segments_are_quoted() -> None:
    import httpx

    from services.worker.client import ResearcherJobs

    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(404, json={"detail": "no job"})

    client = ResearcherJobs("http://jobs", "k")
    client.http = httpx.Client(base_url="http://jobs", transport=httpx.MockTransport(answer))
    with pytest.raises(Exception, match="no job"):
        client.status("x?y")
    assert seen[0].startswith("/jobs/x%3Fy?")
