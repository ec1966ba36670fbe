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
