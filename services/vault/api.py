"""HTTP routes of the vault: contribute (member-signed), summaries, category schemas, internal decrypt."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from datacoop.events.types import HexSignature, WalletAddress
from datacoop.kit.problems import DomainError, NotFound, NotReady, Unauthorized, domain_error_handler, require_bearer
from services.consent import eip712
from services.vault.categories import UploadRefused
from services.vault.domain import not_registered

MemberPath = Annotated[WalletAddress, Path(description="the member's wallet address")]
ReadAuth = eip712.ReadAuth
# Any short name: the route refuses an unknown one with the list of the categories (a pattern would answer
# "Fitness" with a regex instead), as the consent service does.
CategoryName = Annotated[str, Field(min_length=1, max_length=64)]
RETRY_AFTER_S = 2


class CatchingUp(NotReady):
    """503 `not-ready` with a Retry-After header: the vault cannot answer yet (it has not read the log as far
    as the request needs), and a retry in a few seconds will be answered."""

    def __init__(self, detail: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(detail, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


async def catching_up_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CatchingUp)
    response = await domain_error_handler(request, exc)
    response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def unknown_category(category: str, known: Any) -> DomainError:
    names = sorted(known)
    near = [n for n in names if n == category.strip().lower()]
    return DomainError(f"unknown category {category!r}" + (f" (categories are lower case: {near[0]!r})" if near else "")
                       + f"; categories: {', '.join(names)}", status=422, slug="unknown-category")


class ContributeBody(BaseModel):
    category: CategoryName
    format: Literal["jsonl", "csv"] = "jsonl"
    content: str = Field(min_length=1, description="the file as text; its SHA-256 (UTF-8) is the signed contentHash")
    issued_at: int = Field(ge=0, le=4_102_444_800, description="unix seconds, as signed in issuedAt")
    signature: HexSignature


RECORD_ID_MAX = 128  # a record id is an upload's UUID and a row number (43 characters)


class DecryptBody(BaseModel):
    category: CategoryName | None = None
    members: list[WalletAddress] | None = Field(None, max_length=10_000)
    record_ids: list[Annotated[str, Field(max_length=RECORD_ID_MAX)]] | None = Field(None, max_length=10_000)
    after: str = Field("", max_length=RECORD_ID_MAX, description="cursor: the next_after of the previous page")
    limit: int = Field(1000, ge=1, le=10_000)


def content_hash(content: str) -> bytes:
    return hashlib.sha256(content.encode()).digest()


def build_router(svc: Any, domain_sep: eip712.Domain) -> APIRouter:
    """`svc` is the VaultService (projection, key store, contribute, decrypt)."""
    router = APIRouter()

    def ready() -> None:
        if not svc.ready:
            raise CatchingUp("the vault is still catching up with the log; retry in a few seconds")

    @router.get("/categories", tags=["categories"])
    async def categories() -> dict[str, Any]:
        """Every category's schema: fields, types, ranges, version."""
        return {name: s.describe() for name, s in svc.schemas.items()}

    @router.get("/eip712", tags=["categories"])
    async def get_eip712() -> dict[str, Any]:
        """The EIP-712 domain, the ContributeRecords type a wallet signs an upload with and the ReadMemberData
        type it signs a read of its own uploads with."""
        return {"domain": domain_sep.as_dict(),
                "types": {name: [{"name": f, "type": t} for f, t in eip712.TYPES[name]]
                          for name in ("ContributeRecords", "ReadMemberData")}}

    @router.post("/members/{member}/records", status_code=status.HTTP_201_CREATED, tags=["records"])
    async def contribute(member: MemberPath, body: ContributeBody) -> dict[str, Any]:
        """Contribute records of a category (ContributeRecords signed by the member). All rows or none."""
        ready()
        if body.category not in svc.schemas:
            raise unknown_category(body.category, svc.schemas)
        member = eip712.to_checksum(member)
        digest = content_hash(body.content)
        message = {"member": member, "category": body.category, "contentHash": digest, "issuedAt": body.issued_at}
        try:
            signer = eip712.recover(eip712.digest(domain_sep, "ContributeRecords", message), body.signature)
        except eip712.SignatureInvalid as exc:
            raise Unauthorized(f"bad signature: {exc}; sign the ContributeRecords typed data with your wallet",
                               slug="bad-signature") from exc
        except ValueError as exc:  # a field (or the domain) out of what its EIP-712 type holds
            raise DomainError(f"cannot hash ContributeRecords: {exc}", status=422, slug="invalid-request") from exc
        try:
            return dict(await svc.contribute(member=member, signer=signer, category=body.category, fmt=body.format,
                                        content=body.content, issued_at=body.issued_at, content_hash=digest))
        except UploadRefused as exc:
            raise DomainError(exc.message, status=422, slug="invalid-records", error_count=exc.error_count,
                              errors=[{"row": e.row, "field": e.field, "message": e.message}
                                      for e in exc.errors]) from exc

    @router.get("/members/{member}/records", tags=["records"])
    async def summary(member: MemberPath, auth: ReadAuth = None) -> dict[str, Any]:
        """The member's uploads: category, schema version, how many records (no contents); to the member
        alone (a fresh ReadMemberData signature in the X-Member-Auth header)."""
        member = eip712.to_checksum(member)
        eip712.require_read(domain_sep, member, auth)
        if not svc.ready:  # what is read so far may lack uploads, the erasure or the shredding: no partial answer
            raise CatchingUp(f"the vault is still catching up with the event log and may not have read all of "
                             f"member {member}'s uploads and erasure yet; retry in a few seconds")
        state = await svc.settled_member(member)  # 503 while a fresh registration may be in the log not read yet
        if not state.registered:
            raise NotFound(not_registered(member))
        return {"member": state.address, "erased": state.erased, "keys_shredded": state.shredded,
                "uploads": svc.projection.summary(state.address)}

    @router.post("/internal/decrypt", tags=["internal"])
    async def decrypt(body: DecryptBody, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Plaintext records for other services (bearer service token). Paged by `after`/`next_after`.

        Asking by `members`: any erased member -> 410 naming them. Otherwise records of erased members
        are left out and listed in `refused_members`; shredded members have no records left at all."""
        require_bearer(authorization, svc.service_token, what="a service token",
                       setting="DATACOOP_VAULT_SERVICE_TOKEN", slug="bad-service-token")
        ready()
        if body.category is not None and body.category not in svc.schemas:
            raise unknown_category(body.category, svc.schemas)
        return dict(svc.decrypt(category=body.category,
                                members=(None if body.members is None  # [] asks for nobody's, not everyone's
                                         else [eip712.to_checksum(m) for m in body.members]),
                                record_ids=body.record_ids, after=body.after, limit=body.limit))

    return router
