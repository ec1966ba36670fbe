"""Events of the datasets topic (writer: the anonymizer service).

A published version states what it guarantees and who is in it: `contributor_weights` (member ->
records included) is what the settlement service splits a sale by. Definitions and builds are
events too (subject: the dataset id), so a rebuilt anonymizer knows every definition and build.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field

from datacoop.events.registry import REGISTRY, Event, event
from datacoop.events.types import Address, JsonObject, Sha256, Slug, UtcTime
from datacoop.topics import DATASETS


@event("datacoop.anonymizer.version_published", 1, topic=DATASETS)
class DatasetVersionPublished(Event):
    dataset_id: Slug
    version: int = Field(ge=1)
    purpose: Slug
    categories: list[Slug]
    location: str = Field(min_length=1, description="URL of the Parquet file in the object store")
    sha256: Sha256
    rows: int = Field(ge=0)
    suppressed_rows: int = Field(ge=0)
    k: int = Field(ge=1)
    l_diversity: float = Field(ge=0, description="achieved l (distinct or entropy, per privacy_model)")
    privacy_model: str
    information_loss: float = Field(ge=0, le=1)
    epsilon: float = Field(gt=0, description="epsilon of the published DP aggregates")
    columns: dict[str, str] = Field(description="column -> type of the published table")
    contributor_weights: dict[Address, int] = Field(description="member -> records in this version")
    published_at: UtcTime


@event("datacoop.anonymizer.version_superseded", 1, topic=DATASETS)
class DatasetVersionSuperseded(Event):
    dataset_id: Slug
    version: int = Field(ge=1)
    superseded_by: int | None = Field(None, ge=1)
    reason: str
    superseded_at: UtcTime


@event("datacoop.anonymizer.dataset_defined", 1, topic=DATASETS)
class DatasetDefined(Event):
    """A dataset definition accepted by the anonymizer (from datasets/*.yaml or the operator API).

    `definition` is the definition's content as the YAML gives it (see docs/anonymization.md); it
    names columns, hierarchies and parameters, never a member's data."""

    dataset_id: Slug
    definition_version: int = Field(ge=1)
    purpose: Slug
    categories: list[Slug] = Field(min_length=1)
    definition: JsonObject
    source: Literal["file", "api"]
    defined_at: UtcTime


BuildTrigger = Literal["on-demand", "change", "start"]
BuildStage = Literal["selecting", "decrypting", "anonymizing", "writing", "publishing"]


@event("datacoop.anonymizer.build_started", 1, topic=DATASETS)
class VersionBuildStarted(Event):
    """A build of the next version began. `inputs_sha256` fingerprints the eligible record ids (and the
    definition version): a build with the same fingerprint as the last one would publish the same rows."""

    dataset_id: Slug
    build_id: str = Field(min_length=1, max_length=64)
    trigger: BuildTrigger
    definition_version: int = Field(ge=1)
    inputs_sha256: Sha256
    members: int = Field(ge=0, description="members with an active consent and records")
    records: int = Field(ge=0, description="records of those members in the dataset's categories")
    started_at: UtcTime


@event("datacoop.anonymizer.build_progressed", 1, topic=DATASETS)
class VersionBuildProgressed(Event):
    """How far a build got: `done` of `total` records at `stage` (a few per build, not one per record)."""

    dataset_id: Slug
    build_id: str = Field(min_length=1, max_length=64)
    stage: BuildStage
    done: int = Field(ge=0)
    total: int = Field(ge=0)
    at: UtcTime


@event("datacoop.anonymizer.build_finished", 1, topic=DATASETS)
class VersionBuildFinishedV1(Event):
    """The end of a build: `published` (then `version` is the new version), or `failed` with why."""

    # Kept to read logs written before version 2, as version 2 (see the upcaster below); never written. Its
    # published schema stays as it was: the docstring above and the title are v1's.
    model_config = ConfigDict(title="VersionBuildFinished")

    dataset_id: Slug
    build_id: str = Field(min_length=1, max_length=64)
    outcome: Literal["published", "failed"]
    version: int | None = Field(None, ge=1)
    detail: str = ""
    finished_at: UtcTime


@event("datacoop.anonymizer.build_finished", 2, topic=DATASETS)
class VersionBuildFinished(Event):
    """The end of a build: `published` (`version` is the new version), `unchanged` (its output was identical
    to `version`, on offer, which stays: nothing was published), or `failed` with why (`version` null)."""

    dataset_id: Slug
    build_id: str = Field(min_length=1, max_length=64)
    outcome: Literal["published", "unchanged", "failed"]
    version: int | None = Field(None, ge=1)
    detail: str = ""
    finished_at: UtcTime


_KEPT_V1 = re.compile(r"version ([0-9]+) already holds exactly what this build would publish")


def _build_finished_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v1 had no word for `unchanged`: a build whose output was identical to the version on offer said
    `published`, naming that version, with a detail beginning as the v1 anonymizer wrote it for exactly
    that case (`version N already holds exactly what this build would publish`). That one is `unchanged`."""
    kept = _KEPT_V1.match(str(data.get("detail", "")))
    if data.get("outcome") == "published" and kept and int(kept.group(1)) == data.get("version"):
        return {**data, "outcome": "unchanged"}
    return data


REGISTRY.register_upcaster("datacoop.anonymizer.build_finished", 1, _build_finished_v1_to_v2)
