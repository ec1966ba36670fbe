"""How settlement's inputs and its own events land in DuckDB, and the queries the loops and API need.

Inputs: DatasetVersionPublished (contributor weights), OrderPlaced (dataset, version, price), and the
settlement's own payouts events read back from the log (so deleting the file rebuilds everything).
Balances are derived from allocation events only, each credited once (the allocation row's primary
key guards it on top of the consumer's dropping of applied ids). A payment the marketplace refused, or
one short of its order's price, is held for a refund and never allocated. A refunded payment
(PaymentRefunded) is never allocated and no longer waits; one allocated before its refund keeps its
allocation (reversing it is not implemented: the epoch's refund check refuses to post over it).

The chain cursor (next block to read) lives here too; it only moves after the events its blocks
produced were appended, and re-reading blocks is harmless (decisions check `payment_confirmed`).
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from datacoop.bus.consumer import Delivery
from datacoop.events.datasets import DatasetVersionPublished
from datacoop.events.jobs import JobCompleted
from datacoop.events.orders import OrderPaid, OrderPlaced, PaymentRefused
from datacoop.events.payouts import (
    EpochPosted,
    EpochPrepared,
    JobFeeAllocated,
    PaymentConfirmed,
    PaymentFlagged,
    PaymentRefunded,
    RevenueAllocated,
)
from services.settlement import domain

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS versions (
    dataset_id VARCHAR NOT NULL, version INTEGER NOT NULL, weights JSON NOT NULL,
    PRIMARY KEY (dataset_id, version));
CREATE TABLE IF NOT EXISTS orders (
    order_id VARCHAR PRIMARY KEY, dataset_id VARCHAR NOT NULL, version INTEGER NOT NULL,
    price_units HUGEINT NOT NULL, buyer VARCHAR NOT NULL, offer VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS jobs_due (
    job_id VARCHAR PRIMARY KEY, order_id VARCHAR NOT NULL, provider VARCHAR NOT NULL, fee_units HUGEINT NOT NULL);
CREATE TABLE IF NOT EXISTS compute_reserves (
    order_id VARCHAR PRIMARY KEY, reserved_units HUGEINT NOT NULL, spent_units HUGEINT NOT NULL);
CREATE TABLE IF NOT EXISTS payments (
    order_id VARCHAR PRIMARY KEY, buyer VARCHAR NOT NULL, amount_units HUGEINT NOT NULL,
    tx_hash VARCHAR NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL,
    allocatable BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS refunds (  -- OrderRefunded logs: the payment went back to its buyer
    order_id VARCHAR PRIMARY KEY, buyer VARCHAR NOT NULL, amount_units HUGEINT NOT NULL, tx_hash VARCHAR NOT NULL,
    block_number BIGINT NOT NULL, refunded_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (  -- the marketplace's call on a payment that covers the price
    order_id VARCHAR PRIMARY KEY, paid BOOLEAN NOT NULL, reason VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS flags (
    order_id VARCHAR NOT NULL, reason VARCHAR NOT NULL, detail VARCHAR NOT NULL,
    PRIMARY KEY (order_id, reason));
CREATE TABLE IF NOT EXISTS allocations (
    subject VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, event JSON NOT NULL);
CREATE TABLE IF NOT EXISTS balances (account VARCHAR PRIMARY KEY, cumulative_units HUGEINT NOT NULL);
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY, root VARCHAR NOT NULL, total_units HUGEINT NOT NULL, accounts INTEGER NOT NULL,
    leaves JSON NOT NULL, prepared_at TIMESTAMPTZ NOT NULL, posted BOOLEAN NOT NULL,
    tx_hash VARCHAR, block_number BIGINT, posted_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS chain_cursor (id INTEGER PRIMARY KEY, next_block BIGINT NOT NULL);
"""


