"""README.md must stay true: every service's routes, every CLI command and every topic are in it."""

from __future__ import annotations

import importlib
import re
from typing import Any

import typer

from datacoop.cli import app
from datacoop.cli.stack import SERVICES
from datacoop.topics import TOPICS
from infra.local import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
ROUTE = re.compile(r"@(?:router|app)\.(get|post|put|delete|patch)\(\s*\"([^\"]+)\"")


def _routes(service: str) -> list[str]:
    api = REPO_ROOT / "services" / service / "api.py"
    return [f"{m.upper()} {p}" for m, p in ROUTE.findall(api.read_text())]


def _commands(group: Any, prefix: str = "datacoop") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out += _commands(cmd, f"{prefix} {name}")
        else:
            out.append(f"{prefix} {name}")
    return out


def test_every_route_of_every_service_is_documented() -> None:
    missing = [f"{s.name}: {r}" for s in SERVICES for r in _routes(s.name) if f"`{r}`" not in README]
    assert not missing, f"README.md lacks these routes (as `METHOD /path`): {missing}"


def test_every_cli_command_is_documented() -> None:
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    missing = [c for c in _commands(group) if c not in README]
    assert not missing, f"README.md lacks these commands: {missing}"


def test_every_topic_and_service_is_documented() -> None:
    assert all(f"`{t}`" in README for t in TOPICS), "README.md lacks a topic"
    for s in SERVICES:
        importlib.import_module(s.module)
        assert f"| {s.name} |" in README, f"README.md's service table lacks {s.name}"


def test_every_setting_of_every_service_is_in_the_settings_table() -> None:
    """Each service's settings fields (beyond the common ones named in the paragraph above the table) appear
    in README's table as `NAME` without the DATACOOP_ prefix: a new user found the vault's key store file
    named in an error but nowhere in README."""
    from datacoop.kit.settings import ServiceSettings

    common = set(ServiceSettings.model_fields)
    missing = []
    for s in SERVICES:
        package = importlib.import_module(s.module.rsplit(".", 1)[0] + ".settings")
        for cls in vars(package).values():
            if isinstance(cls, type) and issubclass(cls, ServiceSettings) and cls is not ServiceSettings:
                missing += [f"{s.name}: DATACOOP_{f.upper()}" for f in cls.model_fields
                            if f not in common and f"`{f.upper()}`" not in README]
    assert not missing, f"README.md's settings table lacks: {missing}"
