"""Services as processes, started against the session's real broker, driven through their APIs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from infra.local import REPO_ROOT, Broker, die_with_parent, free_port


@dataclass
class ServiceProcess:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def start_service(name: str, env: dict[str, str], log_path: Path, timeout_s: float = 60) -> ServiceProcess:
    port = int(env.get("DATACOOP_PORT") or free_port())
    env = {**os.environ, "DATACOOP_DEV_SECRETS": "true", **env, "DATACOOP_PORT": str(port), "DATACOOP_LOG_JSON": "true"}
    out = open(log_path, "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", f"services.{name}.service"], env=env, cwd=REPO_ROOT,
                            stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    svc = ServiceProcess(name, f"http://127.0.0.1:{port}", proc, env, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{svc.log()}")
        try:
            if httpx.get(f"{svc.url}/readyz", timeout=1).status_code == 200:
                return svc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    svc.kill()
    raise AssertionError(f"{name} not ready within {timeout_s} s:\n{svc.log()}")


@pytest.fixture
def service_env(broker: Broker, prefix: str, tmp_path: Path) -> dict[str, str]:
    return {"DATACOOP_BOOTSTRAP": broker.bootstrap, "DATACOOP_TOPIC_PREFIX": f"{prefix}.",
            "DATACOOP_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def _launch(name: str, env: dict[str, str]) -> ServiceProcess:
        svc = start_service(name, env, tmp_path / f"{name}-{len(started)}.log")
        started.append(svc)
        return svc

    yield _launch
    for svc in started:
        svc.stop()
