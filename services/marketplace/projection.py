"""How marketplace events (and the versions and payments it reads) land in DuckDB, and the queries
the API, the sweeper and the payment reactor need.

Grants and spends are plain appends (no key): the store drops an event id it has applied, so each
lands once. Orders: one row per order with its state as JSON (evolved by domain.evolve, the single definition of
what each event means) plus the columns queries filter on. Versions keep their published event whole;
their contributors get a table of their own so "which orders used my records" is one join. Dataset
definitions and build starts are kept so that each published version records, when it lands, the
columns its queries may group by (from the definition the build used: query.groupable_columns).
Refunds (settlement's PaymentRefunded, from the contract's OrderRefunded log) turn the order `refunded`
and are kept by order id (the contract takes one payment per order id, so one refund each), so that a
refunded payment is no longer decided, short, or owed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, NamedTuple

import duckdb
from pydantic import TypeAdapter

from datacoop.bus.consumer import Delivery
from datacoop.events.datasets import (
    DatasetDefined,
    DatasetVersionPublished,
    DatasetVersionSuperseded,
    VersionBuildStarted,
)
from datacoop.events.orders import (
    AccessGranted,
    AccessRevoked,
    OrderExpired,
    OrderPaid,
    OrderPlaced,
    PaymentRefused,
    QueryAnswered,
    ResearcherRegistered,
)
from datacoop.events.payouts import PaymentConfirmed, PaymentRefunded
from services.marketplace.domain import Order, VersionInfo, evolve, refunded
from services.marketplace.query import groupable_columns

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS researchers (
    researcher_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, organisation VARCHAR NOT NULL,
    wallet VARCHAR NOT NULL, api_key_sha256 VARCHAR NOT NULL UNIQUE, registered_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_id VARCHAR PRIMARY KEY, state JSON NOT NULL, researcher_id VARCHAR NOT NULL, status VARCHAR NOT NULL,
    dataset_id VARCHAR NOT NULL, version INTEGER NOT NULL, price_units BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    dataset_id VARCHAR NOT NULL, version INTEGER NOT NULL, published JSON NOT NULL,
    superseded BOOLEAN NOT NULL DEFAULT false, PRIMARY KEY (dataset_id, version));
CREATE TABLE IF NOT EXISTS contributors (
    dataset_id VARCHAR NOT NULL, version INTEGER NOT NULL, member VARCHAR NOT NULL, records BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, version, member));
CREATE TABLE IF NOT EXISTS definitions (
    dataset_id VARCHAR NOT NULL, definition_version INTEGER NOT NULL, definition JSON NOT NULL,
    PRIMARY KEY (dataset_id, definition_version));
CREATE TABLE IF NOT EXISTS builds_started (
    build_id VARCHAR PRIMARY KEY, dataset_id VARCHAR NOT NULL, definition_version INTEGER NOT NULL,
    started_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS version_group_by (
    dataset_id VARCHAR NOT NULL, version INTEGER NOT NULL, columns VARCHAR[] NOT NULL,
    PRIMARY KEY (dataset_id, version));
CREATE TABLE IF NOT EXISTS version_row_bound (  -- the definition's privacy.max_rows_per_member (default 1)
    dataset_id VARCHAR NOT NULL, version INTEGER NOT NULL, max_rows_per_member INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, version));
CREATE TABLE IF NOT EXISTS payments (  -- paid_at: the block's timestamp (NULL in confirmations written without it)
    payment_event_id VARCHAR PRIMARY KEY, order_id VARCHAR NOT NULL,
    amount_units HUGEINT NOT NULL,  -- the contract takes up to 2^120 - 1 a payment, past BIGINT
    tx_hash VARCHAR NOT NULL, confirmed_at TIMESTAMPTZ NOT NULL, paid_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS refused_payments (
    payment_event_id VARCHAR PRIMARY KEY, order_id VARCHAR NOT NULL, reason VARCHAR NOT NULL, detail VARCHAR NOT NULL,
    refused_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS refunds (  -- PaymentRefunded: the order's payment went back to `buyer`
    order_id VARCHAR PRIMARY KEY, amount_units HUGEINT NOT NULL, buyer VARCHAR NOT NULL, tx_hash VARCHAR NOT NULL,
    refunded_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS grants (
    grant_id VARCHAR NOT NULL, order_id VARCHAR NOT NULL, granted_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL, revoked_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS spends (
    order_id VARCHAR NOT NULL, query_id VARCHAR NOT NULL, epsilon_micro BIGINT NOT NULL,
    spent_micro BIGINT NOT NULL, aggregate VARCHAR NOT NULL, answered_at TIMESTAMPTZ NOT NULL);
"""

