"""Callers of the vault: a member contributing a file (signed with the wallet key, as any wallet
would) and a service reading plaintext through the internal decrypt API."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_typed_data

from services.consent import eip712
from services.consent.client import ApiError, check

__all__ = ["ApiError", "VaultClient", "VaultReader", "upload_format"]


def upload_format(path: Path | str) -> str:
    """`csv` for .csv files, `jsonl` otherwise (.jsonl, .ndjson, .json lines)."""
    return "csv" if str(path).lower().endswith(".csv") else "jsonl"


class VaultClient:
    """A member's side: sign ContributeRecords over the file's SHA-256 and upload it."""

    def __init__(self, private_key: str, base_url: str, http: httpx.Client | None = None,
                 domain: eip712.Domain | None = None) -> None:
        self.account = Account.from_key(private_key)
        self.address: str = self.account.address
        self.http = http or httpx.Client(base_url=base_url, timeout=120)
        self.domain = domain or self._fetch_domain()

    def _fetch_domain(self) -> eip712.Domain:
        d = check(self.http.get("/eip712"))["domain"]
        return eip712.Domain(d["name"], d["version"], d["chainId"], d.get("verifyingContract"))

    def contribute_body(self, category: str, content: str, fmt: str = "jsonl", issued_at: int | None = None,
                        on_behalf_of: str | None = None) -> dict[str, Any]:
        issued_at = int(time.time()) if issued_at is None else issued_at
        message = {"member": on_behalf_of or self.address, "category": category,
                   "contentHash": "0x" + hashlib.sha256(content.encode()).hexdigest(), "issuedAt": issued_at}
        signable = encode_typed_data(full_message=eip712.typed_data(self.domain, "ContributeRecords", message))
        signature = "0x" + bytes(self.account.sign_message(signable).signature).hex().removeprefix("0x")
        return {"category": category, "format": fmt, "content": content, "issued_at": issued_at,
                "signature": signature}

    def contribute(self, category: str, content: str, fmt: str = "jsonl") -> dict[str, Any]:
        """Upload `content` (JSON lines or CSV text) as records of `category`; all rows or none."""
        body = self.contribute_body(category, content, fmt)
        return dict(check(self.http.post(f"/members/{self.address}/records", json=body)))

    def contribute_file(self, path: Path | str, category: str) -> dict[str, Any]:
        return self.contribute(category, Path(path).read_text(), upload_format(path))

    def summary(self) -> dict[str, Any]:
        return dict(check(self.http.get(f"/members/{self.address}/records")))


class VaultReader:
    """Another service's side: plaintext records through POST /internal/decrypt, page by page."""

    def __init__(self, base_url: str, service_token: str, http: httpx.Client | None = None) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=120)
        self.headers = {"Authorization": f"Bearer {service_token}"}

    def page(self, **selection: Any) -> dict[str, Any]:
        return dict(check(self.http.post("/internal/decrypt", json=selection, headers=self.headers)))

    def records(self, *, category: str | None = None, members: list[str] | None = None,
                record_ids: list[str] | None = None, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        after = ""
        while True:
            page = self.page(category=category, members=members, record_ids=record_ids, after=after,
                             limit=page_size)
            yield from page["records"]
            if not page["next_after"]:
                return
            after = page["next_after"]
