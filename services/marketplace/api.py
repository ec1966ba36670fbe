"""HTTP routes of the marketplace: researchers, the catalog, orders, grants, downloads, DP queries,
receipts, and the members' view of who bought their data."""

from __future__ import annotations

import asyncio
import math
import secrets
import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request, status
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from datacoop.chain import order_id_from_uuid
from datacoop.events.datasets import DatasetVersionPublished
from datacoop.events.orders import MICRO_EPSILON, Offer, ResearcherRegistered
from datacoop.events.registry import Event
from datacoop.events.types import Slug, WalletAddress, to_checksum
from datacoop.keys import public_key_b64
from datacoop.kit.logs import correlation_id
from datacoop.kit.problems import DomainError, Forbidden, NotFound, NotReady, Unauthorized, bearer, secret_sha256
from services.consent import eip712
from services.marketplace import domain
from services.marketplace.engine import LoadedVersion
from services.marketplace.files import FileUnavailable, stream
from services.marketplace.grants import Grant, GrantRefused, sign_document, sign_grant, verify_grant
from services.marketplace.query import Query, QueryInvalid

GRANT_HEADER = "x-access-grant"
MemberPath = Annotated[WalletAddress, Path(description="the member's wallet address")]
MAX_VERSION = 2**31 - 1  # versions are INTEGER in the projections
VersionPath = Annotated[int, Path(ge=1, le=MAX_VERSION, description="the version number")]
ZERO_ADDRESS = "0x" + "0" * 40


def _printable(text: str) -> str:
    """`text` without surrounding spaces; refused when it holds a control character (NUL, newline, tab...)."""
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise ValueError(f"contains the control character {bad!r}; use printable text on one line")
    return text.strip()


def _named(text: str) -> str:
    if not text:
        raise ValueError("is empty or only spaces; give your name")
    return text


def _paying_wallet(address: str) -> str:
    if int(address, 16) == 0:
        raise ValueError(f"{ZERO_ADDRESS} (the zero address) cannot pay orders; give the address of the wallet "
                         "you pay from")
    return to_checksum(address)


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(max_length=200), AfterValidator(_printable), AfterValidator(_named)]
    organisation: Annotated[str, Field(max_length=200), AfterValidator(_printable)] = ""
    wallet: Annotated[WalletAddress, AfterValidator(_paying_wallet)] = Field(
        description="the address that pays for orders (stored EIP-55 checksummed)")


class OrderBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: Slug
    version: int = Field(strict=True, ge=1, le=MAX_VERSION, description="the version number (a whole number)")
    offer: Offer


class RevokeBody(BaseModel):
    reason: str = Field("", max_length=500)


class GrantBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: float | None = Field(None, strict=True, ge=1, allow_inf_nan=False,
                                description="seconds the grant lives, at least 1 (at most the service's limit); "
                                            "its expiry is rounded up to the whole second it signs")


