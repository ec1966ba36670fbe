"""`datacoop categories [NAME]`: what a member's file must hold, from the vault's own GET /categories (here the
vault's app, served in-process, so the schemas are the ones the vault checks uploads against)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from datacoop.cli import app
from datacoop.cli import stack as stack_mod
from services.vault.service import build_app
from services.vault.settings import VaultSettings

VAULT = "http://vault.test"


@pytest.fixture
def vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(stack_mod, "STACK_FILE", tmp_path / "stack.json")  # no running stack
    built = build_app(VaultSettings(bootstrap="127.0.0.1:1", topic_prefix="t.", data_dir=tmp_path, dev_secrets=True,
                                    log_json=False))
    client = TestClient(built)
    monkeypatch.setattr(httpx, "get", lambda url, **kw: client.get(url.removeprefix(VAULT)))
    yield client
    built.state.runtime.store.close()


def _cells(output: str) -> dict[str, list[str]]:
    """The table's rows by their first cell: each row's cells, stripped."""
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in output.splitlines() if line.startswith("│")]
    return {cells[0]: cells for cells in rows}


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["categories", *args, "--vault-url", VAULT], env={"COLUMNS": "220"})


def test_the_list_names_every_category_with_its_fields(vault: Any) -> None:
    result = _invoke()
    assert result.exit_code == 0, result.output
    rows = _cells(result.output)
    assert set(rows) == {"demographics", "finance", "fitness", "health", "location"}, result.output
    assert all(cells[1] == "v1" for cells in rows.values())
    assert rows["fitness"][2].startswith("day, steps, "), "required fields first"
    assert "`datacoop categories NAME`" in result.output


def test_one_category_shows_each_fields_type_and_allowed_values(vault: Any) -> None:
    result = _invoke("fitness")
    assert result.exit_code == 0, result.output
    rows = _cells(result.output)
    assert rows["steps"][1:] == ["integer", "yes", "0 to 200000"], rows["steps"]
    assert rows["workout"][1:3] == ["string", "no"] and "walk | run" in rows["workout"][3]
    assert "--category fitness" in result.output
    as_json = _invoke("fitness", "--json")
    assert json.loads(as_json.output) == vault.get("/categories").json()["fitness"]


def test_an_unknown_category_lists_the_known_ones(vault: Any) -> None:
    result = _invoke("steps")
    assert result.exit_code == 2 and "no category 'steps'; the vault takes demographics, finance" in result.output
