"""The anonymizer service's rules as tables: definitions accepted or refused, who is eligible, which
versions are superseded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from datacoop.events.datasets import DatasetDefined, DatasetVersionSuperseded
from services.anonymizer import domain
from services.anonymizer.definition import DefinitionError
from services.consent.catalog import load_catalog
from services.vault.categories import load_schemas
from tests.e2e.anonymizer_fixtures import census_definition

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def vocabulary() -> domain.Vocabulary:
    catalog = load_catalog()
    return domain.Vocabulary(frozenset(catalog.purposes), frozenset(catalog.categories),
                             {n: frozenset(f.name for f in s.fields) for n, s in load_schemas().items()})


def test_a_definition_over_consented_categories_and_vault_fields_is_accepted(vocabulary) -> None:
    resolved = domain.check_definition(census_definition(), vocabulary)
    assert resolved.definition.name == "census-stats" and resolved.model.k == 3
    assert domain.privacy_model_text(resolved) == ("k-anonymity k=3 members (at most 1 row(s) each), distinct "
                                                   "l-diversity l=2, suppression limit 0.1")


def test_a_bad_definition_is_refused_with_every_problem(vocabulary) -> None:
    bad = census_definition()
    bad |= {"name": "Census Stats", "purpose": "research.labour-market", "data_categories": ["demographics", "x"]}
    bad["columns"]["shoe-size"] = {"type": "integer", "min": 30, "max": 50}
    bad["privacy"]["k"] = 1
    with pytest.raises(DefinitionError) as refused:
        domain.check_definition(bad, vocabulary)
    text = " | ".join(refused.value.problems)
    for expected in ("must be a slug", "research.labour-market", "['x']", "shoe-size", "k=1"):
        assert expected in text


def test_structural_errors_are_refused_too(vocabulary) -> None:
    with pytest.raises(DefinitionError) as refused:
        domain.check_definition({"name": "x"}, vocabulary)
    assert any("purpose" in p for p in refused.value.problems)


@pytest.mark.parametrize(("existing_version", "existing_same", "new_version", "outcome"), [
    (None, False, 1, "event"),
    (1, True, 1, "nothing"),
    (1, False, 1, "conflict"),
    (2, False, 1, "conflict"),
    (1, False, 2, "event"),
])
def test_defining_a_dataset(vocabulary, existing_version, existing_same, new_version, outcome) -> None:
    raw = census_definition(version=new_version)
    resolved = domain.check_definition(raw, vocabulary)
    existing = None
    if existing_version is not None:
        content = raw if existing_same else census_definition(k=4, version=existing_version)
        existing = domain.DefinitionState("census-stats", existing_version, content)
    if outcome == "conflict":
        with pytest.raises(domain.Refused) as refused:
            domain.decide_define(existing, resolved, raw, "api", NOW)
        assert refused.value.kind == "conflict"
        return
    events = domain.decide_define(existing, resolved, raw, "api", NOW)
    if outcome == "nothing":
        assert events == []
    else:
        (ev,) = events
        assert isinstance(ev, DatasetDefined)
        assert (ev.dataset_id, ev.definition_version, ev.purpose, ev.categories) == (
            "census-stats", new_version, "public-statistics", ["demographics"])


def _consent(status: str = "active", purpose: str = "public-statistics",
             categories: tuple[str, ...] = ("demographics",), expires_at: datetime | None = None) -> domain.ConsentRow:
    return domain.ConsentRow("c1", purpose, frozenset(categories), status, expires_at)


@pytest.mark.parametrize(("consent", "erased", "eligible"), [
    (_consent(), False, True),
    (_consent(categories=("demographics", "health")), False, True),
    (_consent(status="revoked"), False, False),
    (_consent(status="expired"), False, False),
    (_consent(expires_at=NOW - timedelta(seconds=1)), False, False),
    (_consent(expires_at=NOW + timedelta(days=1)), False, True),
    (_consent(purpose="ai-training"), False, False),
    (_consent(categories=("health",)), False, False),
    (_consent(), True, False),
])
def test_who_may_be_in_a_version(consent, erased, eligible) -> None:
    assert domain.eligible([consent], erased, "public-statistics", ["demographics"], NOW) is eligible


def test_versions_with_a_member_no_longer_eligible_are_superseded() -> None:
    live = {1: ["0xa", "0xb"], 2: ["0xb"], 3: ["0xc"]}
    events = domain.decide_supersede("census-stats", live, {"0xa"}, NOW)  # a failed build: nothing replaces them
    assert [(e.version, e.superseded_by) for e in events if isinstance(e, DatasetVersionSuperseded)] == [(1, None)]
    events = domain.decide_supersede("census-stats", live, {"0xb"}, NOW)
    assert [e.version for e in events] == [1, 2]  # type: ignore[attr-defined]
    assert domain.decide_supersede("census-stats", live, set(), NOW) == []
    assert domain.next_version(None) == 1 and domain.next_version(3) == 4


def test_a_published_version_replaces_every_older_one_still_on_offer() -> None:
    """New sales use the newest version: the older ones leave the catalog (their buyers keep them), and
    the reason says whether a member left or a newer version replaced them."""
    live = {1: ["0xa", "0xb"], 2: ["0xb"], 3: ["0xc"]}
    events = [e for e in domain.decide_supersede("census-stats", live, {"0xa"}, NOW, superseded_by=4)
              if isinstance(e, DatasetVersionSuperseded)]
    assert [(e.version, e.superseded_by) for e in events] == [(1, 4), (2, 4), (3, 4)]
    assert "consent ended" in events[0].reason and "replaced by version 4" in events[1].reason
    assert domain.decide_supersede("census-stats", {5: ["0xc"]}, set(), NOW, superseded_by=4) == []


_ON_OFFER = {"version": 4, "sha256": "e1" * 32, "contributor_weights": {"0xa": 2, "0xb": 1}, "superseded": False}


@pytest.mark.parametrize(("on_offer", "sha256", "weights", "eligible", "kept"), [
    (_ON_OFFER, "e1" * 32, {"0xb": 1, "0xa": 2}, {"0xa", "0xb", "0xc"}, 4),
    (_ON_OFFER, "f2" * 32, {"0xa": 2, "0xb": 1}, {"0xa", "0xb"}, None),  # other rows: a new version
    (_ON_OFFER, "e1" * 32, {"0xa": 1, "0xb": 2}, {"0xa", "0xb"}, None),  # a sale would pay others: publish
    (_ON_OFFER, "e1" * 32, {"0xa": 2, "0xb": 1, "0xc": 0}, {"0xa", "0xb", "0xc"}, None),
    (_ON_OFFER, "e1" * 32, {"0xa": 2, "0xb": 1}, {"0xb"}, None),  # 0xa left: never kept on offer
    ({**_ON_OFFER, "superseded": True}, "e1" * 32, {"0xa": 2, "0xb": 1}, {"0xa", "0xb"}, None),
    (None, "e1" * 32, {"0xa": 2, "0xb": 1}, {"0xa", "0xb"}, None),
])
def test_a_build_identical_to_the_version_on_offer_keeps_it(on_offer, sha256, weights, eligible, kept) -> None:
    """Identical is what a buyer gets and what a sale pays: the Parquet's sha256 and the contributor weights,
    of a version still on offer whose contributors are all still eligible."""
    assert domain.identical_on_offer(on_offer, sha256, weights, eligible) == kept
