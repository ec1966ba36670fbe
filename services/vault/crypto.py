"""Envelope encryption: per-member AES-256-GCM data keys, wrapped by the vault's key-encryption key.

- A record is sealed with the member's data key, a fresh random 96-bit nonce and associated data
  `"<member>|<record_id>"`: a ciphertext moved to another member or record id fails to open.
- A data key is stored only wrapped: AES-256-GCM under the KEK, associated data `"datakey|<member>"`.
- `upload_tag` is HMAC-SHA256 of (member, content hash) under the upload-tag key, a secret kept wrapped
  in the key store: a replay check that survives a rebuild (and a KEK rotation) without publishing a
  hash that would confirm a guessed upload.
Random nonces are safe here: a data key seals far fewer than 2^32 records.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12


class KeyUnwrapFailed(ValueError):
    """A wrapped data key does not open under this KEK (wrong KEK, or the key was tampered with)."""


class RecordUnreadable(ValueError):
    """A ciphertext does not open: wrong key, wrong member/record id, or tampered bytes."""


def parse_kek(b64: str) -> bytes:
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError as exc:
        raise ValueError("the vault KEK must be base64 of 32 bytes (e.g. `openssl rand -base64 32`)") from exc
    if len(raw) != KEY_BYTES:
        raise ValueError(f"the vault KEK must be 32 bytes, got {len(raw)}; generate one with `openssl rand -base64 32`")
    return raw


def new_kek_b64() -> str:
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def associated_data(member: str, record_id: str) -> bytes:
    return f"{member}|{record_id}".encode()


@dataclass(frozen=True)
class Kek:
    key: bytes

    def _seal(self, purpose: bytes, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.key).encrypt(nonce, plaintext, purpose)

    def _open(self, purpose: bytes, wrapped: bytes) -> bytes | None:
        try:
            return AESGCM(self.key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], purpose)
        except InvalidTag:
            return None

    def wrap(self, member: str, data_key: bytes) -> bytes:
        return self._seal(f"datakey|{member}".encode(), data_key)

    def unwrap(self, member: str, wrapped: bytes) -> bytes:
        key = self._open(f"datakey|{member}".encode(), wrapped)
        if key is None:
            raise KeyUnwrapFailed(f"the data key of {member} does not open under this KEK; "
                                  "is DATACOOP_VAULT_KEK the one the keys were wrapped with?")
        return key

    def seal_secret(self, name: str, secret: bytes) -> bytes:
        """A vault secret other than a data key (the KEK check, the upload-tag key), wrapped like one."""
        return self._seal(f"secret|{name}".encode(), secret)

    def open_secret(self, name: str, wrapped: bytes) -> bytes:
        secret = self._open(f"secret|{name}".encode(), wrapped)
        if secret is None:
            raise KeyUnwrapFailed(f"the vault secret {name!r} does not open under this KEK")
        return secret


def legacy_tag_key(kek: Kek) -> bytes:
    """The upload-tag key of a key store made before the key lived in it: derived from the KEK it had then
    (so the tags of its earlier uploads still match); see KeyStore."""
    return hashlib.sha256(b"datacoop-vault-upload-tag|" + kek.key).digest()


def upload_tag(tag_key: bytes, member: str, content_hash: bytes) -> str:
    return hmac.new(tag_key, member.lower().encode() + b"|" + content_hash, hashlib.sha256).hexdigest()


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def seal_many(data_key: bytes, member: str, items: list[tuple[str, bytes]]) -> list[tuple[str, str, str]]:
    """(record_id, plaintext) -> (record_id, nonce b64, ciphertext b64), one AESGCM for the batch."""
    aead = AESGCM(data_key)
    prefix = f"{member}|".encode()
    b64 = base64.b64encode
    urandom = os.urandom
    out = []
    for record_id, plaintext in items:
        nonce = urandom(NONCE_BYTES)
        sealed = aead.encrypt(nonce, plaintext, prefix + record_id.encode())
        out.append((record_id, b64(nonce).decode(), b64(sealed).decode()))
    return out


def open_one(aead: AESGCM, member: str, record_id: str, nonce_b64: str, ciphertext_b64: str) -> bytes:
    try:
        return aead.decrypt(base64.b64decode(nonce_b64), base64.b64decode(ciphertext_b64),
                            associated_data(member, record_id))
    except (InvalidTag, ValueError) as exc:
        raise RecordUnreadable(f"record {record_id} of {member} does not open with the member's data key") from exc
