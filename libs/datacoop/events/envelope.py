"""The CloudEvents 1.0 envelope (structured JSON mode) every datacoop event travels in."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from datacoop.events.types import UtcTime

# Namespace for ids derived from a cause: a re-sent reaction gets the same id and is dropped.
_DERIVED_NAMESPACE = uuid.UUID("5f1b6c1e-2f6e-4b1e-9a4e-6d0a7c0d2a11")


def new_event_id() -> str:
    """A fresh UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits, so ids sort by
    creation time to the millisecond. Formatted directly: this runs once per event written."""
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6) + os.urandom(10))
    raw[6] = 0x70 | raw[6] & 0x0F  # version 7
    raw[8] = 0x80 | raw[8] & 0x3F  # variant 0b10
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def derived_event_id(causation_id: str, event_type: str, discriminator: str = "") -> str:
    """UUIDv5 of (cause, type[, discriminator]): the same reaction to the same cause has the same id."""
    return str(uuid.uuid5(_DERIVED_NAMESPACE, f"{causation_id}|{event_type}|{discriminator}"))


class Envelope(BaseModel):
    """One event as it lies in the log.

    `seq` is the per-subject sequence number (1, 2, 3, …) assigned by the single writer of the
    subject's aggregate, never used twice: a publish that fails keeps its seqs (its events may have
    landed), which leaves a gap when they did not; `subject` is also the Kafka key, so one subject's events
    stay in order on one partition.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=new_event_id, min_length=1)
    source: str = Field(min_length=1, description="the writing service, e.g. 'datacoop/consent'")
    type: str = Field(pattern=r"^datacoop\.[a-z0-9_]+\.[a-z0-9_.]+\.v[0-9]+$")
    subject: str = Field(min_length=1, description="aggregate id; the Kafka key")
    time: UtcTime = Field(default_factory=lambda: datetime.now(UTC))
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str = ""
    seq: int = Field(ge=1, description="per-subject sequence number; gap-free unless a publish failed")
    correlationid: str | None = None
    causationid: str | None = None
    data: dict[str, Any]
