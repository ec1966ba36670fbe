"""EIP-712 typed data for member actions, hashed and recovered without eth-account's generic encoder.

The message types are fixed, so their type hashes are computed once and each struct is hashed
with a few keccak calls; recovery runs in C (coincurve). A test checks every digest against
eth-account's `encode_typed_data`, so any wallet (MetaMask, eth-account) signing the typed data
below produces a signature this module accepts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any

import coincurve
import httpx
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from fastapi import Header
from sha3 import keccak_256  # safe-pysha3: C keccak, ~6x faster per call than pycryptodome's

from datacoop.events.types import to_checksum as to_checksum  # one EIP-55, beside the WalletAddress type
from datacoop.http import check
from datacoop.kit.problems import Unauthorized


def keccak(data: bytes) -> bytes:
    return bytes(keccak_256(data).digest())

TYPES: dict[str, list[tuple[str, str]]] = {
    "RegisterMember": [("member", "address"), ("nonce", "uint256")],
    "GrantConsent": [("member", "address"), ("consentId", "string"), ("purpose", "string"),
                     ("categories", "string[]"), ("expiresAt", "uint256"), ("nonce", "uint256")],
    "RevokeConsent": [("member", "address"), ("consentId", "string"), ("nonce", "uint256")],
    "RequestErasure": [("member", "address"), ("nonce", "uint256")],
    "ContributeRecords": [("member", "address"), ("category", "string"), ("contentHash", "bytes32"),
                          ("issuedAt", "uint256")],
    "RegisterWorker": [("provider", "address"), ("workerId", "string"), ("issuedAt", "uint256")],
    "JobResult": [("provider", "address"), ("jobId", "string"), ("leaseId", "string"), ("resultHash", "bytes32")],
    "ReadMemberData": [("member", "address"), ("issuedAt", "uint256")],
}

READ_HEADER = "X-Member-Auth"
"""Reading a member's own data (state, consents, receipts, uploads) takes this header:
`<issuedAt>.<signature>`, the member's wallet signature of ReadMemberData(member, issuedAt), issuedAt
in unix seconds within READ_FRESHNESS_S of the server's time. No nonce: a read changes nothing."""
READ_FRESHNESS_S = 300


class SignatureInvalid(ValueError):
    """The signature is malformed or recovers no key."""


def _type_string(name: str, fields: list[tuple[str, str]]) -> str:
    return f"{name}({','.join(f'{t} {n}' for n, t in fields)})"


_TYPE_HASHES = {name: keccak(_type_string(name, fields).encode()) for name, fields in TYPES.items()}


@dataclass(frozen=True)
class Domain:
    name: str = "datacoop"
    version: str = "1"
    chain_id: int = 31337
    verifying_contract: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "version": self.version, "chainId": self.chain_id}
        if self.verifying_contract:
            d["verifyingContract"] = self.verifying_contract
        return d

    def fields(self) -> list[tuple[str, str]]:
        f = [("name", "string"), ("version", "string"), ("chainId", "uint256")]
        if self.verifying_contract:
            f.append(("verifyingContract", "address"))
        return f

    @cached_property
    def separator(self) -> bytes:
        return _hash_struct("EIP712Domain", self.fields(), self.as_dict())


def _encode_value(kind: str, value: Any) -> bytes:
    if kind == "address":
        raw = bytes.fromhex(str(value)[2:])
        if len(raw) != 20:
            raise ValueError(f"address {value!r} is not 20 bytes")
        return raw.rjust(32, b"\0")
    if kind == "uint256":
        number = int(value)
        if not 0 <= number < 2**256:
            raise ValueError(f"uint256 out of range: {value}")
        return number.to_bytes(32, "big")
    if kind == "bytes32":
        raw = value if isinstance(value, bytes) else bytes.fromhex(str(value).removeprefix("0x"))
        if len(raw) != 32:
            raise ValueError(f"bytes32 {value!r} is not 32 bytes")
        return raw
    if kind == "string":
        return keccak(str(value).encode())
    if kind == "string[]":
        return keccak(b"".join(keccak(str(v).encode()) for v in value))
    raise ValueError(f"unsupported EIP-712 type {kind}")


def _hash_struct(name: str, fields: list[tuple[str, str]], message: dict[str, Any]) -> bytes:
    type_hash = _TYPE_HASHES.get(name) or keccak(_type_string(name, fields).encode())
    return keccak(type_hash + b"".join(_encode_value(kind, message[field]) for field, kind in fields))


def digest(domain: Domain, primary_type: str, message: dict[str, Any]) -> bytes:
    """keccak256(0x1901 ‖ domainSeparator ‖ hashStruct(message)): what the wallet signs."""
    return keccak(b"\x19\x01" + domain.separator + _hash_struct(primary_type, TYPES[primary_type], message))


# secp256k1's group order n over 2: a signature (r, s) has a twin (r, n - s) that recovers the same signer; only
# the low-s form is accepted (EIP-2, as OpenZeppelin's ECDSA), so one signed message has one signature
_HALF_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2


