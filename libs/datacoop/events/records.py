"""Events of the records topic (writer: the vault service). Ciphertext and non-personal metadata only."""

from __future__ import annotations
