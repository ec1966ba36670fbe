"""docker-compose.yml and the Dockerfile must cover every service `datacoop up` starts; the lock pins
what a new machine installs."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from datacoop.cli.stack import SERVICES
from infra.local import REPO_ROOT


def test_every_service_runs_in_compose_from_the_project_image() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert "kafka" in compose["services"]
    assert compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for entry in SERVICES:
        svc = compose["services"].get(entry.name)
        assert svc is not None, f"docker-compose.yml lacks the {entry.name} service"
        assert svc["command"] == ["python", "-m", entry.module]
        assert svc["build"]["dockerfile"] == "infra/docker/Dockerfile"
    assert (REPO_ROOT / "infra" / "docker" / "Dockerfile").exists()


def test_compose_file_parses_with_docker_compose_when_installed() -> None:
    exe = shutil.which("docker-compose")
    compose_yaml = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert compose_yaml["volumes"], "named volumes keep Kafka's log and the projections"
    if exe:
        result = subprocess.run([exe, "-f", str(REPO_ROOT / "docker-compose.yml"), "config", "--quiet"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


def test_the_lock_pins_every_package_by_version_only() -> None:
    """A line like `pkg @ file:///tmp/...` (what `pip freeze` writes for a wheel installed from a file) pins a
    path that exists only on the machine that made the lock: `make install` then fails everywhere else."""
    lines = [line.strip() for line in (REPO_ROOT / "requirements.lock").read_text().splitlines()]
    pins = [line for line in lines if line and not line.startswith("#")]
    pinned = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[^\s;@]+")
    unpinned = [line for line in pins if not pinned.fullmatch(line)]
    assert pins and not unpinned, f"requirements.lock lines that are not name==version: {unpinned}"
