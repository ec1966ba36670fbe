"""Callers of the anonymizer: the operator (definitions, builds) and anyone reading the catalog."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from datacoop.http import ApiError, check

__all__ = ["AnonymizerClient", "ApiError", "BuildFailed"]


class BuildFailed(RuntimeError):
    """A build ended without a version; the message is the service's reason."""


class AnonymizerClient:
    def __init__(self, base_url: str, operator_token: str | None = None, http: httpx.Client | None = None) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=60)
        self.headers = {"Authorization": f"Bearer {operator_token}"} if operator_token else {}

    def definitions(self) -> list[dict[str, Any]]:
        return list(check(self.http.get("/definitions")))

    def definition_files(self) -> list[dict[str, Any]]:
        return list(check(self.http.get("/definition-files")))

    def definition(self, dataset_id: str) -> dict[str, Any]:
        return dict(check(self.http.get(f"/definitions/{dataset_id}")))

    def define(self, definition: dict[str, Any]) -> dict[str, Any]:
        return dict(check(self.http.post("/definitions", json=definition, headers=self.headers)))

    def validate(self, definition: dict[str, Any]) -> dict[str, Any]:
        return dict(check(self.http.post("/definitions/validate", json=definition, headers=self.headers)))

    def catalog(self) -> list[dict[str, Any]]:
        return list(check(self.http.get("/datasets")))

    def versions(self, dataset_id: str) -> list[dict[str, Any]]:
        return list(check(self.http.get(f"/datasets/{dataset_id}/versions")))

    def version(self, dataset_id: str, version: int) -> dict[str, Any]:
        return dict(check(self.http.get(f"/datasets/{dataset_id}/versions/{version}")))

    def contributors(self, dataset_id: str, version: int) -> dict[str, int]:
        """Operator only: member -> rows in the version."""
        found = check(self.http.get(f"/datasets/{dataset_id}/versions/{version}/contributors", headers=self.headers))
        return dict(found["contributor_weights"])

    def aggregates(self, dataset_id: str, version: int) -> dict[str, Any]:
        return dict(check(self.http.get(f"/datasets/{dataset_id}/versions/{version}/aggregates")))

    def builds(self, dataset_id: str) -> list[dict[str, Any]]:
        return list(check(self.http.get(f"/datasets/{dataset_id}/builds")))

    def request_build(self, dataset_id: str, force: bool = False) -> dict[str, Any]:
        """The build's id and where to follow it (see `build` for how it may end)."""
        params = {"force": "true"} if force else None
        return dict(check(self.http.post(f"/datasets/{dataset_id}/build", headers=self.headers, params=params)))

    def build_status(self, dataset_id: str, build_id: str) -> dict[str, Any]:
        return dict(check(self.http.get(f"/datasets/{dataset_id}/builds/{build_id}")))

    def build(self, dataset_id: str, timeout_s: float = 600, poll_s: float = 0.3,
              on_progress: Callable[[dict[str, Any]], None] | None = None, force: bool = False) -> dict[str, Any]:
        """Request a build and follow it to the end: the version that holds the records eligible now (the
        new one, or the newest on offer when nothing changed and not `force`), or BuildFailed saying why."""
        build_id = self.request_build(dataset_id, force)["build_id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.build_status(dataset_id, build_id)
            if on_progress:
                on_progress(status)
            if status.get("outcome") in ("published", "unchanged"):
                return self.version(dataset_id, int(status["version"]))
            if status.get("outcome") == "failed":
                raise BuildFailed(f"build {build_id} of {dataset_id} failed: {status.get('detail') or 'no reason'}")
            time.sleep(poll_s)
        raise TimeoutError(f"build {build_id} of {dataset_id} did not finish within {timeout_s:.0f} s")