def order_view(o: domain.Order, version_superseded: bool = False,
               short_payments: list[dict[str, Any]] | None = None, not_sold: str | None = None,
               offer_note: str | None = None) -> dict[str, Any]:
    """An order as its researcher sees it. A refused payment (`refund-due`) says why and what to do; a
    payment short of the price (the contract takes one payment per order, so it can't be topped up) says
    so; an unpaid order whose version left the sale, or whose offer the version no longer sells
    (`not_sold`: why, e.g. compute on a version too small for any analysis, ordered before that was
    refused), says not to pay it (`note`: `datacoop buy` refuses to pay an order with one). What the offer
    gives less of than expected (`offer_note`, e.g. group-by cells on a small version) is told apart, as
    `offer_note`, since it does not stop a payment. A `refunded` order (the operator sent its payment back
    on chain) says when, how much, to whom and in which tx, and its refused payments are no longer
    `refund_due`. The order's events and status stay as they were."""
    refunded = o.status == "refunded"
    refund = {"refunded_at": o.refunded_at, "refund_tx_hash": o.refund_tx_hash} if refunded else {}
    view: dict[str, Any] = {
        "order_id": o.order_id, "chain_order_id": "0x" + order_id_from_uuid(uuid.UUID(o.order_id)).hex(),
        "researcher_id": o.researcher_id, "buyer": o.buyer, "dataset_id": o.dataset_id, "version": o.version,
        "offer": o.offer, "price_units": o.price_units, "status": o.status, "placed_at": o.placed_at,
        "expires_at": o.expires_at, "paid_at": o.paid_at, "paid_units": o.paid_units, "tx_hash": o.tx_hash,
        "grants": o.grants, "refunded_at": o.refunded_at, "refunded_units": o.refunded_units,
        "refunded_to": o.refunded_to, "refund_tx_hash": o.refund_tx_hash,
        "refused_payments": [{"payment_event_id": p.payment_event_id, "amount_units": p.amount_units,
                              "tx_hash": p.tx_hash, "reason": p.reason, "detail": p.detail,
                              "refused_at": p.refused_at, "refund_due": not refunded, **refund}
                             for p in o.refused_payments]}
    if short_payments and o.status != "paid":
        view["short_payments"] = short_payments
    if refunded:
        view["note"] = domain.refund_note(o)
    elif o.refused_payments and o.status != "paid":
        view["note"] = o.refused_payments[-1].detail
    elif short_payments and o.status != "paid":
        p = short_payments[-1]
        view["note"] = (f"a payment of {p['amount_units']} units (tx {p['tx_hash']}) arrived for order {o.order_id}, "
                        f"short of its price {o.price_units}: the order is not paid, and the market contract takes "
                        "one payment per order, so it cannot be topped up; ask the operator to refund it and place "
                        f"a new order (`datacoop order {o.dataset_id}:{o.offer}`)")
    elif o.status == "placed" and version_superseded:
        view["note"] = (f"{o.dataset_id} v{o.version} was superseded (no longer on sale): do not pay order "
                        f"{o.order_id}, a payment now would be refused and refunded; order the current version "
                        f"(`datacoop order {o.dataset_id}:{o.offer}`, see `datacoop catalog`)")
    elif o.status == "placed" and not_sold:
        view["note"] = (f"do not pay order {o.order_id}: {o.dataset_id} v{o.version}: {not_sold} (the order was "
                        "placed before that was refused, and what it buys would be of no use); order what the "
                        "version sells, or another version (see `datacoop catalog`)")
    if o.status == "paid" and not_sold:
        offer_note = (f"{o.dataset_id} v{o.version}: {not_sold}; this order was paid before such orders were "
                      "refused: ask the operator about it")
    if offer_note:
        view["offer_note"] = offer_note
    if o.offer == "query":
        view["budget"] = {"epsilon": (o.budget_micro or 0) / MICRO_EPSILON, "spent": o.spent_micro / MICRO_EPSILON,
                          "remaining": o.remaining_micro / MICRO_EPSILON, "queries": o.queries}
    return view


def version_view(v: DatasetVersionPublished, superseded: bool, offers: list[dict[str, Any]],
                 group_by: list[str], not_sold: dict[str, str] | None = None) -> dict[str, Any]:
    """A catalog entry; `not_sold`: each offer the version does not sell, and why (only while it is on sale)."""
    return {"dataset_id": v.dataset_id, "version": v.version, "status": "superseded" if superseded else "current",
            "purpose": v.purpose, "categories": v.categories, "columns": v.columns, "rows": v.rows,
            "published_at": v.published_at, "sha256": v.sha256, "contributors": len(v.contributor_weights),
            "guarantees": {"k": v.k, "l_diversity": v.l_diversity, "privacy_model": v.privacy_model,
                           "epsilon": v.epsilon, "suppressed_rows": v.suppressed_rows,
                           "information_loss": v.information_loss},
            "offers": [] if superseded else offers, "query_group_by": group_by,
            "not_sold": {} if superseded else dict(not_sold or {})}


