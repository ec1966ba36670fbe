"""Ed25519 signing keys that a service keeps outside its projection (receipts, access grants), and the
signed JSON documents they make: a `proof` over the document's canonical JSON (sorted keys, no spaces,
UTF-8), checked against a key the checker trusts, never against the key the proof names."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at `path` (PEM, PKCS#8); created with mode 0600 on first use."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key; remove it to have a new one made")
        return key
    key = Ed25519PrivateKey.generate()
    try:
        write_secret(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    except FileExistsError:
        if not path.exists():
            raise
        return load_or_create_key(path)  # another process made it first: use theirs
    return key


def write_secret(path: Path, data: bytes) -> None:
    """Create `path` holding `data`, readable by its owner alone from the first byte (mode 0600), whole or
    not at all: written to a private temporary file beside it, synced, then linked into place. Raises
    FileExistsError if `path` exists (a secret is never overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")  # never a name a crash left behind
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(temporary, path)  # fails if the path exists, unlike rename
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    folder = os.open(path.parent, os.O_RDONLY)  # the new name itself survives a power loss (a KEK must)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64 (what `/receipt-key` and `/grant-key` serve)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_document(document: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """`document` with a `proof`: the Ed25519 signature of its canonical JSON and the signer's public key."""
    return {**document, "proof": {"type": "Ed25519", "public_key": public_key_b64(key),
                                  "signature": base64.b64encode(key.sign(canonical(document))).decode()}}


class RepeatedKey(ValueError):
    """A JSON object names a key twice."""


def _pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RepeatedKey(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def load_document(text: str) -> Any:
    """A signed document's JSON, refusing an object that repeats a key (RepeatedKey; json.JSONDecodeError for
    text that is not JSON). A parser keeps one of a repeated key's values, Python the last and others the
    first, so a document signed with one value of a key could carry another before it and read as that."""
    return json.loads(text, object_pairs_hook=_pairs_once)


def document_problem(document: dict[str, Any], trusted_public_key_b64: str, *, key_source: str) -> str | None:
    """None when `document`'s proof verifies under `trusted_public_key_b64` (from `key_source`, e.g.
    GET /receipt-key); else what is wrong. Anyone can sign a forged document with a key of their own
    and name it in the proof: that key is never trusted alone."""
    proof = document.get("proof")
    if not isinstance(proof, dict) or "signature" not in proof or "public_key" not in proof:
        return "it has no proof (expected proof.public_key and proof.signature)"
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(trusted_public_key_b64, validate=True))
    except (TypeError, ValueError):  # binascii.Error is a ValueError
        return f"the public key given is not an Ed25519 public key (32 bytes, base64); copy it from {key_source}"
    if proof["public_key"] != trusted_public_key_b64:
        return "it was signed by a different key than the cooperative's"
    body = {k: v for k, v in document.items() if k != "proof"}
    try:
        key.verify(base64.b64decode(proof["signature"]), canonical(body))
    except (InvalidSignature, TypeError, ValueError):
        return "the signature does not match: it was altered or signed by another key"
    return None
