"""Events of the datasets topic (writer: the anonymizer service).

A published version states what it guarantees and who is in it: `contributor_weights` (member ->
records included) is what the settlement service splits a sale by.
"""

from __future__ import annotations

from pydantic import Field

from datacoop.events.registry import Event, event
from datacoop.events.types import Address, Slug, UtcTime
from datacoop.topics import DATASETS


@event("datacoop.anonymizer.version_published", 1, topic=DATASETS)
class DatasetVersionPublished(Event):
    dataset_id: Slug
    version: int = Field(ge=1)
    purpose: Slug
    categories: list[Slug]
    location: str = Field(min_length=1, description="URL of the Parquet file in the object store")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
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