def _not_sold(offers: Any) -> dict[str, str]:
    """Why each offer a version does not sell is not sold (VersionOffers.unavailable)."""
    return {offer: why for offer in ("download", "query", "compute") if (why := offers.unavailable(offer))}


async def current_researcher(request: Request, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    """The researcher whose API key is in `Authorization: Bearer <key>`; 401 otherwise."""
    api_key = bearer(authorization, "API key", " (register with POST /researchers)")
    found = request.app.state.runtime.projection.researcher_by_key_hash(secret_sha256(api_key))
    if found is None:
        raise Unauthorized("unknown API key; register with `datacoop researcher register` (POST /researchers) "
                           "to get one", slug="bad-api-key")
    return dict(found)


Researcher = Annotated[dict[str, Any], Depends(current_researcher)]


def build_router(ctx: Any) -> APIRouter:
    """`ctx` is the service's runtime (projection, writer, engine, files, offers, keys, clock)."""
    router = APIRouter()

    def ready() -> None:
        if not ctx.ready:
            raise NotReady("the marketplace is still catching up with the log; retry in a moment")

    def own_order(order_id: str, who: dict[str, Any]) -> domain.Order:
        order: domain.Order | None = ctx.projection.order(order_id)
        if order is None or order.researcher_id != who["researcher_id"]:
            raise NotFound(f"you have no order {order_id}; list yours with `datacoop orders` (GET /orders)",
                           slug="unknown-order")
        return order

    def view(o: domain.Order) -> dict[str, Any]:
        found = ctx.projection.version(o.dataset_id, o.version) if o.status in ("placed", "paid") else None
        short = ctx.projection.short_payments(o.order_id) if o.status != "paid" else None
        not_sold = offer_note = None
        if found is not None:
            offers = ctx.version_offers(found[0])
            not_sold, offer_note = offers.unavailable(o.offer), offers.notes().get(o.offer)
        return order_view(o, o.status == "placed" and found is not None and found[1], short, not_sold, offer_note)

    def published(dataset_id: str, version: int) -> DatasetVersionPublished:
        found = ctx.projection.version(dataset_id, version)
        if found is None:
            raise NotFound(f"no published version {dataset_id} v{version}; see `datacoop catalog` (GET /catalog)")
        return found[0]  # type: ignore[no-any-return]

    async def run(subject: str, decide: Any) -> list[Any]:
        ready()
        return list(await ctx.writer.execute(subject, decide, correlation_id=correlation_id.get()))

    # -- researchers ------------------------------------------------------------------------
    @router.post("/researchers", status_code=status.HTTP_201_CREATED, tags=["researchers"])
    async def register(body: RegisterBody) -> dict[str, Any]:
        """Open a researcher account. The API key is in this answer only: it is stored as a hash."""
        api_key = "dcr_" + secrets.token_urlsafe(32)
        rid = str(uuid.uuid4())
        ev = ResearcherRegistered(researcher_id=rid, name=body.name, organisation=body.organisation,
                                  wallet=body.wallet, api_key_sha256=secret_sha256(api_key), registered_at=ctx.clock())
        await run(rid, lambda: [ev])
        return {"researcher_id": rid, "name": body.name, "organisation": body.organisation, "wallet": body.wallet,
                "api_key": api_key, "note": "the API key is shown once; keep it secret"}

    @router.get("/researchers/me", tags=["researchers"])
    async def me(who: Researcher) -> dict[str, Any]:
        return who

    # -- catalog ----------------------------------------------------------------------------
    @router.get("/catalog", tags=["catalog"])
    async def catalog() -> dict[str, Any]:
        """Every published dataset version, its guarantees and offers, and where orders are paid."""
        return {"payment": ctx.payment_info(),
                "versions": [version_view(v, s, (offers := ctx.version_offers(v)).as_list(),
                                          ctx.projection.groupable(v.dataset_id, v.version), _not_sold(offers))
                             for v, s in ctx.projection.versions()]}

    @router.get("/catalog/{dataset_id}/{version}", tags=["catalog"])
    async def catalog_entry(dataset_id: str, version: VersionPath) -> dict[str, Any]:
        v = published(dataset_id, version)
        superseded = ctx.projection.version(dataset_id, version)[1]
        offers = ctx.version_offers(v)
        return version_view(v, superseded, offers.as_list(), ctx.projection.groupable(dataset_id, version),
                            _not_sold(offers))

    @router.get("/grant-key", tags=["catalog"])
    async def grant_key() -> dict[str, str]:
        """The Ed25519 public key (base64, raw 32 bytes) that signs grants and receipts."""
        return {"algorithm": "Ed25519", "public_key": public_key_b64(ctx.grant_key)}

    # -- orders -----------------------------------------------------------------------------
    @router.post("/orders", status_code=status.HTTP_201_CREATED, tags=["orders"])
    async def place(body: OrderBody, who: Researcher) -> dict[str, Any]:
        """Order an offer on a version at the offers file's price; pay it on chain before it expires. An
        offer the version doesn't sell (e.g. compute on a version with fewer rows than any analysis may rest
        on) is refused (422 `offer-unavailable`, saying why and what to order instead) before anything is
        written; one that gives less than expected answers with an `offer_note` saying so."""
        found = ctx.projection.version(body.dataset_id, body.version)
        terms = ctx.version_offers(found[0]) if found else ctx.offers.for_version(body.dataset_id, body.version, None)
        order_id = str(uuid.uuid4())
        cmd = domain.PlaceOrder(who["researcher_id"], who["wallet"], body.offer, terms.terms(body.offer).price_units,
                                terms.order_ttl_s, terms.budget_micro() if body.offer == "query" else None, order_id)

        def decide() -> list[Event]:
            return domain.place(cmd, ctx.projection.version_info(body.dataset_id, body.version), body.dataset_id,
                                body.version, ctx.clock())

        await run(order_id, decide)
        return {**view(ctx.projection.order(order_id)), "payment": ctx.payment_info()}

    @router.get("/orders", tags=["orders"])
    async def my_orders(who: Researcher) -> list[dict[str, Any]]:
        """Your order history."""
        return [view(o) for o in ctx.projection.orders_of(who["researcher_id"])]

    @router.get("/orders/{order_id}", tags=["orders"])
    async def get_order(order_id: str, who: Researcher) -> dict[str, Any]:
        order = own_order(order_id, who)
        return {**view(order), "grants_issued": ctx.projection.grants_of(order_id),
                "queries": ctx.projection.spends_of(order_id)}

    @router.get("/orders/{order_id}/receipt", tags=["orders"])
    async def receipt(order_id: str, who: Researcher) -> dict[str, Any]:
        """A signed receipt of a paid order: what was bought, the payment, the version's guarantees."""
        order = own_order(order_id, who)
        if order.status != "paid":
            why = domain.refund_note(order) if order.status == "refunded" else \
                order.refused_payments[-1].detail if order.refused_payments else \
                f"order {order_id} is {order.status}; a receipt exists once it is paid"
            raise DomainError(why, status=402, slug="payment-required")
        v = published(order.dataset_id, order.version)
        doc = {"schema": "datacoop-order-receipt/1", "order_id": order.order_id, "researcher": who["name"],
               "organisation": who["organisation"], "buyer": order.buyer, "offer": order.offer,
               "dataset_id": order.dataset_id, "version": order.version, "sha256": v.sha256,
               "purpose": v.purpose, "price_units": order.price_units, "paid_units": order.paid_units,
               "tx_hash": order.tx_hash, "paid_at": order.paid_at.isoformat() if order.paid_at else None,
               "guarantees": {"k": v.k, "l_diversity": v.l_diversity, "epsilon": v.epsilon},
               "issued_at": ctx.clock().isoformat()}
        if order.offer == "query":
            doc["budget_epsilon"] = (order.budget_micro or 0) / MICRO_EPSILON
            doc["spent_epsilon"] = order.spent_micro / MICRO_EPSILON
        return sign_document(doc, ctx.grant_key)

    # -- downloads --------------------------------------------------------------------------
    @router.post("/orders/{order_id}/grants", status_code=status.HTTP_201_CREATED, tags=["downloads"])
    async def grant(order_id: str, who: Researcher, body: GrantBody | None = None) -> dict[str, Any]:
        """A signed, expiring grant that opens the download of the order's version (for you only)."""
        order = own_order(order_id, who)
        ttl = min((body.ttl_s if body and body.ttl_s else ctx.settings.grant_ttl_s), ctx.settings.grant_ttl_s)
        grant_id = str(uuid.uuid4())
        cmd = domain.GrantAccess(order_id, who["researcher_id"], order.dataset_id, order.version, ttl, grant_id)
        deliveries = await run(order_id, lambda: domain.decide(cmd, ctx.projection.order(order_id), ctx.clock()))
        ev = deliveries[0].event
        expires = math.ceil(ev.expires_at.timestamp())  # whole seconds already (domain.decide): exactly it
        token = sign_grant(Grant(grant_id, order_id, who["researcher_id"], order.dataset_id, order.version,
                                 expires), ctx.grant_key)
        return {"grant": token, "grant_id": grant_id, "expires_at": datetime.fromtimestamp(expires, UTC),
                "download": f"/datasets/{order.dataset_id}/versions/{order.version}/parquet",
                "header": "X-Access-Grant"}

    @router.post("/orders/{order_id}/grants/{grant_id}/revoke", tags=["downloads"])
    async def revoke_grant(order_id: str, grant_id: str, who: Researcher,
                           body: RevokeBody | None = None) -> dict[str, Any]:
        """Revoke a grant before it expires (a leaked link, say): it opens nothing from then on."""
        own_order(order_id, who)
        cmd = domain.RevokeGrant(order_id, who["researcher_id"], grant_id, body.reason if body else "")
        await run(order_id, lambda: domain.decide(cmd, ctx.projection.order(order_id), ctx.clock()))
        return {"order_id": order_id, "grant_id": grant_id, "revoked": True}

    @router.get("/datasets/{dataset_id}/versions/{version}/parquet", tags=["downloads"])
    async def download(dataset_id: str, version: VersionPath, who: Researcher,
                       x_access_grant: Annotated[str | None, Header()] = None) -> StreamingResponse:
        """The version's rows as Parquet, streamed; needs your grant for this version (X-Access-Grant)."""
        if not x_access_grant:
            raise Forbidden("no grant: send X-Access-Grant (POST /orders/{order_id}/grants on a paid download "
                            "order gives one)", slug="no-grant")
        try:
            g = verify_grant(x_access_grant, ctx.grant_key.public_key(), researcher_id=who["researcher_id"],
                             dataset_id=dataset_id, version=version, now=ctx.clock())
        except GrantRefused as exc:
            raise Forbidden(str(exc), slug="grant-refused") from exc
        order = ctx.projection.order(g.order_id)
        if order is None or order.status != "paid" or order.researcher_id != who["researcher_id"]:
            raise Forbidden(f"grant {g.grant_id}'s order {g.order_id} is not a paid order of yours",
                            slug="grant-refused")
        if g.grant_id in order.revoked_grants:
            raise Forbidden(f"grant {g.grant_id} was revoked; ask a new one with POST /orders/{g.order_id}/grants",
                            slug="grant-refused")
        v = published(dataset_id, version)
        try:
            path = await asyncio.to_thread(ctx.files.verified, v.location, v.sha256)
        except FileUnavailable as exc:
            raise DomainError(str(exc), status=503, slug="file-unavailable") from exc
        return StreamingResponse(stream(path), media_type="application/vnd.apache.parquet", headers={
            "content-length": str(path.stat().st_size), "x-sha256": v.sha256,
            "content-disposition": f'attachment; filename="{dataset_id}-v{version}.parquet"'})

    # -- queries ----------------------------------------------------------------------------
    @router.post("/orders/{order_id}/queries", tags=["queries"])
    async def ask(order_id: str, query: Query, who: Researcher) -> dict[str, Any]:
        """A differentially private aggregate; spends `epsilon` from the order's budget (refused before it
        runs when the budget can't cover it)."""
        ready()
        order = own_order(order_id, who)
        cmd = domain.SpendBudget(order_id, who["researcher_id"], str(uuid.uuid4()), query.aggregate, query.column,
                                 tuple(query.group_by), len(query.filters), query.epsilon_micro)
        domain.decide(cmd, order, ctx.clock())  # refuse before anything runs
        v = published(order.dataset_id, order.version)
        try:
            loaded: LoadedVersion = await ctx.load_version(v)
            delta = ctx.settings.query_delta * query.epsilon_micro / (order.budget_micro or query.epsilon_micro)
            answer = await asyncio.to_thread(ctx.engine.answer, loaded, query, ctx.new_rng(), delta)
        except QueryInvalid as exc:
            raise DomainError(str(exc), status=422, slug="invalid-query") from exc
        except FileUnavailable as exc:
            raise DomainError(str(exc), status=503, slug="file-unavailable") from exc
        await run(order_id, lambda: domain.decide(cmd, ctx.projection.order(order_id), ctx.clock()))
        after = ctx.projection.order(order_id)
        return {"query_id": cmd.query_id, "order_id": order_id, "aggregate": query.aggregate,
                "column": query.column, "group_by": query.group_by, "epsilon": query.epsilon_micro / MICRO_EPSILON,
                "budget_remaining": after.remaining_micro / MICRO_EPSILON, "noise": answer.noise_view(),
                "cells": answer.cells}

    # -- members and operators --------------------------------------------------------------
    @router.get("/eip712", tags=["members"])
    async def get_eip712() -> dict[str, Any]:
        """The EIP-712 domain a member signs the ReadMemberData of `GET /members/{member}/orders` with."""
        return {"domain": ctx.eip712_domain.as_dict(),
                "types": {"ReadMemberData": [{"name": f, "type": t} for f, t in eip712.TYPES["ReadMemberData"]]}}

    @router.get("/members/{member}/orders", tags=["members"])
    async def member_orders(member: MemberPath, auth: eip712.ReadAuth = None) -> list[dict[str, Any]]:
        """Paid orders of dataset versions that hold the member's records, with how many of them: to the
        member alone (a fresh ReadMemberData signature, as the consent service's reads), since it tells
        which datasets hold a wallet's records and how many rows (what links a pseudonym to a wallet)."""
        eip712.require_read(ctx.eip712_domain, member, auth)
        ready()  # while catching up, a list of the orders read so far would look complete
        return ctx.projection.member_orders(member)  # type: ignore[no-any-return]

    @router.get("/payments/unmatched", tags=["orders"])
    async def unmatched() -> list[dict[str, Any]]:
        """Payments confirmed on chain that paid no order: unknown order ids, amounts short of the price, and
        payments refused because the order had expired or its version was superseded (`refund_due`). A payment
        the operator refunded on chain stays listed with `refunded: true`, `refunded_at` and `refund_tx_hash`,
        and `refund_due: false`: nothing is owed on it any more."""
        return ctx.projection.unmatched_payments()  # type: ignore[no-any-return]

    return router


def now_utc() -> datetime:
    return datetime.now(UTC)
