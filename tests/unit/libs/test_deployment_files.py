"""docker-compose.yml and the Dockerfile must cover every service `datacoop up` starts; the lock pins
what a new machine installs."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from typing import Any, cast

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
        given = {**dict.fromkeys(SECRETS, "a-secret-0123456789abcdef"), **CHAIN_SETTINGS}
        result = config(given)
        assert result.returncode == 0, result.stderr
        refused = config(CHAIN_SETTINGS)
        assert refused.returncode != 0 and "DATACOOP_VAULT_KEK" in refused.stderr, refused.stderr
        for name in CHAIN_SETTINGS:
            refused = config({k: v for k, v in given.items() if k != name})
            assert refused.returncode != 0 and f"set {name} to" in refused.stderr, (name, refused.stderr)


SECRETS = ["DATACOOP_VAULT_KEK", "DATACOOP_VAULT_SERVICE_TOKEN", "DATACOOP_ANONYMIZER_OPERATOR_TOKEN",
           "DATACOOP_ANONYMIZER_PSEUDONYM_KEY", "DATACOOP_SETTLEMENT_OPERATOR_TOKEN"]
# What a deployment must say about its chain (example values: the local anvil's, as deploy_local_stack makes them).
CHAIN_SETTINGS = {
    "DATACOOP_CHAIN_URL": "http://chain:8545",
    "DATACOOP_CHAIN_ID": "31337",
    "DATACOOP_MARKET_ADDRESS": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
    "DATACOOP_TOKEN_ADDRESS": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "DATACOOP_SETTLER_KEY": "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "DATACOOP_COOP_ADDRESS": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
}


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


def _compose() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text()))


def _dockerfile() -> list[tuple[str, str]]:
    """infra/docker/Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n", " ", (REPO_ROOT / "infra" / "docker" / "Dockerfile").read_text())
    lines = [line.strip() for line in joined.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in lines if line and not line.startswith("#")]


def test_compose_requires_the_chain_settings_and_never_passes_an_empty_one() -> None:
    """`${X:-}` hands a service "", which its address and key patterns refuse: marketplace, jobs and settlement
    restarted for ever. A setting a service needs is `${X:?what to set}`; an optional one is left out."""
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    for name in CHAIN_SETTINGS:
        assert f"${{{name}:?set {name} to" in text, f"docker-compose.yml must require {name} (${{{name}:?message}})"
    # the one exception: the worker of the opt-in `compute` profile, which names its missing key and exits
    # (required, the key would be asked of every deployment: compose interpolates services whose profile is off)
    empty = [m for m in re.findall(r"\$\{[A-Z0-9_]+:?-\}", text) if m != "${DATACOOP_WORKER_KEY:-}"]
    assert not empty, f"docker-compose.yml passes empty values: {empty}"


def test_each_service_gets_the_chain_settings_it_reads_and_no_chain_url_it_does_not() -> None:
    """The consent and vault services sign in an EIP-712 domain of chain id and market address: without them
    they signed in another domain than the jobs service's. DATACOOP_CHAIN_URL goes only where it is read."""
    from datacoop.kit.settings import ServiceSettings

    compose = _compose()
    chain_fields = {"chain_url", "chain_id", "market_address", "token_address", "settler_key", "coop_address",
                    "start_block"}
    for entry in SERVICES:
        package = importlib.import_module(entry.module.rsplit(".", 1)[0] + ".settings")
        fields = {f for cls in vars(package).values()
                  if isinstance(cls, type) and issubclass(cls, ServiceSettings) and cls.__module__ == package.__name__
                  for f in cls.model_fields}
        given = set(compose["services"][entry.name]["environment"])
        missing = [name for name in (f"DATACOOP_{f.upper()}" for f in sorted(fields & chain_fields))
                   if name not in given]
        assert not missing, f"docker-compose.yml's {entry.name} lacks {missing}, which its settings read"
        assert ("DATACOOP_CHAIN_URL" in given) == ("chain_url" in fields), \
            f"docker-compose.yml gives {entry.name} DATACOOP_CHAIN_URL only if its settings read it"


