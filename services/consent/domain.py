"""Members and their consents: the rules, pure (decide / evolve), no I/O.

A member is a wallet address. Every command carries the address recovered from its EIP-712
signature (`signer`) and the member's nonce; `decide` refuses a command whose signer is not the
member, whose nonce is not the next one, or that the member's state does not allow.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import ClassVar, Literal

from datacoop.errors import Refused
from datacoop.events.members import (
    ConsentExpired,
    ConsentGranted,
    ConsentRevoked,
    ErasureRequested,
    MemberRegistered,
)
from datacoop.events.registry import Event
from services.consent.catalog import Catalog

ConsentStatus = Literal["active", "revoked", "expired"]

CONSENT_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
CONSENT_ID_MAX = 64
CONSENT_ID_RULE = f"1 to {CONSENT_ID_MAX} of the characters A-Z a-z 0-9 . _ : -"

LATEST_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
"""The latest expiry a consent may have: its unix seconds (GrantConsent's expiresAt) must name a time
a datetime can hold once converted to UTC."""


def expiry_problem(expires_at: datetime, now: datetime | None = None, none: str = "none") -> str | None:
    """Why `expires_at` (timezone-aware) cannot be a consent's expiry, or None: after LATEST_EXPIRY in
    UTC, before 1970 (expiresAt is unsigned unix seconds), or at or before `now` when given. The reason
    starts with "is"; the caller names the field or option and the value given before it; `none` says how to
    ask for no expiry."""
    seconds = expires_at.timestamp()
    if seconds >= LATEST_EXPIRY.timestamp() + 1:
        return (f"is after the latest expiry allowed, {LATEST_EXPIRY:%Y-%m-%dT%H:%M:%SZ} (in UTC); choose an "
                f"earlier time, or {none} for a consent that does not expire")
    if seconds < 0 or (now is not None and expires_at <= now):
        return f"is in the past; choose a later time, or {none} for no expiry"
    return None


class ConsentRefused(Refused):
    """A command the consent rules refuse; a wrong signer is `wrong-signer` in the problem type."""

    slugs: ClassVar[dict[str, str]] = {"unauthorized": "wrong-signer"}


class AlreadyRecorded(ConsentRefused):
    """A retried command whose very signature the member's state already holds (its first try landed
    although the caller heard no answer, e.g. a 503): 409 `already-recorded`, nothing is written again.
    Not a 2xx with the consent: the body alone (no fresh read signature) does not let anyone read it."""

    slugs: ClassVar[dict[str, str]] = {"conflict": "already-recorded"}


@dataclass(frozen=True)
class HistoryEntry:
    state: str
    at: datetime
    reason: str = ""


@dataclass(frozen=True)
class Consent:
    consent_id: str
    purpose: str
    categories: tuple[str, ...]
    granted_at: datetime
    expires_at: datetime | None
    catalog_version: int
    signature: str
    nonce: int
    status: ConsentStatus = "active"
    history: tuple[HistoryEntry, ...] = ()
    revoke_signature: str | None = None  # the member's RevokeConsent, to know a retried revoke again


@dataclass(frozen=True)
class Member:
    address: str
    registered: bool = False
    registered_at: datetime | None = None
    last_nonce: int = -1
    erased_at: datetime | None = None
    consents: dict[str, Consent] = field(default_factory=dict)

    @property
    def next_nonce(self) -> int:
        return self.last_nonce + 1


# -- commands ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signed:
    member: str
    signer: str
    nonce: int
    signature: str


@dataclass(frozen=True)
class RegisterMember(Signed):
    pass


@dataclass(frozen=True)
class GrantConsent(Signed):
    consent_id: str = ""
    purpose: str = ""
    categories: tuple[str, ...] = ()
    expires_at: datetime | None = None


@dataclass(frozen=True)
class RevokeConsent(Signed):
    consent_id: str = ""


@dataclass(frozen=True)
class RequestErasure(Signed):
    pass


@dataclass(frozen=True)
class ExpireDue:
    member: str
    now: datetime


Command = RegisterMember | GrantConsent | RevokeConsent | RequestErasure | ExpireDue


def _wrong_signer(cmd: Signed) -> ConsentRefused:
    return ConsentRefused(
        "unauthorized",
        f"the signature recovers to {cmd.signer}, which is not the member {cmd.member}: either another wallet "
        "signed it, or it was signed over other fields or another EIP-712 domain than were sent (GET /eip712 "
        "gives the domain and types); sign exactly the fields you send with the member's key")


def _check_signed(state: Member, cmd: Signed, *, must_exist: bool = True) -> None:
    if cmd.signer.lower() != cmd.member.lower():
        raise _wrong_signer(cmd)
    if must_exist and not state.registered:
        raise ConsentRefused("not_found", f"member {cmd.member} is not registered; register first: "
                                          "`datacoop member register` (POST /members)")
    if state.erased_at is not None:
        raise ConsentRefused("gone", f"member {cmd.member} asked to be forgotten on {state.erased_at:%Y-%m-%d}; "
                                     "register a new wallet to take part again")
    if cmd.nonce <= state.last_nonce:
        _refuse_if_recorded(state, cmd)
        raise ConsentRefused("conflict", f"nonce {cmd.nonce} was already used (a replayed signature?); "
                                         f"sign again with nonce {state.next_nonce}")
    if cmd.nonce != state.next_nonce:
        raise ConsentRefused("conflict", f"nonce {cmd.nonce} skips ahead; the next nonce is {state.next_nonce}")


def _refuse_if_recorded(state: Member, cmd: Signed) -> None:
    """AlreadyRecorded when `cmd` (whose nonce is used) is the very signed command the state holds: a retry.
    The signature recovered to the member over the fields sent, so an equal signature means equal fields."""
    where = f"see it with `datacoop consent list` (GET /members/{cmd.member}/consents)"
    if isinstance(cmd, GrantConsent):
        consent = state.consents.get(cmd.consent_id)
        if consent is not None and consent.nonce == cmd.nonce and consent.signature == cmd.signature:
            raise AlreadyRecorded("conflict", f"already recorded as consent {cmd.consent_id} (this exact signed "
                                              f"grant, nonce {cmd.nonce}); nothing to do: {where}",
                                  consent_id=cmd.consent_id)
    if isinstance(cmd, RevokeConsent):
        consent = state.consents.get(cmd.consent_id)
        if consent is not None and consent.revoke_signature == cmd.signature:
            raise AlreadyRecorded("conflict", f"already recorded: consent {cmd.consent_id} was revoked by this "
                                              f"exact signed revoke (nonce {cmd.nonce}); nothing to do: {where}",
                                  consent_id=cmd.consent_id)


def overlapping(state: Member, consent_id: str, now: datetime) -> list[Consent]:
    """The member's other consents in effect now for the same purpose that name any of the same categories:
    after a revoke, what still lets datasets of that purpose use those records; after a grant, what it repeats."""
    this = state.consents.get(consent_id)
    if this is None:
        return []
    return [c for c in state.consents.values()
            if c.consent_id != consent_id and c.purpose == this.purpose and effective_status(c, now) == "active"
            and set(c.categories) & set(this.categories)]


def decide(cmd: Command, state: Member, catalog: Catalog, now: datetime) -> list[Event]:
    """The events `cmd` causes in `state`, or ConsentRefused saying why not."""
    if isinstance(cmd, ExpireDue):  # expired when its expiry passed, not when the sweep got to it
        return [ConsentExpired(member=state.address, consent_id=c.consent_id, expired_at=c.expires_at)
                for c in state.consents.values()
                if c.status == "active" and c.expires_at is not None and c.expires_at <= cmd.now]
    if isinstance(cmd, RegisterMember):
        if state.registered:
            if cmd.signer.lower() != cmd.member.lower():
                raise _wrong_signer(cmd)
            if state.erased_at is not None:
                raise ConsentRefused("gone", f"member {cmd.member} asked to be forgotten on "
                                             f"{state.erased_at:%Y-%m-%d}; register a new wallet to take part again")
            raise ConsentRefused("conflict", f"member {cmd.member} is already registered")
        _check_signed(state, cmd, must_exist=False)
        return [MemberRegistered(member=cmd.member, registered_at=now, nonce=cmd.nonce, signature=cmd.signature)]
    _check_signed(state, cmd)
    if isinstance(cmd, GrantConsent):
        problem = catalog.unknown_purpose(cmd.purpose) or catalog.unknown_categories(list(cmd.categories))
        if problem:
            raise ConsentRefused("unprocessable", problem)
        if not cmd.categories:
            raise ConsentRefused("unprocessable", "a consent needs at least one data category")
        twice = [c for c, n in Counter(cmd.categories).items() if n > 1]
        if twice:
            raise ConsentRefused("unprocessable", f"categories name {', '.join(map(repr, twice))} more than once; "
                                                  "name each category once (and sign that list)")
        if cmd.expires_at is not None:
            problem = expiry_problem(cmd.expires_at, now)
            if problem:
                raise ConsentRefused("unprocessable", f"expires_at {cmd.expires_at.isoformat()} {problem}")
        existing = state.consents.get(cmd.consent_id)
        if existing is not None:
            status = effective_status(existing, now)
            what = (f"{existing.purpose} on {', '.join(existing.categories)}, granted "
                    f"{existing.granted_at.isoformat()}" + ("" if status == "active" else f", now {status}"))
            if status == "active" and (existing.purpose, existing.categories, existing.expires_at) == (
                    cmd.purpose, tuple(cmd.categories), cmd.expires_at):
                # the member re-signed the same grant under its id (a retry with a fresh nonce): recorded once
                raise AlreadyRecorded("conflict", f"already recorded as consent {cmd.consent_id} ({what}, with "
                                                  "this purpose, categories and expiry); nothing to do",
                                      consent_id=cmd.consent_id)
            raise ConsentRefused("conflict", f"consent {cmd.consent_id} already exists ({what}); use a new "
                                             "consent id")
        # The categories stay in the order signed: EIP-712 hashes a string[] in order, so the signature the
        # event and the receipt carry verifies against the list they show. Readers that mean a set (overlaps,
        # the anonymizer's eligibility) compare them as one.
        return [ConsentGranted(member=cmd.member, consent_id=cmd.consent_id, purpose=cmd.purpose,
                               categories=list(cmd.categories), granted_at=now, expires_at=cmd.expires_at,
                               catalog_version=catalog.version, nonce=cmd.nonce, signature=cmd.signature)]
    if isinstance(cmd, RevokeConsent):
        consent = state.consents.get(cmd.consent_id)
        if consent is None:
            raise ConsentRefused("not_found", f"member {cmd.member} has no consent {cmd.consent_id}; list them with "
                                 f"`datacoop consent list` (GET /members/{cmd.member}/consents)")
        status = effective_status(consent, now)  # expired before the sweeper marked it: still expired
        if status == "expired" and consent.expires_at is not None:
            raise ConsentRefused("conflict", f"consent {cmd.consent_id} expired at {consent.expires_at.isoformat()}; "
                                             "nothing to revoke")
        if status != "active":
            raise ConsentRefused("conflict", f"consent {cmd.consent_id} is {status}, not active; "
                                             "nothing to revoke")
        return [ConsentRevoked(member=cmd.member, consent_id=cmd.consent_id, revoked_at=now, nonce=cmd.nonce,
                               signature=cmd.signature)]
    if isinstance(cmd, RequestErasure):
        return [ErasureRequested(member=cmd.member, requested_at=now, nonce=cmd.nonce, signature=cmd.signature)]
    raise TypeError(f"unknown command {cmd!r}")


def evolve(state: Member, event: Event) -> Member:
    """The member after `event`. Total: an event that doesn't apply leaves the state as it is."""
    if isinstance(event, MemberRegistered):
        return replace(state, registered=True, registered_at=event.registered_at,
                       last_nonce=max(state.last_nonce, event.nonce))
    if isinstance(event, ConsentGranted):  # the commonest event: built directly, replace() costs as much again
        consent = Consent(event.consent_id, event.purpose, tuple(event.categories), event.granted_at,
                          event.expires_at, event.catalog_version, event.signature, event.nonce,
                          history=(HistoryEntry("active", event.granted_at, "granted"),))
        return Member(address=state.address, registered=state.registered, registered_at=state.registered_at,
                      last_nonce=max(state.last_nonce, event.nonce), erased_at=state.erased_at,
                      consents={**state.consents, event.consent_id: consent})
    if isinstance(event, ConsentRevoked):
        state = replace(state, last_nonce=max(state.last_nonce, event.nonce))
        before = state.consents.get(event.consent_id)
        if before is None or before.status != "active":
            return state
        state = _set_status(state, event.consent_id, "revoked", event.revoked_at, "revoked by the member")
        revoked = replace(state.consents[event.consent_id], revoke_signature=event.signature)
        return replace(state, consents={**state.consents, event.consent_id: revoked})
    if isinstance(event, ConsentExpired):
        return _set_status(state, event.consent_id, "expired", event.expired_at, "expiry reached")
    if isinstance(event, ErasureRequested):
        state = replace(state, last_nonce=max(state.last_nonce, event.nonce), erased_at=event.requested_at)
        for cid, c in list(state.consents.items()):
            if effective_status(c, event.requested_at) == "expired":  # expired first, the sweeper not yet there
                state = _set_status(state, cid, "expired", c.expires_at or event.requested_at, "expiry reached")
            elif c.status == "active":
                state = _set_status(state, cid, "revoked", event.requested_at, "erasure requested")
        return state
    return state


def _set_status(state: Member, consent_id: str, status: ConsentStatus, at: datetime, reason: str) -> Member:
    consent = state.consents.get(consent_id)
    if consent is None or consent.status != "active":
        return state
    updated = replace(consent, status=status, history=(*consent.history, HistoryEntry(status, at, reason)))
    return replace(state, consents={**state.consents, consent_id: updated})


def effective_status(consent: Consent, now: datetime) -> ConsentStatus:
    """`expired` as soon as the expiry has passed, even before the sweeper's event lands."""
    if consent.status == "active" and consent.expires_at is not None and consent.expires_at <= now:
        return "expired"
    return consent.status