class PendingPayment(NamedTuple):
    """A confirmed payment the reactor has yet to decide; `paid_at` is the timestamp of its block (None for
    a PaymentConfirmed written before settlement recorded it)."""

    payment_event_id: str
    order_id: str
    amount_units: int
    tx_hash: str
    paid_at: datetime | None


_ORDER = TypeAdapter(Order)
_ORDER_EVENTS = (OrderPlaced, OrderPaid, OrderExpired, PaymentRefused, PaymentRefunded, AccessGranted, AccessRevoked,
                 QueryAnswered)
_VERSION = TypeAdapter(DatasetVersionPublished)


class MarketProjection:
    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn

    # -- applying ---------------------------------------------------------------------------
    def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
        order_ids = list(dict.fromkeys(d.event.order_id for d in deliveries
                                       if isinstance(d.event, _ORDER_EVENTS)))
        states: dict[str, Order | None] = dict(self._load(tx, order_ids))
        existing = {oid for oid, o in states.items() if o is not None}
        touched: set[str] = set()
        for d in deliveries:
            ev = d.event
            if isinstance(ev, _ORDER_EVENTS):
                states[ev.order_id] = evolve(states.get(ev.order_id), ev)
                touched.add(ev.order_id)
                self._side_tables(tx, ev)
            elif isinstance(ev, ResearcherRegistered):
                tx.execute("INSERT OR IGNORE INTO researchers VALUES (?, ?, ?, ?, ?, ?)",
                           [ev.researcher_id, ev.name, ev.organisation, ev.wallet, ev.api_key_sha256,
                            ev.registered_at])
            elif isinstance(ev, DatasetDefined):
                tx.execute("INSERT OR IGNORE INTO definitions VALUES (?, ?, ?)",
                           [ev.dataset_id, ev.definition_version, json.dumps(ev.definition)])
            elif isinstance(ev, VersionBuildStarted):
                tx.execute("INSERT OR IGNORE INTO builds_started VALUES (?, ?, ?, ?)",
                           [ev.build_id, ev.dataset_id, ev.definition_version, ev.started_at])
            elif isinstance(ev, DatasetVersionPublished):
                tx.execute("INSERT OR IGNORE INTO versions (dataset_id, version, published) VALUES (?, ?, ?)",
                           [ev.dataset_id, ev.version, ev.model_dump_json()])
                self._record_group_by(tx, ev)
                if ev.contributor_weights:
                    tx.execute("""INSERT OR IGNORE INTO contributors SELECT ?, ?, unnest(?::VARCHAR[]),
                                  unnest(?::BIGINT[])""",
                               [ev.dataset_id, ev.version, [a.lower() for a in ev.contributor_weights],
                                list(ev.contributor_weights.values())])
            elif isinstance(ev, DatasetVersionSuperseded):
                tx.execute("UPDATE versions SET superseded = true WHERE dataset_id = ? AND version = ?",
                           [ev.dataset_id, ev.version])
            elif isinstance(ev, PaymentConfirmed):
                tx.execute("INSERT OR IGNORE INTO payments VALUES (?, ?, ?, ?, ?, ?)",
                           [d.envelope.id, ev.order_id, ev.amount_units, ev.tx_hash, ev.confirmed_at, ev.paid_at])
        self._refunds_read_first(tx, states, touched)
        for oid in touched:
            o = states[oid]
            if o is None:
                continue
            if oid in existing:  # an UPDATE leaves the key's index alone (a REPLACE deletes and re-inserts)
                tx.execute("UPDATE orders SET state = ?, status = ? WHERE order_id = ?",
                           [_ORDER.dump_json(o).decode(), o.status, oid])
            else:
                tx.execute("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [o.order_id, _ORDER.dump_json(o).decode(), o.researcher_id, o.status, o.dataset_id,
                            o.version, o.price_units, o.expires_at])

    @staticmethod
    def _refunds_read_first(tx: duckdb.DuckDBPyConnection, states: dict[str, Order | None], touched: set[str]) -> None:
        """Apply the refunds already recorded to the touched orders not refunded yet: a PaymentRefunded
        (datacoop.payouts) may be read before its order's OrderPlaced (datacoop.orders), in a rebuild above all,
        when evolve had no order to apply it to."""
        open_ids = [oid for oid in touched if (o := states.get(oid)) is not None and o.status != "refunded"]
        if not open_ids:
            return
        rows = tx.execute("SELECT order_id, refunded_at, amount_units, buyer, tx_hash FROM refunds "
                          "WHERE order_id IN (SELECT unnest(?::VARCHAR[]))", [open_ids]).fetchall()
        for oid, at, units, to, tx_hash in rows:
            order = states[oid]
            assert order is not None
            states[oid] = refunded(order, at.astimezone(UTC), int(units), to, tx_hash)

    @staticmethod
    def _record_group_by(tx: duckdb.DuckDBPyConnection, ev: DatasetVersionPublished) -> None:
        """The version's group-by columns from the definition its build used (the latest build started for
        the dataset, which precedes the version on the dataset's partition), else the latest definition.
        No definition known: nothing recorded, and the version refuses every group-by."""
        row = tx.execute(
            """SELECT definition FROM definitions WHERE dataset_id = $1 AND definition_version = coalesce(
                   (SELECT definition_version FROM builds_started WHERE dataset_id = $1
                    ORDER BY started_at DESC LIMIT 1),
                   (SELECT max(definition_version) FROM definitions WHERE dataset_id = $1))""",
            [ev.dataset_id]).fetchone()
        if row is not None:
            definition = json.loads(row[0])
            tx.execute("INSERT OR IGNORE INTO version_group_by VALUES (?, ?, ?)",
                       [ev.dataset_id, ev.version, groupable_columns(definition, ev.columns)])
            bound = (definition.get("privacy") or {}).get("max_rows_per_member", 1)
            if isinstance(bound, int) and bound >= 1:
                tx.execute("INSERT OR IGNORE INTO version_row_bound VALUES (?, ?, ?)",
                           [ev.dataset_id, ev.version, bound])

    @staticmethod
    def _side_tables(tx: duckdb.DuckDBPyConnection, ev: Any) -> None:
        if isinstance(ev, AccessGranted):
            tx.execute("INSERT INTO grants VALUES (?, ?, ?, ?, NULL)",
                       [ev.grant_id, ev.order_id, ev.granted_at, ev.expires_at])
        elif isinstance(ev, AccessRevoked):
            tx.execute("UPDATE grants SET revoked_at = ? WHERE grant_id = ?", [ev.revoked_at, ev.grant_id])
        elif isinstance(ev, PaymentRefused):
            tx.execute("INSERT OR IGNORE INTO refused_payments VALUES (?, ?, ?, ?, ?)",
                       [ev.payment_event_id, ev.order_id, ev.reason, ev.detail, ev.refused_at])
        elif isinstance(ev, PaymentRefunded):
            tx.execute("INSERT OR IGNORE INTO refunds VALUES (?, ?, ?, ?, ?)",
                       [ev.order_id, ev.amount_units, ev.buyer, ev.tx_hash, ev.refunded_at])
        elif isinstance(ev, QueryAnswered):
            tx.execute("INSERT INTO spends VALUES (?, ?, ?, ?, ?, ?)",
                       [ev.order_id, ev.query_id, ev.epsilon_micro, ev.spent_micro, ev.aggregate, ev.answered_at])

    @staticmethod
    def _load(conn: duckdb.DuckDBPyConnection, order_ids: list[str]) -> dict[str, Order]:
        if not order_ids:
            return {}
        rows = conn.execute("SELECT order_id, state FROM orders WHERE order_id IN (SELECT unnest(?::VARCHAR[]))",
                            [order_ids]).fetchall()
        return {oid: _ORDER.validate_json(s) for oid, s in rows}

    # -- reading ----------------------------------------------------------------------------
    def order(self, order_id: str) -> Order | None:
        return self._load(self.conn, [order_id]).get(order_id)

    def orders_of(self, researcher_id: str) -> list[Order]:
        rows = self.conn.execute("SELECT state FROM orders WHERE researcher_id = ? ORDER BY expires_at",
                                 [researcher_id]).fetchall()
        return [_ORDER.validate_json(r[0]) for r in rows]

    def researcher_by_key_hash(self, key_hash: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT researcher_id, name, organisation, wallet, registered_at FROM researchers "
                                "WHERE api_key_sha256 = ?", [key_hash]).fetchone()
        if row is None:
            return None
        return dict(zip(("researcher_id", "name", "organisation", "wallet", "registered_at"), row, strict=True))

    def version(self, dataset_id: str, version: int) -> tuple[DatasetVersionPublished, bool] | None:
        row = self.conn.execute("SELECT published, superseded FROM versions WHERE dataset_id = ? AND version = ?",
                                [dataset_id, version]).fetchone()
        return (_VERSION.validate_json(row[0]), bool(row[1])) if row else None

    def version_info(self, dataset_id: str, version: int) -> VersionInfo | None:
        found = self.version(dataset_id, version)
        return VersionInfo(dataset_id, version, found[1]) if found else None

    def groupable(self, dataset_id: str, version: int) -> list[str]:
        """The columns queries on this version may group by (empty when its definition is unknown)."""
        row = self.conn.execute("SELECT columns FROM version_group_by WHERE dataset_id = ? AND version = ?",
                                [dataset_id, version]).fetchone()
        return list(row[0]) if row else []

    def row_bound(self, dataset_id: str, version: int) -> int | None:
        """The most rows one member may have in this version (its definition's bound); None when unknown."""
        row = self.conn.execute("SELECT max_rows_per_member FROM version_row_bound WHERE dataset_id = ? AND "
                                "version = ?", [dataset_id, version]).fetchone()
        return int(row[0]) if row else None

    def versions(self) -> list[tuple[DatasetVersionPublished, bool]]:
        rows = self.conn.execute("SELECT published, superseded FROM versions ORDER BY dataset_id, version").fetchall()
        return [(_VERSION.validate_json(p), bool(s)) for p, s in rows]

    def due_for_expiry(self, now: datetime, limit: int = 1000) -> list[str]:
        rows = self.conn.execute("SELECT order_id FROM orders WHERE status = 'placed' AND expires_at <= ? "
                                 "ORDER BY expires_at LIMIT ?", [now, limit]).fetchall()
        return [r[0] for r in rows]

    def payments_to_apply(self, limit: int = 1000) -> list[PendingPayment]:
        """Payments covering an order not yet paid, and not yet refused nor refunded: the reactor decides each
        once (OrderPaid or PaymentRefused)."""
        rows = self.conn.execute(
            """SELECT p.payment_event_id, p.order_id, p.amount_units, p.tx_hash, p.paid_at FROM payments p
               JOIN orders o USING (order_id)
               WHERE o.status NOT IN ('paid', 'refunded') AND p.amount_units >= o.price_units
                 AND p.order_id NOT IN (SELECT order_id FROM refunds)
                 AND p.payment_event_id NOT IN (SELECT payment_event_id FROM refused_payments)
               ORDER BY p.confirmed_at LIMIT ?""", [limit]).fetchall()
        return [PendingPayment(r[0], r[1], int(r[2]), r[3], r[4].astimezone(UTC) if r[4] is not None else None)
                for r in rows]

    def unmatched_payments(self) -> list[dict[str, Any]]:
        """Payments confirmed on chain that paid no order: for no order we know, short of the order's
        price, or refused (the order had expired or its version was superseded: to be refunded). One the
        operator refunded stays listed, with `refunded: true` and the refund's time and tx, and is no longer
        `refund_due` (a refunded paid order is listed too: its payment paid nothing in the end)."""
        rows = self.conn.execute(
            """SELECT p.order_id, p.amount_units, p.tx_hash, o.price_units, r.reason, r.detail, f.refunded_at,
                      f.tx_hash FROM payments p
               LEFT JOIN orders o USING (order_id)
               LEFT JOIN refused_payments r USING (payment_event_id)
               LEFT JOIN refunds f ON f.order_id = p.order_id
               WHERE o.order_id IS NULL OR r.payment_event_id IS NOT NULL OR f.order_id IS NOT NULL
                  OR (o.status <> 'paid' AND p.amount_units < o.price_units)
               ORDER BY p.confirmed_at""").fetchall()
        out = []
        for order_id, amount, tx_hash, price, refused, detail, refunded_at, refund_tx in rows:
            reason = refused or ("unknown order" if price is None else
                                 "refunded" if int(amount) >= int(price) else
                                 f"short of the price {int(price)}")
            refund = {"refunded_at": refunded_at.astimezone(UTC), "refund_tx_hash": refund_tx} if refund_tx else {}
            out.append({"order_id": order_id, "amount_units": int(amount), "tx_hash": tx_hash, "reason": reason,
                        "refund_due": refused is not None and not refund_tx, "refunded": bool(refund_tx), **refund,
                        **({"detail": detail} if detail else {})})
        return out

    def short_payments(self, order_id: str) -> list[dict[str, Any]]:
        """Payments confirmed for `order_id` short of its price and not refused, while it is unpaid and not
        refunded: the researcher's money arrived but paid nothing (see unmatched_payments)."""
        rows = self.conn.execute(
            """SELECT p.amount_units, p.tx_hash, p.confirmed_at FROM payments p JOIN orders o USING (order_id)
               WHERE p.order_id = ? AND o.status NOT IN ('paid', 'refunded') AND p.amount_units < o.price_units
                 AND p.payment_event_id NOT IN (SELECT payment_event_id FROM refused_payments)
               ORDER BY p.confirmed_at""", [order_id]).fetchall()
        return [{"amount_units": int(a), "tx_hash": t, "confirmed_at": c, "reason": "short of the price"}
                for a, t, c in rows]

    def grants_of(self, order_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT grant_id, granted_at, expires_at, revoked_at FROM grants WHERE order_id = ? "
                                 "ORDER BY granted_at", [order_id]).fetchall()
        return [{"grant_id": g, "granted_at": a, "expires_at": e, "revoked_at": r} for g, a, e, r in rows]

    def spends_of(self, order_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT query_id, aggregate, epsilon_micro, spent_micro, answered_at FROM spends "
                                 "WHERE order_id = ? ORDER BY spent_micro", [order_id]).fetchall()
        return [{"query_id": q, "aggregate": a, "epsilon": e / 1e6, "spent_epsilon": s / 1e6, "answered_at": t}
                for q, a, e, s, t in rows]

    def member_orders(self, member: str) -> list[dict[str, Any]]:
        """Paid orders of versions the member has records in."""
        rows = self.conn.execute(
            """SELECT o.state, c.records, r.name, r.organisation FROM contributors c
               JOIN orders o ON o.dataset_id = c.dataset_id AND o.version = c.version
               LEFT JOIN researchers r ON r.researcher_id = o.researcher_id
               WHERE c.member = ? AND o.status = 'paid' ORDER BY o.expires_at""", [member.lower()]).fetchall()
        out = []
        for state, records, name, org in rows:
            o = _ORDER.validate_json(state)
            out.append({"order_id": o.order_id, "dataset_id": o.dataset_id, "version": o.version,
                        "offer": o.offer, "price_units": o.price_units, "paid_at": o.paid_at,
                        "your_records": int(records), "researcher": {"name": name, "organisation": org}})
        return out
