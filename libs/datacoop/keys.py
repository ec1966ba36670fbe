"""Ed25519 signing keys that a service keeps outside its projection (receipts, access grants)."""

from __future__ import annotations

import base64
import contextlib
import os
from pathlib import Path

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


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64 (what `/receipt-key` and `/grant-key` serve)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
