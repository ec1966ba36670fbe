"""The catalog's versions: every published one is kept frozen, none may drop an entry, and a receipt describes a
consent in the words of the version it was granted under (not today's)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from services.consent.catalog import CatalogError, load_catalog
from services.consent.domain import Consent, Member
from services.consent.receipts import build_receipt

V1 = {"version": 1, "purposes": {"health-research": "Medical research"}, "categories": {"health": "Conditions"}}


def _write(folder: Path, current: dict[str, object], *kept: dict[str, object]) -> tuple[Path, Path]:
    history = folder / "history"
    history.mkdir(parents=True, exist_ok=True)
    for version in kept:
        (history / f"v{version['version']}.yaml").write_text(yaml.safe_dump(version))
    path = folder / "catalog.yaml"
    path.write_text(yaml.safe_dump(current))
    return path, history


def test_the_shipped_catalog_keeps_its_rules() -> None:
    catalog = load_catalog()
    assert catalog.version in catalog.history and catalog.at(catalog.version).purposes == catalog.purposes


def test_a_current_version_without_its_frozen_copy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="has no frozen copy: copy it to .*v1.yaml"):
        load_catalog.__wrapped__(*_write(tmp_path, V1))


def test_an_edit_without_a_version_bump_is_refused(tmp_path: Path) -> None:
    edited = {**V1, "purposes": {"health-research": "Any research at all"}}
    with pytest.raises(CatalogError, match="differs from its published version 1.*bump `version`"):
        load_catalog.__wrapped__(*_write(tmp_path, edited, V1))


def test_a_version_that_drops_an_entry_is_refused(tmp_path: Path) -> None:
    v2 = {"version": 2, "purposes": {"public-statistics": "Statistics"}, "categories": {"health": "Conditions"}}
    with pytest.raises(CatalogError, match="drops the purpose\\(s\\) health-research of version 1"):
        load_catalog.__wrapped__(*_write(tmp_path, v2, V1, v2))


def test_a_receipt_describes_a_consent_in_the_words_it_was_granted_under(tmp_path: Path) -> None:
    v2 = {"version": 2, "purposes": {"health-research": "Medical research, now also by companies",
                                     "public-statistics": "Statistics"},
          "categories": {"health": "Conditions and medication", "fitness": "Steps"}}
    catalog = load_catalog.__wrapped__(*_write(tmp_path, v2, V1, v2))
    at = datetime(2026, 5, 1, tzinfo=UTC)
    consent = Consent("c-1", "health-research", ("health",), granted_at=at, expires_at=None, catalog_version=1,
                      signature="0x" + "11" * 65, nonce=1)
    receipt = build_receipt(Member("0x" + "ab" * 20, registered=True), consent, catalog, at)
    assert receipt["catalog_version"] == 1
    assert receipt["purposes"][0]["description"] == "Medical research", "v1's words, not v2's"
    assert receipt["data_categories"] == [{"category": "health", "description": "Conditions"}]
