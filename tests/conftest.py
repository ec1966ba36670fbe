"""Session fixtures: one real Tansu broker and one real anvil chain, started by the tests themselves."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local import Broker, Chain, start_broker, start_chain

LOG_DIR = Path(__file__).resolve().parent.parent / "var" / "test-logs"


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A Tansu broker on a free loopback port for the whole test session (in-memory log)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    b = start_broker(log_path=LOG_DIR / "tansu.log")
    os.environ["DATACOOP_TEST_BOOTSTRAP"] = b.bootstrap
    yield b
    b.stop()


@pytest.fixture(scope="session")
def chain() -> Iterator[Chain]:
    """An anvil chain (chain id 31337, the standard funded dev accounts) for the whole session."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    c = start_chain(log_path=LOG_DIR / "anvil.log")
    yield c
    c.stop()


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs `serve` configures the root logger (a JSON handler on the stderr of that moment): put
    back what was there, so later tests' output is theirs alone."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def prefix() -> str:
    """A unique topic prefix, so tests sharing the session broker never see each other's events."""
    return f"t{uuid.uuid4().hex[:10]}"