def recover(digest_bytes: bytes, signature_hex: str) -> str:
    """The checksummed address that signed `digest_bytes`; SignatureInvalid if none can be recovered."""
    try:
        sig = bytes.fromhex(signature_hex.removeprefix("0x"))
    except ValueError as exc:
        raise SignatureInvalid("signature is not hex") from exc
    if len(sig) != 65:
        raise SignatureInvalid(f"signature must be 65 bytes (r, s, v), got {len(sig)}")
    if int.from_bytes(sig[32:64]) > _HALF_ORDER:
        raise SignatureInvalid("signature has s in the upper half of the curve order: a second form of some "
                               "signature (EIP-2), which wallets never produce; sign again with the wallet")
    v = sig[64]
    rec_id = v - 27 if v >= 27 else v
    if rec_id not in (0, 1):
        raise SignatureInvalid(f"signature has an invalid recovery id v={v}")
    try:
        pub = coincurve.PublicKey.from_signature_and_message(sig[:64] + bytes([rec_id]), digest_bytes,
                                                             hasher=None)
    except Exception as exc:
        raise SignatureInvalid(f"signature recovers no public key ({exc})") from exc
    return to_checksum(keccak(pub.format(compressed=False)[1:])[-20:].hex())


def sign(account: LocalAccount, domain: Domain, primary_type: str, message: dict[str, Any]) -> str:
    """What a wallet's eth_signTypedData_v4 returns for `message` (0x-hex r, s, v): the clients' one signer."""
    signable = encode_typed_data(full_message=typed_data(domain, primary_type, message))
    return "0x" + bytes(account.sign_message(signable).signature).hex().removeprefix("0x")


def fetch_domain(http: httpx.Client) -> Domain:
    """The domain a service verifies signatures against (its `GET /eip712`)."""
    d = check(http.get("/eip712"))["domain"]
    return Domain(d["name"], d["version"], d["chainId"], d.get("verifyingContract"))


def typed_data(domain: Domain, primary_type: str, message: dict[str, Any]) -> dict[str, Any]:
    """The full EIP-712 document a wallet's eth_signTypedData_v4 takes."""
    return {
        "types": {"EIP712Domain": [{"name": n, "type": t} for n, t in domain.fields()],
                  primary_type: [{"name": n, "type": t} for n, t in TYPES[primary_type]]},
        "primaryType": primary_type,
        "domain": domain.as_dict(),
        "message": message,
    }


class ReadRefused(ValueError):
    """A read of a member's data without a fresh signature by that member; the message says how to sign."""


def read_auth(account: LocalAccount, domain: Domain, issued_at: int | None = None) -> dict[str, str]:
    """The header that lets `account` read its own data for the next READ_FRESHNESS_S seconds."""
    issued = int(time.time()) if issued_at is None else issued_at
    signature = sign(account, domain, "ReadMemberData", {"member": account.address, "issuedAt": issued})
    return {READ_HEADER: f"{issued}.{signature}"}


def check_read(domain: Domain, member: str, header: str | None, now: float | None = None) -> None:
    """ReadRefused unless `header` (READ_HEADER's value) is a fresh ReadMemberData signed by `member`."""
    how = (f"sign ReadMemberData(member, issuedAt) with the member's wallet (EIP-712, GET /eip712) and send it as "
           f"`{READ_HEADER}: <issuedAt>.<signature>`; the datacoop clients and CLI do")
    if not header:
        raise ReadRefused(f"a member's data is readable by that member only: {how}")
    issued_text, _, signature = header.strip().partition(".")
    # ASCII digits only: isdigit() alone takes "²" (a latin-1 byte of a header), which int() then refuses
    if not (issued_text.isascii() and issued_text.isdigit()) or len(issued_text) > 12 or not signature:
        raise ReadRefused(f"{READ_HEADER} must be <issuedAt>.<signature> (unix seconds, 0x-hex); {how}")
    issued = int(issued_text)
    now = time.time() if now is None else now
    if abs(now - issued) > READ_FRESHNESS_S:
        raise ReadRefused(f"{READ_HEADER} was signed at {issued}, more than {READ_FRESHNESS_S} s from the server's "
                          f"time {int(now)}; sign a fresh one (and check your clock)")
    try:
        signer = recover(digest(domain, "ReadMemberData", {"member": member, "issuedAt": issued}), signature)
    except (SignatureInvalid, ValueError) as exc:
        raise ReadRefused(f"bad {READ_HEADER} signature: {exc}; {how}") from exc
    if signer.lower() != member.lower():
        raise ReadRefused(f"{READ_HEADER} is signed by {signer}, not by member {member}: a member's data is "
                          "readable by that member only")


ReadAuth = Annotated[str | None, Header(alias=READ_HEADER, description=(
    f"<issuedAt>.<signature>: ReadMemberData(member, issuedAt) signed by the member's wallet, issuedAt within "
    f"{READ_FRESHNESS_S} s"))]
"""The route parameter of a read of a member's own data (consent, vault, marketplace)."""


def require_read(domain: Domain, member: str, header: str | None) -> None:
    """401 `member-signature-required` (saying how to sign) unless `header` is a fresh ReadMemberData by `member`."""
    try:
        check_read(domain, to_checksum(member), header)
    except ReadRefused as exc:
        raise Unauthorized(str(exc), slug="member-signature-required") from exc
