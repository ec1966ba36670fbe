"""Events of the members topic (writer: the consent service).

Every member action is authorised by an EIP-712 signature of the member's wallet; the signature and
nonce travel in the event so any reader can re-verify who asked for what.
"""

from __future__ import annotations

from pydantic import Field

from datacoop.events.registry import Event, event
from datacoop.events.types import Address, HexSignature, Slug, UtcTime
from datacoop.topics import MEMBERS


@event("datacoop.consent.member_registered", 1, topic=MEMBERS)
class MemberRegistered(Event):
    member: Address
    registered_at: UtcTime
    nonce: int = Field(ge=0)
    signature: HexSignature


@event("datacoop.consent.granted", 1, topic=MEMBERS)
class ConsentGranted(Event):
    member: Address
    consent_id: str = Field(min_length=1)
    purpose: Slug
    categories: list[Slug] = Field(min_length=1)
    granted_at: UtcTime
    expires_at: UtcTime | None = None
    catalog_version: int = Field(ge=1)
    nonce: int = Field(ge=0)
    signature: HexSignature


@event("datacoop.consent.revoked", 1, topic=MEMBERS)
class ConsentRevoked(Event):
    member: Address
    consent_id: str = Field(min_length=1)
    revoked_at: UtcTime
    nonce: int = Field(ge=0)
    signature: HexSignature


@event("datacoop.consent.expired", 1, topic=MEMBERS)
class ConsentExpired(Event):
    member: Address
    consent_id: str = Field(min_length=1)
    expired_at: UtcTime


@event("datacoop.consent.erasure_requested", 1, topic=MEMBERS)
class ErasureRequested(Event):
    member: Address
    requested_at: UtcTime
    nonce: int = Field(ge=0)
    signature: HexSignature
