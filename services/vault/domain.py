"""The vault's rules, pure: who may contribute, what a contribution and an erasure produce.

State per member is what the vault learns from the members topic (registered, erased) and from its
own records topic (keys shredded). Commands arrive already verified and sealed (the signature
recovered, the rows checked and encrypted by the edges), so `decide` only judges and shapes events.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import ClassVar

from datacoop.errors import Refused
from datacoop.events.members import ErasureRequested, MemberRegistered
from datacoop.events.records import MAX_RECORDS_PER_EVENT, KeysShredded, RecordsContributed, SealedRecord
from datacoop.events.registry import Event


class VaultRefused(Refused):
    """A command the vault's rules refuse; each kind has its own problem slug."""

    slugs: ClassVar[dict[str, str]] = {"unauthorized": "wrong-signer", "stale": "stale-signature",
                                       "conflict": "already-contributed", "not_found": "not-registered",
                                       "gone": "erased"}


@dataclass(frozen=True)
class VaultMember:
    address: str
    registered: bool = False
    erased: bool = False
    erasure_event_id: str | None = None
    shredded: bool = False

    @property
    def readable(self) -> bool:
        return not self.erased and not self.shredded


@dataclass(frozen=True)
class ContributeRecords:
    member: str
    signer: str
    category: str
    issued_at: datetime
    upload_id: str
    upload_tag: str
    schema_version: int
    records: tuple[SealedRecord, ...]


@dataclass(frozen=True)
class ShredKeys:
    member: str


def authorize(cmd: ContributeRecords, state: VaultMember, *, now: datetime, freshness: timedelta,
              tag_seen: bool) -> None:
    """Raises VaultRefused unless the member signed, is registered and not erased, and the upload is new."""
    if cmd.signer.lower() != cmd.member.lower():
        # A signature over other data than was sent recovers to an address nobody holds: it is no proof that
        # another wallet signed, so say both what it recovers to and the ways that happens.
        raise VaultRefused("unauthorized", f"the signature recovers to {cmd.signer}, which is not member "
                                           f"{cmd.member}: either another wallet signed it, or it was signed over "
                                           "other content or fields (member, category, contentHash = SHA-256 of "
                                           "the content as sent, issuedAt) or another EIP-712 domain (chainId, "
                                           "verifyingContract: GET /eip712) than were sent; sign the "
                                           "ContributeRecords typed data of exactly this upload with the member's "
                                           "key")
    if abs(now - cmd.issued_at) > freshness:
        raise VaultRefused("stale", f"signature issued at {cmd.issued_at:%Y-%m-%dT%H:%M:%SZ} is outside the "
                                    f"{int(freshness.total_seconds())} s window around now; sign again")
    if state.erased or state.shredded:
        raise VaultRefused("gone", f"member {cmd.member} asked to be forgotten; register a new wallet to "
                                   "contribute again")
    if not state.registered:
        raise VaultRefused("not_found", not_registered(cmd.member))
    if tag_seen:
        raise VaultRefused("conflict", "a file with this exact content was already contributed by this member, "
                                       "so nothing new was stored (content is stored once, whatever the "
                                       "category or format); to add records, contribute a file with new ones")


def not_registered(member: str) -> str:
    """Why a member the vault has no registration of is refused. The vault learns of registrations from the
    members topic, a moment after the consent service answers: asked before it has read that far, it waits
    for its reader to pass the log's end first (service.py), so this is said only once it has; a member who
    registered moments ago is still told to retry, not to register again (which is refused as done)."""
    return (f"member {member} is not registered with the vault: the vault has read the members log to its end "
            "and seen no registration of this wallet. If you registered moments ago, retry in a few seconds; "
            "otherwise register with the consent service first: `datacoop member register` (POST /members there)")


def decide(cmd: ContributeRecords | ShredKeys, state: VaultMember, *, now: datetime,
           freshness: timedelta = timedelta(minutes=5), tag_seen: bool = False) -> list[Event]:
    if isinstance(cmd, ShredKeys):
        if not state.erased or state.shredded or state.erasure_event_id is None:
            return []
        return [KeysShredded(member=state.address, shredded_at=now, cause_event_id=state.erasure_event_id)]
    authorize(cmd, state, now=now, freshness=freshness, tag_seen=tag_seen)
    chunks = [cmd.records[i:i + MAX_RECORDS_PER_EVENT] for i in range(0, len(cmd.records), MAX_RECORDS_PER_EVENT)]
    return [RecordsContributed(member=cmd.member, category=cmd.category, upload_id=cmd.upload_id,
                               upload_tag=cmd.upload_tag, schema_version=cmd.schema_version, chunk=i,
                               chunks=len(chunks), records=list(chunk), contributed_at=now)
            for i, chunk in enumerate(chunks)]


def evolve(state: VaultMember, event: Event, event_id: str = "") -> VaultMember:
    """Total: events that do not concern the vault leave the state as it is."""
    if isinstance(event, MemberRegistered):
        return replace(state, registered=True)
    if isinstance(event, ErasureRequested):
        return replace(state, erased=True, erasure_event_id=state.erasure_event_id or event_id)
    if isinstance(event, KeysShredded):
        return replace(state, shredded=True, erased=True,
                       erasure_event_id=state.erasure_event_id or event.cause_event_id)
    return state
