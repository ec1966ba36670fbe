"""Field types shared by event models: wallet addresses, UTC times, hex signatures, SHA-256 digests."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError
from sha3 import keccak_256  # safe-pysha3: C keccak

ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"
_ADDRESS_SHAPE = re.compile(ADDRESS_PATTERN)  # used with fullmatch: a trailing newline fails too


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a timezone (UTC)")
    return value.astimezone(UTC)


_utc.__datacoop_check__ = "datacoop.events.types._utc"  # type: ignore[attr-defined]  # id in schemas

# EIP-55 in whole-string operations: per hex digit, a byte that is 0x20 where the digest's nibble is >= 8
# (resp. where the address's digit is a letter); their AND, subtracted from the ASCII, upper-cases those
# letters. Four times faster than a loop over the digits, and it runs in every signature check.
_HIGH_NIBBLE = bytes(0x20 if chr(b) in "89abcdef" else 0 for b in range(256))
_LETTER = bytes(0x20 if chr(b) in "abcdef" else 0 for b in range(256))
_HEX_DIGITS = b"0123456789abcdef"


def to_checksum(hex_address: str) -> str:
    """EIP-55 mixed-case checksum of a 40-hex-digit address (with or without 0x)."""
    lower = hex_address.lower().removeprefix("0x").encode()
    if len(lower) != 40 or lower.translate(None, _HEX_DIGITS):
        raise ValueError(f"not an address of 40 hex digits: {hex_address!r}")
    nibbles = keccak_256(lower).hexdigest()[:40].encode()
    upper = int.from_bytes(nibbles.translate(_HIGH_NIBBLE)) & int.from_bytes(lower.translate(_LETTER))
    return "0x" + (int.from_bytes(lower) - upper).to_bytes(40).decode()


def _wallet_address(value: str) -> str:
    if not _ADDRESS_SHAPE.fullmatch(value):
        raise PydanticCustomError("wallet_address", "must be a wallet address: 0x followed by 40 hex digits")
    digits = value[2:]
    if digits not in (digits.lower(), digits.upper()) and value != to_checksum(value):
        raise PydanticCustomError(
            "wallet_address_checksum",
            "must be a wallet address with a valid EIP-55 checksum: this one's mixed case does not match it, "
            "so a character is likely mistyped; copy the address from your wallet again")
    return value


_wallet_address.__datacoop_check__ = "datacoop.events.types._wallet_address"  # type: ignore[attr-defined]  # id in schemas

Address = Annotated[str, Field(pattern=ADDRESS_PATTERN, description="EVM address, 0x + 40 hex")]
"""An address inside an event: the shape only, checked in pydantic's core, because it runs for every event
read and the log already holds addresses as they were accepted (so no checksum rule is applied afterwards)."""
WalletAddress = Annotated[str, AfterValidator(_wallet_address),
                          WithJsonSchema({"type": "string", "pattern": ADDRESS_PATTERN,
                                          "description": "EVM address, 0x + 40 hex; mixed case must be EIP-55"})]
"""An address a person sends to an API (body or path): a worded refusal instead of the regex, and a mixed-case
address must carry a valid EIP-55 checksum (all lower- or upper-case carries none and is accepted)."""
HexSignature = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{130}$", description="65-byte secp256k1 signature")]
UtcTime = Annotated[datetime, AfterValidator(_utc)]
Slug = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,63}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError(
            "finite_number", "{where} is {value}: JSON has no NaN or Infinity, so the log could not hold it as "
            "given (it would read back as null); give a finite number", {"where": where or "a value", "value": value})
    if isinstance(value, dict):
        for key, item in value.items():
            _finite(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _finite(item, f"{where}[{index}]")


def _finite_object(value: dict[str, Any]) -> dict[str, Any]:
    _finite(value, "")
    return value


_finite_object.__datacoop_check__ = "datacoop.events.types._finite_object"  # type: ignore[attr-defined]  # id in schemas

JsonObject = Annotated[dict[str, Any], AfterValidator(_finite_object)]
"""A free-form JSON object inside an event (a definition, job parameters, a result): any JSON value, but no
NaN or Infinity anywhere in it. Event models refuse non-finite floats (allow_inf_nan=False), and these values
too, since JSON cannot carry them: the writer would apply the value, while the log, and every projection
rebuilt from it, would hold null."""
