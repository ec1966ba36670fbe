"""HTTP routes of the anonymizer: definitions (operator), the catalog of versions, builds, DP aggregates."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, status

from datacoop.kit.problems import DomainError, NotFound, NotReady, require_bearer
from services.anonymizer import domain
from services.anonymizer.build import read_aggregates
from services.anonymizer.definition import DefinitionError

DatasetPath = Annotated[str, Path(pattern=r"^[a-z][a-z0-9-]{1,63}$", description="the dataset id (definition name)")]


def refused_definition(exc: DefinitionError) -> DomainError:
    return DomainError(f"the definition is refused: {'; '.join(exc.problems)}", status=422,
                       slug="invalid-definition", problems=exc.problems)


def guarantees(version: dict[str, Any]) -> dict[str, Any]:
    keys = ("k", "l_diversity", "privacy_model", "epsilon", "rows", "suppressed_rows", "information_loss")
    return {k: version[k] for k in keys}


def version_view(version: dict[str, Any]) -> dict[str, Any]:
    """A version as anyone may see it: how many members contributed, never who or how much. Rows per
    member would link pseudonyms in the Parquet to wallet addresses; `contributor_weights` stays in the
    event on the datasets topic, for settlement."""
    public = {k: v for k, v in version.items() if k != "contributor_weights"}
    return {**public, "guarantees": guarantees(version), "contributors": len(version["contributor_weights"])}


def build_router(svc: Any) -> APIRouter:
    """`svc` is the AnonymizerService (projection, define, request_build, build_status)."""
    router = APIRouter()

    def operator(authorization: str | None) -> None:
        require_bearer(authorization, svc.operator_token, what="an operator token",
                       setting="DATACOOP_ANONYMIZER_OPERATOR_TOKEN", slug="bad-operator-token")

    def ready() -> None:
        if not svc.ready:
            raise NotReady("the anonymizer is still catching up with the log; retry in a moment")

    def existing(dataset_id: str) -> dict[str, Any]:
        found = [d for d in svc.projection.definitions() if d["dataset_id"] == dataset_id]
        if not found:
            raise NotFound(f"no dataset {dataset_id!r}; list them with `datacoop dataset list` (GET /definitions)")
        return dict(found[0])

    @router.get("/definitions", tags=["definitions"])
    async def list_definitions() -> list[dict[str, Any]]:
        """Every dataset definition (the newest version of each)."""
        return [{k: v for k, v in d.items() if k != "definition"} for d in svc.projection.definitions()]

    @router.get("/definition-files", tags=["definitions"])
    async def definition_files() -> list[dict[str, Any]]:
        """The definition files read at start (DATACOOP_ANONYMIZER_DEFINITIONS_DIR, default datasets/) and what
        became of each: `defined`, `unchanged` (that version was defined already), `refused` or `unreadable`, with
        the problems. 503 until they have been read (after the projection caught up)."""
        files: list[dict[str, Any]] | None = svc.definition_files
        if files is None:
            raise NotReady("the definition files are read once the projection has caught up; retry shortly")
        return files

    @router.get("/definitions/{dataset_id}", tags=["definitions"])
    async def get_definition(dataset_id: DatasetPath) -> dict[str, Any]:
        """One definition with its full content."""
        return existing(dataset_id)

    @router.post("/definitions/validate", tags=["definitions"])
    async def validate(definition: Annotated[dict[str, Any], Body()],
                       authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Check a definition without saving it (operator): 200 with what it resolves to, or 422 with problems."""
        operator(authorization)
        try:
            resolved = domain.check_definition(definition, svc.vocabulary)
        except DefinitionError as exc:
            raise refused_definition(exc) from exc
        return {"valid": True, "dataset_id": resolved.definition.name,
                "privacy_model": domain.privacy_model_text(resolved),
                "quasi_identifiers": list(resolved.hierarchies), "published_as_is": resolved.passthrough}

    @router.post("/definitions", status_code=status.HTTP_201_CREATED, tags=["definitions"])
    async def create(definition: Annotated[dict[str, Any], Body()],
                     authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Create a dataset or a new version of its definition (operator). Refusals list every problem."""
        operator(authorization)
        ready()
        try:
            resolved, new = await svc.define(definition, "api")
        except DefinitionError as exc:
            raise refused_definition(exc) from exc
        return {**existing(resolved.definition.name), "created": new}

    @router.get("/datasets", tags=["catalog"])
    async def catalog() -> list[dict[str, Any]]:
        """The catalog: every dataset with the newest version on offer (none superseded)."""
        out = []
        for d in svc.projection.definitions():
            newest = svc.projection.newest_offered(d["dataset_id"])
            out.append({"dataset_id": d["dataset_id"], "purpose": d["purpose"], "categories": d["categories"],
                        "definition_version": d["definition_version"],
                        "newest_version": version_view(newest) if newest else None})
        return out

    @router.get("/datasets/{dataset_id}/versions", tags=["catalog"])
    async def versions(dataset_id: DatasetPath) -> list[dict[str, Any]]:
        """Every version, superseded ones marked (with why and by which)."""
        existing(dataset_id)
        return [version_view(v) for v in svc.projection.versions(dataset_id)]

    @router.get("/datasets/{dataset_id}/versions/{version}", tags=["catalog"])
    async def get_version(dataset_id: DatasetPath, version: int) -> dict[str, Any]:
        """One version: location, sha256, columns, how many contributors and what it guarantees."""
        found = svc.projection.version(dataset_id, version)
        if found is None:
            raise NotFound(f"dataset {dataset_id!r} has no version {version}; list them with `datacoop dataset "
                           f"show {dataset_id}` (GET /datasets/{dataset_id}/versions)")
        return version_view(found)

    @router.get("/datasets/{dataset_id}/versions/{version}/contributors", tags=["catalog"])
    async def contributors(dataset_id: DatasetPath, version: int,
                           authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Operator only: the members whose records are in the version and how many rows each (what the
        version event tells settlement). Never public: rows per member link the Parquet's pseudonyms to
        wallet addresses."""
        operator(authorization)
        found = svc.projection.version(dataset_id, version)
        if found is None:
            raise NotFound(f"dataset {dataset_id!r} has no version {version}; list them with `datacoop dataset "
                           f"show {dataset_id}` (GET /datasets/{dataset_id}/versions)")
        return {"dataset_id": dataset_id, "version": version, "contributor_weights": found["contributor_weights"]}

    @router.get("/datasets/{dataset_id}/versions/{version}/aggregates", tags=["catalog"])
    async def aggregates(dataset_id: DatasetPath, version: int) -> dict[str, Any]:
        """The version's differentially private aggregates per generalized cell (epsilon stated)."""
        # only a published version's: a build writes them before its version is appended, and one that
        # anonymizes again (a member left) draws them again; an unpublished draw is never shown
        published = svc.projection.version(dataset_id, version)
        found = read_aggregates(svc.aggregates_db, dataset_id, version) if published is not None else None
        if found is None:
            raise NotFound(f"no aggregates for {dataset_id!r} version {version}; is the version published?")
        return found

    @router.post("/datasets/{dataset_id}/build", status_code=status.HTTP_202_ACCEPTED, tags=["builds"])
    async def build(dataset_id: DatasetPath, authorization: Annotated[str | None, Header()] = None,
                    force: bool = False) -> dict[str, Any]:
        """Build a new version now (operator); follow it at /datasets/{id}/builds/{build_id}. When the newest
        version on offer was built from exactly the records eligible now, or holds exactly the rows (Parquet
        sha256) and contributor weights the build would publish, the build ends `unchanged` (with that
        `version`) and publishes nothing, unless `force=true` (e.g. after changing the anonymizer's mode):
        a forced build publishes even identical rows, superseding the version on offer, and says so."""
        operator(authorization)
        ready()
        existing(dataset_id)
        req = svc.request_build(dataset_id, force=force)
        return {"dataset_id": dataset_id, "build_id": req.build_id,
                "status": f"/datasets/{dataset_id}/builds/{req.build_id}"}

    @router.get("/datasets/{dataset_id}/builds", tags=["builds"])
    async def builds(dataset_id: DatasetPath) -> list[dict[str, Any]]:
        """Recent builds, newest first: trigger, stage, progress, outcome."""
        existing(dataset_id)
        return list(svc.projection.builds(dataset_id))

    @router.get("/datasets/{dataset_id}/builds/{build_id}", tags=["builds"])
    async def build_status(dataset_id: DatasetPath, build_id: str) -> dict[str, Any]:
        """A build's stage (queued, selecting, decrypting, anonymizing, writing, publishing), done/total, outcome."""
        found = svc.build_status(build_id)
        if found is None or found.get("dataset_id") != dataset_id:
            raise NotFound(f"no build {build_id} of {dataset_id!r}")
        return dict(found)

    return router
