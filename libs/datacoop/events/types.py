"""Field types shared by event models: wallet addresses, UTC times, hex signatures, SHA-256 digests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, Field


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a timezone (UTC)")
    return value.astimezone(UTC)


Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$", description="EVM address, 0x + 40 hex")]
HexSignature = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{130}$", description="65-byte secp256k1 signature")]
UtcTime = Annotated[datetime, AfterValidator(_utc)]
Slug = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,63}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
