"""HTTP routes of the consent service: parse, verify the EIP-712 signature, run a command, map errors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, Field

from datacoop.events.types import HexSignature, WalletAddress
from datacoop.keys import public_key_b64
from datacoop.kit.logs import correlation_id
from datacoop.kit.problems import DomainError, NotFound, NotReady, Unauthorized
from services.consent import domain, eip712
from services.consent.catalog import Catalog
from services.consent.receipts import build_receipt, sign_receipt

MemberPath = Annotated[WalletAddress, Path(description="the member's wallet address")]
ReadAuth = eip712.ReadAuth


class SignedBody(BaseModel):
    nonce: int = Field(ge=0, description="the member's next nonce (GET /members/{member} tells it)")
    signature: HexSignature


class RegisterBody(SignedBody):
    member: WalletAddress


CatalogName = Annotated[str, Field(min_length=1, max_length=64)]


class GrantBody(SignedBody):
    consent_id: str = Field(min_length=1, max_length=domain.CONSENT_ID_MAX, pattern=domain.CONSENT_ID_PATTERN)
    # Any short name: the catalog refuses an unknown one with the list of valid ones (a pattern would
    # answer "AI-Training" with a regex instead).
    purpose: CatalogName
    categories: list[CatalogName] = Field(min_length=1, max_length=32, description=(
        "each category once, in the order signed (EIP-712 hashes the list in order)"))
    expires_at: datetime | None = Field(None, description=(
        f"with a timezone; signed as unix seconds (0 = no expiry); at the latest "
        f"{domain.LATEST_EXPIRY:%Y-%m-%dT%H:%M:%SZ}"))


def expires_unix(expires_at: datetime | None) -> int:
    """GrantConsent's expiresAt: unix seconds, 0 for none; 422 naming expires_at when it has no timezone or
    is out of what the unsigned seconds (from 1970) and a UTC datetime (to year 9999) can hold."""
    if expires_at is None:
        return 0
    if expires_at.tzinfo is None:
        raise DomainError("expires_at must carry a timezone (use UTC, e.g. 2027-01-01T00:00:00Z)", status=422,
                          slug="invalid-request")
    problem = domain.expiry_problem(expires_at)  # the past after 1970 is the domain's to refuse, with its clock
    if problem:
        raise DomainError(f"expires_at {expires_at.isoformat()} {problem}", status=422, slug="invalid-request")
    return int(expires_at.timestamp())


def consent_view(c: domain.Consent, now: datetime) -> dict[str, Any]:
    return {"consent_id": c.consent_id, "purpose": c.purpose, "categories": list(c.categories),
            "granted_at": c.granted_at, "expires_at": c.expires_at, "state": domain.effective_status(c, now),
            "catalog_version": c.catalog_version,
            "history": [{"state": h.state, "at": h.at, "reason": h.reason} for h in c.history]}


def _brief(c: domain.Consent) -> dict[str, Any]:
    return {"consent_id": c.consent_id, "purpose": c.purpose, "categories": list(c.categories)}


def member_view(m: domain.Member, now: datetime) -> dict[str, Any]:
    return {"member": m.address, "registered": m.registered, "registered_at": m.registered_at,
            "erased": m.erased_at is not None, "next_nonce": m.next_nonce,
            "consents": [consent_view(c, now) for c in m.consents.values()]}


def build_router(ctx: Any, catalog: Catalog, domain_sep: eip712.Domain, clock: Callable[[], datetime]) -> APIRouter:
    """`ctx` is the service's runtime (projection, writer, receipt key)."""
    router = APIRouter(tags=["members"])

    def signer_of(primary_type: str, message: dict[str, Any], signature: str) -> str:
        try:
            return eip712.recover(eip712.digest(domain_sep, primary_type, message), signature)
        except eip712.SignatureInvalid as exc:
            raise Unauthorized(f"bad signature: {exc}; sign the {primary_type} typed data with your wallet",
                               slug="bad-signature") from exc
        except ValueError as exc:
            raise DomainError(f"cannot hash {primary_type}: {exc}", status=422, slug="invalid-request") from exc

    async def run(cmd: domain.Command, member: str) -> None:
        if not ctx.ready:
            raise NotReady("the consent service is still catching up with the log; retry in a moment")
        now = clock()

        def decide() -> list[Any]:
            return domain.decide(cmd, ctx.projection.get(member), catalog, now)

        await ctx.writer.execute(member, decide, correlation_id=correlation_id.get())

    def own(member: str, auth: str | None) -> domain.Member:
        """The member, to that member alone (a fresh ReadMemberData signature in READ_HEADER)."""
        eip712.require_read(domain_sep, member, auth)
        return existing(member)

    def existing(member: str) -> domain.Member:
        """The member as the whole log read so far says. Not while catching up (after a start, or a rebuild
        of the projection): what is read so far may lack the registration, a revoke or the erasure, and a
        receipt signed from it would attest a state the member has left, so 503 `not-ready` until caught up."""
        if not ctx.ready:
            raise NotReady(f"the consent service is still catching up with the event log and may not have read "
                           f"all of member {member}'s actions yet; retry in a moment")
        m: domain.Member = ctx.projection.get(eip712.to_checksum(member))
        if not m.registered:
            raise NotFound(f"member {member} is not registered; register first: `datacoop member register` "
                           "(POST /members)")
        return m

    @router.get("/catalog", tags=["catalog"])
    async def get_catalog() -> dict[str, Any]:
        """Purposes and data categories a consent may name, with the catalog version."""
        return {"version": catalog.version, "purposes": catalog.purposes, "categories": catalog.categories}

    @router.get("/eip712", tags=["catalog"])
    async def get_eip712() -> dict[str, Any]:
        """The EIP-712 domain and message types a wallet signs member actions with."""
        return {"domain": domain_sep.as_dict(),
                "types": {n: [{"name": f, "type": t} for f, t in fs] for n, fs in eip712.TYPES.items()}}

    @router.get("/receipt-key", tags=["receipts"])
    async def receipt_key() -> dict[str, str]:
        """The cooperative's Ed25519 public key (base64, raw 32 bytes) that signs consent receipts."""
        return {"algorithm": "Ed25519", "public_key": public_key_b64(ctx.receipt_key)}

    @router.post("/members", status_code=status.HTTP_201_CREATED)
    async def register(body: RegisterBody) -> dict[str, Any]:
        """Register a wallet as a member (RegisterMember signed by that wallet, nonce 0)."""
        member = eip712.to_checksum(body.member)
        signer = signer_of("RegisterMember", {"member": member, "nonce": body.nonce}, body.signature)
        await run(domain.RegisterMember(member, signer, body.nonce, body.signature), member)
        return member_view(ctx.projection.get(member), clock())

    @router.get("/members/{member}")
    async def get_member(member: MemberPath, auth: ReadAuth = None) -> dict[str, Any]:
        """A member's state: registration, next nonce, every consent with its state and history (to the
        member alone: READ_HEADER)."""
        return member_view(own(member, auth), clock())

    @router.get("/members/{member}/consents")
    async def list_consents(member: MemberPath, auth: ReadAuth = None) -> list[dict[str, Any]]:
        """Every consent of the member with its state: active, revoked or expired (to the member alone)."""
        now = clock()
        return [consent_view(c, now) for c in own(member, auth).consents.values()]

    @router.post("/members/{member}/consents", status_code=status.HTTP_201_CREATED)
    async def grant(member: MemberPath, body: GrantBody) -> dict[str, Any]:
        """Grant consent for a purpose and data categories (GrantConsent signed by the member). `overlaps` lists
        the member's other active consents for the same purpose that name any of the same categories."""
        member = eip712.to_checksum(member)
        message = {"member": member, "consentId": body.consent_id, "purpose": body.purpose,
                   "categories": body.categories, "expiresAt": expires_unix(body.expires_at), "nonce": body.nonce}
        signer = signer_of("GrantConsent", message, body.signature)
        expires = datetime.fromtimestamp(cast(int, message["expiresAt"]), UTC) if body.expires_at else None
        await run(domain.GrantConsent(member, signer, body.nonce, body.signature, body.consent_id, body.purpose,
                                      tuple(body.categories), expires), member)
        m, now = ctx.projection.get(member), clock()
        return {**consent_view(m.consents[body.consent_id], now),
                "overlaps": [_brief(c) for c in domain.overlapping(m, body.consent_id, now)]}

    @router.post("/members/{member}/consents/{consent_id}/revoke")
    async def revoke(member: MemberPath, consent_id: str, body: SignedBody) -> dict[str, Any]:
        """Withdraw a consent (RevokeConsent signed by the member). Only an active consent can be revoked.
        `still_covered_by` lists the member's other active consents for the same purpose that name any of the
        same categories: while one is active, datasets of that purpose may still use those records."""
        member = eip712.to_checksum(member)
        message = {"member": member, "consentId": consent_id, "nonce": body.nonce}
        signer = signer_of("RevokeConsent", message, body.signature)
        await run(domain.RevokeConsent(member, signer, body.nonce, body.signature, consent_id), member)
        m, now = ctx.projection.get(member), clock()
        return {**consent_view(m.consents[consent_id], now),
                "still_covered_by": [_brief(c) for c in domain.overlapping(m, consent_id, now)]}

    @router.get("/members/{member}/consents/{consent_id}/receipt", tags=["receipts"])
    async def receipt(member: MemberPath, consent_id: str, auth: ReadAuth = None) -> dict[str, Any]:
        """The consent receipt (ISO/IEC TS 27560 fields), signed with the cooperative's Ed25519 key (to the
        member alone)."""
        m = own(member, auth)
        consent = m.consents.get(consent_id)
        if consent is None:
            raise NotFound(f"member {m.address} has no consent {consent_id}; list them with `datacoop consent "
                           f"list` (GET /members/{m.address}/consents)")
        return sign_receipt(build_receipt(m, consent, catalog, clock(), domain_sep), ctx.receipt_key)

    @router.post("/members/{member}/erasure", status_code=status.HTTP_202_ACCEPTED)
    async def erasure(member: MemberPath, body: SignedBody, request: Request) -> dict[str, Any]:
        """Ask to be forgotten (RequestErasure signed by the member): consents end, the vault shreds the keys."""
        member = eip712.to_checksum(member)
        signer = signer_of("RequestErasure", {"member": member, "nonce": body.nonce}, body.signature)
        await run(domain.RequestErasure(member, signer, body.nonce, body.signature), member)
        return member_view(ctx.projection.get(member), clock())

    return router
