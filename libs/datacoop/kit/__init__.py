"""Service kit: settings, the app factory, problem+json errors, JSON logs, the runtime that wires a
service's store, publisher, consumer runner and writer.

The names below load on first use (PEP 562): the CLI reads `datacoop.kit.settings` without paying for
FastAPI, aiokafka and DuckDB at every start (`datacoop --help` took 2.4 s, half of it importing them)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datacoop.kit.app import create_app, serve
    from datacoop.kit.problems import DomainError, problem_response
    from datacoop.kit.runtime import ServiceRuntime
    from datacoop.kit.settings import ServiceSettings

__all__ = ["DomainError", "ServiceRuntime", "ServiceSettings", "create_app", "problem_response", "serve"]

_HOME = {"create_app": "app", "serve": "app", "DomainError": "problems", "problem_response": "problems",
         "ServiceRuntime": "runtime", "ServiceSettings": "settings"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'datacoop.kit' has no attribute {name!r}")
    return getattr(importlib.import_module(f"datacoop.kit.{_HOME[name]}"), name)
