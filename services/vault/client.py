"""Callers of the vault: a member contributing a file (signed with the wallet key, as any wallet
would) and a service reading plaintext through the internal decrypt API."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from faker import Faker

from datacoop.http import ApiError, check
from services.consent import eip712

__all__ = ["ApiError", "VaultClient", "VaultReader", "sample_rows", "upload_format"]


_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


def upload_format(path: Path | str) -> str | None:
    """The upload format a file's extension names (`jsonl` for .jsonl/.ndjson/.json, `csv` for .csv);
    None for any other, which the caller must ask about rather than guess."""
    return _FORMATS.get(Path(path).suffix.lower())


class VaultClient:
    """A member's side: sign ContributeRecords over the file's SHA-256 and upload it."""

    def __init__(self, private_key: str, base_url: str, http: httpx.Client | None = None,
                 domain: eip712.Domain | None = None) -> None:
        self.account = Account.from_key(private_key)
        self.address: str = self.account.address
        self.http = http or httpx.Client(base_url=base_url, timeout=120)
        self.domain = domain or eip712.fetch_domain(self.http)

    def contribute_body(self, category: str, content: str, fmt: str = "jsonl", issued_at: int | None = None,
                        on_behalf_of: str | None = None) -> dict[str, Any]:
        issued_at = int(time.time()) if issued_at is None else issued_at
        message = {"member": on_behalf_of or self.address, "category": category,
                   "contentHash": "0x" + hashlib.sha256(content.encode()).hexdigest(), "issuedAt": issued_at}
        signature = eip712.sign(self.account, self.domain, "ContributeRecords", message)
        return {"category": category, "format": fmt, "content": content, "issued_at": issued_at,
                "signature": signature}

    def contribute(self, category: str, content: str, fmt: str = "jsonl") -> dict[str, Any]:
        """Upload `content` (JSON lines or CSV text) as records of `category`; all rows or none."""
        body = self.contribute_body(category, content, fmt)
        return dict(check(self.http.post(f"/members/{self.address}/records", json=body)))

    def contribute_rows(self, category: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Upload rows (dicts of field: value) as JSON lines."""
        return self.contribute(category, "".join(json.dumps(r) + "\n" for r in rows), "jsonl")

    def summary(self) -> dict[str, Any]:
        """The member's uploads (signed as a read of the member's own data)."""
        return dict(check(self.summary_response()))

    def summary_response(self) -> httpx.Response:
        return self.http.get(f"/members/{self.address}/records", headers=eip712.read_auth(self.account, self.domain))


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


_COUNTRY_LOCALES = {"CH": "de_CH", "DE": "de_DE", "FR": "fr_FR", "NL": "nl_NL"}
_CONDITIONS = {"I10": "Essential hypertension", "E11.9": "Type 2 diabetes", "J45.909": "Asthma",
               "M54.5": "Low back pain", "F41.1": "Generalized anxiety disorder", "E78.5": "Hyperlipidaemia"}


def sample_rows(category: str, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Plausible, valid rows of a category, generated with Faker (the same rows for the same seed)."""
    fake = Faker(list(_COUNTRY_LOCALES.values()))
    fake.seed_instance(f"{category}:{seed}")
    any_locale = fake[_COUNTRY_LOCALES["DE"]]

    def day() -> str:
        return any_locale.date_between(date(2026, 1, 1), date(2026, 11, 1)).isoformat()

    rows: list[dict[str, Any]] = []
    for _ in range(count):
        if category == "demographics":
            rows.append({"age": any_locale.random_int(17, 90),
                         **{k: any_locale.random_element(v) for k, v in _DEMOGRAPHICS.items()}})
        elif category == "health":
            icd10 = any_locale.random_element(sorted(_CONDITIONS)) if any_locale.boolean(30) else None
            rows.append({"measured_on": day(), "systolic_mmhg": any_locale.random_int(100, 160),
                         "diastolic_mmhg": any_locale.random_int(60, 100),
                         "heart_rate_bpm": any_locale.random_int(50, 100),
                         "weight_kg": float(any_locale.pydecimal(min_value=50, max_value=110, right_digits=1)),
                         "smoker": any_locale.boolean(20),
                         **({"icd10": icd10, "condition": _CONDITIONS[icd10]} if icd10 else {})})
        elif category == "fitness":
            rows.append({"day": day(), "steps": any_locale.random_int(500, 25_000),
                         "active_minutes": any_locale.random_int(0, 180),
                         "workout": any_locale.random_element(["none", "walk", "run", "cycle"])})
        elif category == "location":
            country = any_locale.random_element(sorted(_COUNTRY_LOCALES))
            rows.append({"recorded_on": day(), "postcode": fake[_COUNTRY_LOCALES[country]].postcode(),
                         "country": country,
                         "trip_km": float(any_locale.pydecimal(min_value=0, max_value=60, right_digits=1)),
                         "mode": any_locale.random_element(["walk", "bike", "car", "bus", "train"])})
        elif category == "finance":
            rows.append({"month": day()[:7],
                         "income_band": any_locale.random_element(["under-20k", "20k-50k", "50k-100k", "100k-200k"]),
                         "account_type": any_locale.random_element(["current", "savings", "credit-card"]),
                         "monthly_spend_eur": float(any_locale.pydecimal(min_value=200, max_value=6000,
                                                                         right_digits=2)),
                         "top_spending_category": any_locale.random_element(["housing", "groceries", "transport",
                                                                             "leisure"])})
        else:
            raise ValueError(f"no sample rows for category {category!r}; "
                             f"there are for demographics, health, fitness, location and finance")
    return rows
