"""docker-compose.yml and the Dockerfile must cover every service `datacoop up` starts."""

from __future__ import annotations

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
