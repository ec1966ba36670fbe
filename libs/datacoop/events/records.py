"""Events of the records topic (writer: the vault service). Ciphertext and non-personal metadata only.

A contribution (one upload) is published as one `RecordsContributed` per chunk of at most
`MAX_RECORDS_PER_EVENT` records, all with the same `upload_id`. Each record's plaintext (the
validated row as JSON) is sealed with AES-256-GCM under the member's data key, associated data
`"<member>|<record_id>"`; the key lives only in the vault's key store. `upload_tag` is an HMAC of
the signed content hash under a vault secret: it lets a rebuilt vault refuse a replayed upload
without publishing a hash that could confirm a guessed file (nor the signature, which would too).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from typing_extensions import TypedDict

from datacoop.events.registry import Event, event
from datacoop.events.types import Address, Sha256, Slug, UtcTime
from datacoop.topics import RECORDS

MAX_RECORDS_PER_EVENT = 500

_B64 = r"^[A-Za-z0-9+/]+={0,2}$"


class SealedRecord(TypedDict, closed=True):
    """One record as it travels: an id, the AES-GCM nonce and the ciphertext (with its 16-byte tag).

    A TypedDict, not a model: an upload has thousands, and plain dicts cost no object per record."""

    record_id: Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9._:-]+$")]
    nonce: Annotated[str, Field(pattern=_B64, description="base64 of the 12-byte AES-GCM nonce")]
    ciphertext: Annotated[str, Field(pattern=_B64, description="base64 of AES-256-GCM ciphertext ‖ tag")]


@event("datacoop.vault.records_contributed", 1, topic=RECORDS)
class RecordsContributed(Event):
    member: Address
    category: Slug
    upload_id: str = Field(min_length=1, max_length=64)
    upload_tag: Sha256 = Field(description="HMAC-SHA256 of the signed content hash under a vault secret")
    schema_version: int = Field(ge=1, description="version of the category schema the rows were checked against")
    chunk: int = Field(ge=0, description="index of this event among the upload's events")
    chunks: int = Field(ge=1, description="how many events the upload was published as")
    records: list[SealedRecord] = Field(min_length=1, max_length=MAX_RECORDS_PER_EVENT)
    contributed_at: UtcTime


@event("datacoop.vault.keys_shredded", 1, topic=RECORDS)
class KeysShredded(Event):
    """The member's data key is destroyed: no replay of the records topic can read their records."""

    member: Address
    shredded_at: UtcTime
    cause_event_id: str = Field(min_length=1, description="id of the erasure request that caused it")