def test_the_image_runs_the_code_from_app_where_its_files_are() -> None:
    """chain.py, the services and the CLI find the contract artifacts, schemas/, catalogs and categories by
    their own path: a plain `pip install .` runs a copy in site-packages, beside none of them (marketplace and
    settlement then said the market address was wrong)."""
    steps = _dockerfile()
    assert ("WORKDIR", "/app") in steps
    installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    assert installs, "the Dockerfile installs the project with pip"
    for run in installs:
        for command in run.split("&&"):
            if "pip install" in command and re.search(r"\s\.(\s|$)", command):
                assert re.search(r"\s(-e|--editable)\s+\.(\s|$)", command), \
                    f"the project is installed as a copy in site-packages ({command.strip()}): install it editable"
    copied = " ".join(args for op, args in steps if op == "COPY")
    for needed in ("infra/contracts/artifacts", "schemas", "services", "datasets", "libs"):
        assert needed in copied, f"the image lacks {needed}"
    assert any(op == "CMD" for op, _ in steps), "the image has no default command"


def test_the_image_owns_every_folder_compose_mounts_a_volume_on() -> None:
    """A named volume takes the owner of the image's folder it is first mounted on: a folder the image lacks is
    root's, and the services run as uid 10001 (the anonymizer could not write the shared object store)."""
    runs = " ".join(args for op, args in _dockerfile() if op == "RUN")
    compose = _compose()
    for name, svc in compose["services"].items():
        if svc.get("image") != "datacoop:latest":
            continue
        for mount in svc.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source in compose["volumes"]:
                assert re.search(rf"mkdir -p [^&]*{re.escape(target)}(\s|$)", runs) and \
                    re.search(rf"chown [^&]*{re.escape(target)}(\s|$)", runs), \
                    f"the Dockerfile must create and chown {target} ({name} mounts the {source} volume there)"


def test_kafka_keeps_its_log_in_its_volume_under_a_fixed_cluster_id() -> None:
    kafka = _compose()["services"]["kafka"]
    mounted = [m.split(":")[1] for m in kafka["volumes"] if m.split(":")[0] == "kafka-data"]
    assert kafka["environment"].get("KAFKA_LOG_DIRS") in mounted, "Kafka's log dir must be its volume"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", str(kafka["environment"].get("CLUSTER_ID"))), \
        "a fixed CLUSTER_ID (22 characters of base64url): the log dir is formatted with it"


def test_kafka_takes_the_largest_batch_the_publisher_sends() -> None:
    """Apache Kafka's message.max.bytes is 1 MiB by default; the publisher's batches run to its max_request_size
    (8 MiB), so without the setting every batch over 1 MiB would be refused (MESSAGE_TOO_LARGE)."""
    import inspect

    from datacoop.bus.publisher import Publisher

    largest = inspect.signature(Publisher).parameters["max_request_size"].default
    kafka = _compose()["services"]["kafka"]["environment"]
    assert int(kafka["KAFKA_MESSAGE_MAX_BYTES"]) >= largest, "the broker must take the publisher's largest batch"
    assert int(kafka["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= int(kafka["KAFKA_MESSAGE_MAX_BYTES"]), \
        "a follower must be able to copy the largest batch"


def test_the_local_chain_is_opt_in_pinned_and_makes_blocks() -> None:
    chain = _compose()["services"]["chain"]
    assert chain.get("profiles") == ["local"]
    tag = chain["image"].rsplit(":", 1)[1]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"pin the anvil image to a release, not {tag}"
    assert "--block-time" in chain["entrypoint"]


def test_the_worker_is_built_like_the_services_and_not_checked_over_http() -> None:
    compose = _compose()
    worker, consent = compose["services"]["worker"], compose["services"]["consent"]
    assert worker["build"] == consent["build"] and worker["image"] == consent["image"]
    assert worker.get("healthcheck") == {"disable": True}, "the worker listens on no port"
    assert worker.get("hostname"), "a fixed hostname: the worker's id is made from it"
    assert worker.get("profiles") == ["compute"] or "${DATACOOP_WORKER_KEY:?" in str(worker["environment"])
