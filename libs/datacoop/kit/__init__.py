"""Service kit: settings, the app factory, problem+json errors, JSON logs, the runtime that wires a
service's store, publisher, consumer runner and writer."""

from datacoop.kit.app import create_app, serve
from datacoop.kit.problems import DomainError, problem_response
from datacoop.kit.runtime import ServiceRuntime
from datacoop.kit.settings import ServiceSettings

__all__ = ["DomainError", "ServiceRuntime", "ServiceSettings", "create_app", "problem_response", "serve"]
