"""The client side of every service API: problem+json errors become one exception type."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx


class ApiError(RuntimeError):
    """A refused request: `status`, and the problem+json `detail` that says what to do."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('detail') or problem}")
        self.status = status
        self.problem = problem


def check(resp: httpx.Response) -> Any:
    """The JSON body of a successful response (None when empty); ApiError otherwise."""
    if resp.status_code >= 400:
        try:
            problem = resp.json()
        except ValueError:
            problem = {"detail": resp.text}
        raise ApiError(resp.status_code, problem if isinstance(problem, dict) else {"detail": problem})
    return resp.json() if resp.content else None


def segment(value: str) -> str:
    """`value` as one URL path segment: '/', '?', '#' and dots percent-encoded, so neither the client's URL
    normalisation ('..') nor the router walks it to another route."""
    return quote(value, safe="").replace(".", "%2E")
