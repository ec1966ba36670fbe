"""The topics: one per aggregate type, each with a dead-letter twin `<topic>.dlq`.

Services take a `topic_prefix` setting (empty in production) so tests on a shared broker never
see each other's events.
"""

from __future__ import annotations

from dataclasses import dataclass

MEMBERS = "datacoop.members"
RECORDS = "datacoop.records"
DATASETS = "datacoop.datasets"
ORDERS = "datacoop.orders"
PAYOUTS = "datacoop.payouts"
JOBS = "datacoop.jobs"
WORKERS = "datacoop.workers"
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    writer: str
    key: str
    description: str


TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in [
        TopicSpec(MEMBERS, 6, "consent", "member wallet address (0x…, checksummed)",
                  "members, their consents per purpose, erasure requests"),
        TopicSpec(RECORDS, 6, "vault", "member wallet address",
                  "contributed records (ciphertext only) and key shredding"),
        TopicSpec(DATASETS, 3, "anonymizer", "dataset id", "dataset definitions and published versions"),
        TopicSpec(ORDERS, 3, "marketplace", "order id", "orders, payments seen, access grants, query budgets"),
        TopicSpec(PAYOUTS, 3, "settlement", "order id or epoch id", "revenue allocations and payout epochs"),
        TopicSpec(JOBS, 3, "jobs", "job id", "analytics jobs, leases, results"),
        TopicSpec(WORKERS, 3, "jobs", "worker id", "GPU worker registry (heartbeats are not events)"),
    ]
}


def qualified(prefix: str, topic: str) -> str:
    """The topic name on the broker: `prefix` + name (prefix is '' in production)."""
    return f"{prefix}{topic}"


def dlq(topic: str) -> str:
    return f"{topic}{DLQ_SUFFIX}"