class SettlementProjection:
    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn

    # -- writing ----------------------------------------------------------------------------
    def apply(self, tx: duckdb.DuckDBPyConnection, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            self._apply_one(tx, d.event)

    def _apply_one(self, tx: duckdb.DuckDBPyConnection, ev: Any) -> None:
        if isinstance(ev, DatasetVersionPublished):
            tx.execute("INSERT OR IGNORE INTO versions VALUES (?, ?, ?)",
                       [ev.dataset_id, ev.version, json.dumps(ev.contributor_weights)])
        elif isinstance(ev, OrderPlaced):
            tx.execute("INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, ?, ?)",
                       [ev.order_id, ev.dataset_id, ev.version, ev.price_units, ev.buyer, ev.offer])
        elif isinstance(ev, OrderPaid):
            tx.execute("INSERT OR IGNORE INTO decisions VALUES (?, true, NULL, NULL)", [ev.order_id])
        elif isinstance(ev, PaymentRefused):
            tx.execute("INSERT OR IGNORE INTO decisions VALUES (?, false, ?, ?)", [ev.order_id, ev.reason, ev.detail])
        elif isinstance(ev, JobCompleted):
            if ev.fee_units > 0:
                tx.execute("INSERT OR IGNORE INTO jobs_due VALUES (?, ?, ?, ?)",
                           [ev.job_id, ev.order_id, ev.provider, ev.fee_units])
        elif isinstance(ev, PaymentConfirmed):
            _, is_uuid = domain.order_subject(bytes.fromhex(ev.chain_order_id[2:]))
            tx.execute("INSERT OR IGNORE INTO payments VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [ev.order_id, ev.buyer, ev.amount_units, ev.tx_hash, ev.block_number, ev.log_index, is_uuid])
        elif isinstance(ev, PaymentRefunded):
            tx.execute("INSERT OR IGNORE INTO refunds VALUES (?, ?, ?, ?, ?, ?)",
                       [ev.order_id, ev.buyer, ev.amount_units, ev.tx_hash, ev.block_number, ev.refunded_at])
        elif isinstance(ev, PaymentFlagged):
            tx.execute("INSERT OR IGNORE INTO flags VALUES (?, ?, ?)", [ev.order_id, ev.reason, ev.detail])
        elif isinstance(ev, RevenueAllocated | JobFeeAllocated):
            subject, kind = (ev.order_id, "order") if isinstance(ev, RevenueAllocated) else (ev.job_id, "job")
            if tx.execute("SELECT 1 FROM allocations WHERE subject = ?", [subject]).fetchone():
                return
            tx.execute("INSERT INTO allocations VALUES (?, ?, ?)", [subject, kind, ev.model_dump_json()])
            if isinstance(ev, RevenueAllocated) and ev.compute_reserve_units:
                tx.execute("INSERT OR IGNORE INTO compute_reserves VALUES (?, ?, 0)",
                           [ev.order_id, ev.compute_reserve_units])
            if isinstance(ev, JobFeeAllocated) and ev.order_id:
                tx.execute("UPDATE compute_reserves SET spent_units = spent_units + ? WHERE order_id = ?",
                           [ev.fee_units, ev.order_id])
            for account, units in domain.credits(ev).items():
                tx.execute("""INSERT INTO balances VALUES (?, ?) ON CONFLICT (account)
                              DO UPDATE SET cumulative_units = balances.cumulative_units + excluded.cumulative_units""",
                           [account, units])
        elif isinstance(ev, EpochPrepared):
            tx.execute("INSERT OR IGNORE INTO epochs VALUES (?, ?, ?, ?, ?, ?, false, NULL, NULL, NULL)",
                       [ev.epoch, ev.root, ev.total_units, ev.accounts, json.dumps(ev.leaves), ev.prepared_at])
        elif isinstance(ev, EpochPosted):
            tx.execute("UPDATE epochs SET posted = true, tx_hash = ?, block_number = ?, posted_at = ? WHERE epoch = ?",
                       [ev.tx_hash, ev.block_number, ev.posted_at, ev.epoch])

    @staticmethod
    def save_cursor(tx: duckdb.DuckDBPyConnection, next_block: int) -> None:
        tx.execute("INSERT OR REPLACE INTO chain_cursor VALUES (1, ?)", [next_block])

    # -- reading ----------------------------------------------------------------------------
    def cursor(self, start_block: int) -> int:
        row = self.conn.execute("SELECT next_block FROM chain_cursor WHERE id = 1").fetchone()
        return max(int(row[0]), start_block) if row else start_block

    def payment_confirmed(self, order_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM payments WHERE order_id = ?", [order_id]).fetchone() is not None

    def payment_refunded(self, order_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM refunds WHERE order_id = ?", [order_id]).fetchone() is not None

    def allocated(self, subject: str) -> bool:
        return self.conn.execute("SELECT 1 FROM allocations WHERE subject = ?", [subject]).fetchone() is not None

    def flagged(self, order_id: str, reason: str) -> bool:
        return self.conn.execute("SELECT 1 FROM flags WHERE order_id = ? AND reason = ?",
                                 [order_id, reason]).fetchone() is not None

    def ready_to_allocate(self, limit: int = 500) -> list[tuple[domain.Payment, domain.Order, dict[str, int]]]:
        """Confirmed payments whose order and version are known and that are not allocated yet. A payment
        that covers the price waits for the marketplace's call: OrderPaid releases it; PaymentRefused (the
        order had expired, or its version was withdrawn from sale) holds it for a refund, never allocated.
        A short payment pays no order, so no call comes: it is held for a refund too (`short_payments`),
        never allocated. A refunded payment is never allocated, whatever the call."""
        rows = self.conn.execute(
            """SELECT p.order_id, p.amount_units, p.allocatable, o.dataset_id, o.version, o.price_units, v.weights,
                      o.offer
               FROM payments p JOIN orders o USING (order_id)
               JOIN versions v ON v.dataset_id = o.dataset_id AND v.version = o.version
               LEFT JOIN allocations a ON a.subject = p.order_id
               LEFT JOIN decisions d ON d.order_id = p.order_id
               LEFT JOIN refunds f ON f.order_id = p.order_id
               WHERE a.subject IS NULL AND p.allocatable AND f.order_id IS NULL
                 AND d.paid AND p.amount_units >= o.price_units
               ORDER BY p.block_number, p.log_index LIMIT ?""",
            [limit]).fetchall()
        return [(domain.Payment(r[0], int(r[1]), bool(r[2])), domain.Order(r[0], r[3], int(r[4]), int(r[5]), r[7]),
                 json.loads(r[6])) for r in rows]

    def short_payments(self, limit: int = 500) -> list[tuple[domain.Payment, domain.Order]]:
        """Confirmed payments short of their known order's price, not flagged `amount-mismatch` yet, not
        allocated (by a release that allocated them) and not refunded: each is to be flagged and held."""
        rows = self.conn.execute(
            """SELECT p.order_id, p.amount_units, p.allocatable, o.dataset_id, o.version, o.price_units, o.offer
               FROM payments p JOIN orders o USING (order_id)
               LEFT JOIN flags fl ON fl.order_id = p.order_id AND fl.reason = 'amount-mismatch'
               LEFT JOIN allocations a ON a.subject = p.order_id
               LEFT JOIN refunds f ON f.order_id = p.order_id
               WHERE p.amount_units < o.price_units AND p.allocatable
                 AND fl.order_id IS NULL AND a.subject IS NULL AND f.order_id IS NULL
               ORDER BY p.block_number, p.log_index LIMIT ?""",
            [limit]).fetchall()
        return [(domain.Payment(r[0], int(r[1]), bool(r[2])), domain.Order(r[0], r[3], int(r[4]), int(r[5]), r[6]))
                for r in rows]

    def reserve_left(self, order_id: str) -> int | None:
        row = self.conn.execute("SELECT reserved_units - spent_units FROM compute_reserves WHERE order_id = ?",
                                [order_id]).fetchone()
        return int(row[0]) if row else None

    def jobs_to_pay(self, limit: int = 500) -> list[tuple[str, str, str, int, int]]:
        """(job_id, order_id, provider, fee_units, reserve_left_units) of completed jobs not paid yet whose
        compute order's reserve is known (the order was allocated)."""
        rows = self.conn.execute(
            """SELECT j.job_id, j.order_id, j.provider, j.fee_units, r.reserved_units - r.spent_units
               FROM jobs_due j JOIN compute_reserves r USING (order_id)
               LEFT JOIN allocations a ON a.subject = j.job_id
               WHERE a.subject IS NULL ORDER BY j.job_id LIMIT ?""", [limit]).fetchall()
        return [(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    def allocated_orders_paid_since(self, block_number: int) -> list[str]:
        """Allocated orders paid at or after `block_number`: the only ones a refund can still reach."""
        rows = self.conn.execute(
            """SELECT p.order_id FROM payments p JOIN allocations a ON a.subject = p.order_id
               WHERE a.kind = 'order' AND p.block_number >= ?""", [block_number]).fetchall()
        return [r[0] for r in rows]

    def waiting_payments(self) -> list[dict[str, Any]]:
        """Payments held: confirmed but not allocated (order or version unknown yet, the marketplace's call
        awaited, refused, short of the price, or not an order id), and not refunded (a refunded payment is
        no longer in escrow: nothing waits; `GET /orders/{id}` shows it)."""
        rows = self.conn.execute(
            """SELECT p.order_id, p.amount_units, p.tx_hash, o.order_id IS NOT NULL, p.allocatable,
                      p.amount_units >= o.price_units, d.paid, d.detail
               FROM payments p LEFT JOIN orders o USING (order_id)
               LEFT JOIN decisions d ON d.order_id = p.order_id
               LEFT JOIN allocations a ON a.subject = p.order_id
               LEFT JOIN refunds f ON f.order_id = p.order_id
               WHERE a.subject IS NULL AND f.order_id IS NULL
               ORDER BY p.block_number, p.log_index""").fetchall()
        return [{"order_id": r[0], "amount_units": int(r[1]), "tx_hash": r[2], "order_known": bool(r[3]),
                 "allocatable": bool(r[4]), "marketplace": _decision(r[5], r[6], r[7])} for r in rows]

    def balances(self) -> dict[str, int]:
        return {a: int(u) for a, u in self.conn.execute("SELECT account, cumulative_units FROM balances").fetchall()}

    def balance(self, account: str) -> int:
        row = self.conn.execute("SELECT cumulative_units FROM balances WHERE account = ?", [account]).fetchone()
        return int(row[0]) if row else 0

    def epoch_state(self) -> domain.EpochState:
        row = self.conn.execute("SELECT epoch, posted, total_units FROM epochs ORDER BY epoch DESC LIMIT 1").fetchone()
        if row is None:
            return domain.EpochState()
        posted_at = self.conn.execute("SELECT max(posted_at) FROM epochs WHERE posted").fetchone()
        return domain.EpochState(int(row[0]), bool(row[1]), int(row[2]), posted_at[0] if posted_at else None)

    def epoch(self, epoch: int | None = None, *, posted_only: bool = False) -> dict[str, Any] | None:
        """One epoch (default: the latest, or the latest posted) with its leaves."""
        where = "WHERE posted" if posted_only else ""
        if epoch is not None:
            where = ("WHERE posted AND" if posted_only else "WHERE") + f" epoch = {int(epoch)}"
        row = self.conn.execute(
            f"""SELECT epoch, root, total_units, accounts, leaves, prepared_at, posted, tx_hash, block_number, posted_at
                FROM epochs {where} ORDER BY epoch DESC LIMIT 1""").fetchone()
        if row is None:
            return None
        leaves = {a: int(u) for a, u in json.loads(row[4]).items()}
        return {"epoch": int(row[0]), "root": row[1], "total_units": int(row[2]), "accounts": int(row[3]),
                "leaves": leaves, "prepared_at": row[5], "posted": bool(row[6]), "tx_hash": row[7],
                "block_number": row[8], "posted_at": row[9]}

    def order_view(self, order_id: str) -> dict[str, Any] | None:
        pay = self.conn.execute("SELECT amount_units, tx_hash, block_number FROM payments WHERE order_id = ?",
                                [order_id]).fetchone()
        alloc = self.conn.execute("SELECT event FROM allocations WHERE subject = ?", [order_id]).fetchone()
        flags = self.conn.execute("SELECT reason, detail FROM flags WHERE order_id = ?", [order_id]).fetchall()
        known = self.conn.execute("SELECT price_units FROM orders WHERE order_id = ?", [order_id]).fetchone()
        decided = self.conn.execute("SELECT paid, detail FROM decisions WHERE order_id = ?", [order_id]).fetchone()
        refund = self.conn.execute("SELECT buyer, amount_units, tx_hash, block_number, refunded_at FROM refunds "
                                   "WHERE order_id = ?", [order_id]).fetchone()
        if pay is None and alloc is None and known is None:
            return None
        covers = int(pay[0]) >= int(known[0]) if pay is not None and known is not None else None
        return {"order_id": order_id, "order_known": known is not None,
                "marketplace": _decision(covers, decided[0] if decided else None, decided[1] if decided else None,
                                         allocated=alloc is not None),
                "payment": ({"amount_units": int(pay[0]), "tx_hash": pay[1], "block_number": int(pay[2])}
                            if pay else None),
                "refund": ({"buyer": refund[0], "amount_units": int(refund[1]), "tx_hash": refund[2],
                            "block_number": int(refund[3]), "refunded_at": refund[4]} if refund else None),
                "allocation": json.loads(alloc[0]) if alloc else None,
                "flags": [{"reason": r, "detail": d} for r, d in flags]}


def _decision(covers_price: bool | None, paid: bool | None, detail: str | None, allocated: bool = False) -> str | None:
    """What settlement holds a payment for: short of the price, or the marketplace's call (None: no call
    yet and the payment or its order not known yet)."""
    if covers_price is False and allocated:  # releases before 9b7d9a8 allocated short payments
        return ("short of the price, but allocated to members by an earlier release (its split is in the log): it "
                "must not be refunded, since a refund of an allocated order stops every later root")
    if covers_price is False:
        return ("short of the price: it pays no order and can't be topped up (the contract takes one payment per "
                "order id), so it is held for a refund and never allocated")
    if paid is True:
        return "paid: the marketplace paid the order (OrderPaid); allocated once its order and version are known"
    if paid is False:
        return f"refused, held for a refund and never allocated: {detail}"
    if covers_price:
        return "awaiting the marketplace's call (OrderPaid or PaymentRefused) before allocating"
    return None
