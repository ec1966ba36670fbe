"""Fixtures shared by the CLI tests of this folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from datacoop.cli import stack as stack_mod


@pytest.fixture
def no_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No running stack, no service URL, key or API key from the environment of whoever runs the tests;
    returns where the stack file would be. Modules use it with `pytestmark = pytest.mark.usefixtures(...)`."""
    monkeypatch.setattr(stack_mod, "STACK_FILE", tmp_path / "stack.json")
    monkeypatch.setattr("datacoop.cli.market.RESEARCHER_KEY_FILE", tmp_path / "researcher.apikey")
    for name in ("CONSENT", "VAULT", "ANONYMIZER", "MARKETPLACE", "JOBS", "SETTLEMENT", "CHAIN"):
        monkeypatch.delenv(f"DATACOOP_{name}_URL", raising=False)
    for name in ("DATACOOP_KEY", "DATACOOP_API_KEY", "DATACOOP_WORKER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "stack.json"
