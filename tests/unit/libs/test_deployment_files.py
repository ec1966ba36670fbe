"""docker-compose.yml and the Dockerfile must cover every service `datacoop up` starts; the lock pins
what a new machine installs."""

from __future__ import annotations

import os
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
        def config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run([exe, "-f", str(REPO_ROOT / "docker-compose.yml"), "config", "--quiet"],
                                  capture_output=True, text=True, timeout=60,
                                  env={"PATH": os.environ.get("PATH", ""), **env})
        result = config(dict.fromkeys(SECRETS, "a-secret-0123456789abcdef"))
        assert result.returncode == 0, result.stderr
        refused = config({})
        assert refused.returncode != 0 and "DATACOOP_VAULT_KEK" in refused.stderr, refused.stderr


SECRETS = ["DATACOOP_VAULT_KEK", "DATACOOP_VAULT_SERVICE_TOKEN", "DATACOOP_ANONYMIZER_OPERATOR_TOKEN",
           "DATACOOP_ANONYMIZER_PSEUDONYM_KEY", "DATACOOP_SETTLEMENT_OPERATOR_TOKEN"]


def test_compose_requires_every_secret_and_never_sets_dev_secrets() -> None:
    """A deployment that forgets a secret must not start with the development default every install shares."""
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    for secret in SECRETS:
        assert f"${{{secret}:?" in text, f"docker-compose.yml must require {secret} (${{{secret}:?message}})"
    assert "DATACOOP_DEV_SECRETS" not in text


def test_the_lock_pins_every_package_by_version_only() -> None:
    """A line like `pkg @ file:///tmp/...` (what `pip freeze` writes for a wheel installed from a file) pins a
    path that exists only on the machine that made the lock: `make install` then fails everywhere else."""
    lines = [line.strip() for line in (REPO_ROOT / "requirements.lock").read_text().splitlines()]
    pins = [line for line in lines if line and not line.startswith("#")]
    pinned = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[^\s;@]+")
    unpinned = [line for line in pins if not pinned.fullmatch(line)]
    assert pins and not unpinned, f"requirements.lock lines that are not name==version: {unpinned}"
