"""Callers of the vault: a member contributing a file (signed with the wallet key, as any wallet
would) and a service reading plaintext through the internal decrypt API."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_typed_data

from datacoop.http import ApiError, check
from services.consent import eip712

__all__ = ["ApiError", "VaultClient", "VaultReader", "sample_rows", "upload_format"]


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

    def contribute_rows(self, category: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Upload rows (dicts of field: value) as JSON lines."""
        return self.contribute(category, "".join(json.dumps(r) + "\n" for r in rows), "jsonl")

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


_DEMOGRAPHICS = {
    "sex": ["Female", "Male"], "race": ["White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"],
    "marital-status": ["Never-married", "Married-civ-spouse", "Divorced", "Separated", "Widowed"],
    "education": ["HS-grad", "Some-college", "Bachelors", "Masters", "Assoc-voc", "11th", "Doctorate"],
    "native-country": ["United-States", "Mexico", "Philippines", "Germany", "Canada", "India", "England"],
    "workclass": ["Private", "Self-emp-not-inc", "Local-gov", "State-gov", "Federal-gov", "Self-emp-inc"],
    "occupation": ["Prof-specialty", "Craft-repair", "Exec-managerial", "Adm-clerical", "Sales", "Other-service",
                   "Tech-support", "Transport-moving"],
    "salary-class": ["<=50K", ">50K"],
}


def sample_rows(category: str, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Plausible, valid rows of a category for demos and tests (deterministic for a seed)."""
    rnd = random.Random(f"{category}:{seed}")
    days = [f"2026-{m:02d}-{d:02d}" for m in range(1, 13) for d in range(1, 29)]
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        if category == "demographics":
            rows.append({"age": rnd.randint(17, 90), **{k: rnd.choice(v) for k, v in _DEMOGRAPHICS.items()}})
        elif category == "health":
            rows.append({"measured_on": rnd.choice(days), "systolic_mmhg": rnd.randint(100, 160),
                         "diastolic_mmhg": rnd.randint(60, 100), "heart_rate_bpm": rnd.randint(50, 100),
                         "weight_kg": round(rnd.uniform(50, 110), 1), "smoker": rnd.random() < 0.2})
        elif category == "fitness":
            rows.append({"day": rnd.choice(days), "steps": rnd.randint(500, 25_000),
                         "active_minutes": rnd.randint(0, 180),
                         "workout": rnd.choice(["none", "walk", "run", "cycle"])})
        elif category == "location":
            rows.append({"recorded_on": rnd.choice(days), "postcode": f"{rnd.randint(1000, 9999)}",
                         "country": rnd.choice(["CH", "DE", "FR", "NL"]), "trip_km": round(rnd.uniform(0, 60), 1),
                         "mode": rnd.choice(["walk", "bike", "car", "bus", "train"])})
        else:
            raise ValueError(f"no sample rows for category {category!r}")
    return rows
