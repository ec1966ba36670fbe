"""The anonymizer service's rules, pure: which definitions are accepted, whose records may go into a
version, which versions must be superseded, what a finished build appends. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from datacoop.errors import RefusalKind
from datacoop.errors import Refused as BaseRefused
from datacoop.events.datasets import (
    DatasetDefined,
    DatasetVersionPublished,
    DatasetVersionSuperseded,
)
from datacoop.events.registry import Event
from services.anonymizer.definition import DefinitionError, ResolvedDefinition, parse_definition, resolve

_SLUG = re.compile(r"^[a-z][a-z0-9-]{1,63}$")


class Refused(BaseRefused):
    """A command the dataset rules refuse; `problems` lists every fix for a refused definition."""

    def __init__(self, kind: RefusalKind, message: str, problems: list[str] | None = None) -> None:
        super().__init__(kind, message, **({"problems": problems} if problems else {}))
        self.problems = problems or []


@dataclass(frozen=True)
class Vocabulary:
    """What a definition may name: the consent catalog's purposes and categories, and the vault's fields."""

    purposes: frozenset[str]
    categories: frozenset[str]
    fields: Mapping[str, frozenset[str]]  # vault category -> its field names


def check_definition(raw: Any, vocabulary: Vocabulary, shared: Path | None = None,
                     source: str = "<api>", *, replayed: bool = False) -> ResolvedDefinition:
    """The resolved definition, or DefinitionError listing every problem (the engine's and ours).

    ``replayed`` for a definition read back from the log: it was accepted under the rules of its day, so a
    column it left in no role is published unchanged as it was then (``definition.resolve``), not refused."""
    definition = parse_definition(raw, source)
    problems: list[str] = []
    try:
        resolved: ResolvedDefinition | None = resolve(definition, shared, replayed=replayed)
    except DefinitionError as exc:
        resolved, problems = None, list(exc.problems)
    d = definition
    if not _SLUG.match(d.name):
        problems.append(f"name {d.name!r} must be a slug (a-z, 0-9, '-', 2-64 chars): it is the dataset id")
    if d.purpose not in vocabulary.purposes:
        problems.append(f"purpose {d.purpose!r} is not in the consent catalog; use one of "
                        f"{', '.join(sorted(vocabulary.purposes))}")
    unknown = [c for c in d.data_categories if c not in vocabulary.categories]
    if unknown:
        problems.append(f"data categories {unknown} are not in the consent catalog; use some of "
                        f"{', '.join(sorted(vocabulary.categories))}")
    if not d.data_categories:
        problems.append("data_categories is empty; name the categories whose records the dataset uses")
    readable = [c for c in d.data_categories if c in vocabulary.fields]
    if d.data_categories and not readable:
        problems.append(f"none of {d.data_categories} is a category the vault holds records of "
                        f"({', '.join(sorted(vocabulary.fields))})")
    available = set().union(*(vocabulary.fields[c] for c in readable)) if readable else set()
    missing = [c for c in d.columns if readable and c not in available]
    if missing:
        problems.append(f"column(s) {missing} are not fields of the records of {readable}; "
                        f"fields there: {', '.join(sorted(available))}")
    if problems or resolved is None:
        raise DefinitionError(d.name, problems)
    return resolved


@dataclass(frozen=True)
class DefinitionState:
    dataset_id: str
    definition_version: int
    definition: dict[str, Any]


def decide_define(existing: DefinitionState | None, resolved: ResolvedDefinition, raw: dict[str, Any],
                  source: Literal["file", "api"], now: datetime) -> list[Event]:
    """A new definition or a newer version of one; the same content again is no event."""
    d = resolved.definition
    if existing is not None:
        if d.version == existing.definition_version:
            if existing.definition == raw:
                return []
            raise Refused("conflict", f"dataset {d.name} already has a different definition version {d.version}; "
                                      f"bump version to {existing.definition_version + 1} to change it")
        if d.version < existing.definition_version:
            raise Refused("conflict", f"dataset {d.name} is at definition version {existing.definition_version}; "
                                      f"version {d.version} is older, use {existing.definition_version + 1}")
    return [DatasetDefined(dataset_id=d.name, definition_version=d.version, purpose=d.purpose,
                           categories=sorted(set(d.data_categories)), definition=raw, source=source,
                           defined_at=now)]


# -- eligibility ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConsentRow:
    consent_id: str
    purpose: str
    categories: frozenset[str]
    status: str  # active | revoked | expired
    expires_at: datetime | None


def covers(consent: ConsentRow, purpose: str, categories: Iterable[str], now: datetime) -> bool:
    """Active, unexpired at `now`, for `purpose` and every one of `categories`."""
    return (consent.status == "active" and consent.purpose == purpose
            and (consent.expires_at is None or consent.expires_at > now)
            and set(categories) <= consent.categories)


def eligible(consents: Iterable[ConsentRow], erased: bool, purpose: str, categories: Iterable[str],
             now: datetime) -> bool:
    cats = list(categories)
    return not erased and any(covers(c, purpose, cats, now) for c in consents)


# -- versions ------------------------------------------------------------------------------------

def decide_supersede(dataset_id: str, live: Mapping[int, Iterable[str]], ineligible: set[str], now: datetime,
                     superseded_by: int | None = None) -> list[Event]:
    """Every live version that contains a member no longer eligible (revoked, expired, erased); and when
    `superseded_by` is a version just published, every older live version as well: new sales use the
    newest version (those already sold stay with their buyers)."""
    out: list[Event] = []
    for version in sorted(live):
        gone = sorted(set(live[version]) & ineligible)
        if gone:
            reason = (f"contained records of {len(gone)} member(s) whose consent ended or who asked to be "
                      "forgotten; buy the newest version")
        elif superseded_by is not None and version < superseded_by:
            reason = f"replaced by version {superseded_by}, built from the records eligible now; buy that one"
        else:
            continue
        out.append(DatasetVersionSuperseded(dataset_id=dataset_id, version=version, superseded_by=superseded_by,
                                            superseded_at=now, reason=reason))
    return out


def departed(contributors: Iterable[str], eligible: set[str]) -> set[str]:
    """The contributors of a version about to be published who are no longer eligible: while there are any
    it must not be published (the build drops their rows and anonymizes again)."""
    return set(contributors) - eligible


def identical_on_offer(on_offer: Mapping[str, Any] | None, sha256: str, contributor_weights: Mapping[str, int],
                       eligible: set[str]) -> int | None:
    """The version on offer (`on_offer`: a published version as the projection lists it) when a build's output
    is exactly it again, else None. Exactly: the same Parquet (`sha256`: the rows, pseudonyms and columns a
    buyer downloads) and the same `contributor_weights` (settlement splits a sale by the version's weights, so
    keeping it must pay the members the new version would), none of whom has left (a version holding a
    member no longer eligible is never kept). Then publishing would put the same data on sale twice and
    supersede the version on offer, whose unpaid orders could no longer be paid."""
    if on_offer is None or on_offer.get("superseded"):
        return None
    weights = dict(on_offer.get("contributor_weights") or {})
    if on_offer["sha256"] != sha256 or weights != dict(contributor_weights) or departed(weights, eligible):
        return None
    return int(on_offer["version"])


def decide_successor(dataset_id: str, versions: Iterable[Mapping[str, Any]], successor: int) -> list[Event]:
    """Versions superseded without a successor (a member left and they went off sale at once, or the build
    after failed) get the version just published as theirs; reason and time stay those of the first event."""
    return [DatasetVersionSuperseded(dataset_id=dataset_id, version=v["version"], superseded_by=successor,
                                     superseded_at=v["superseded_at"], reason=v["superseded_reason"])
            for v in versions
            if v["superseded"] and v["superseded_by"] is None and v["version"] < successor
            and v["superseded_at"] is not None and v["superseded_reason"]]


def next_version(latest: int | None) -> int:
    return (latest or 0) + 1


def published_event(dataset_id: str, version: int, resolved: ResolvedDefinition, location: str, sha256: str,
                    report: Any, columns: dict[str, str], weights: dict[str, int], achieved_k: int,
                    achieved_l: int, now: datetime) -> DatasetVersionPublished:
    """k (distinct members per class) and l are those achieved on the published rows (never below the
    model's); an empty version states the model's."""
    d = resolved.definition
    return DatasetVersionPublished(
        dataset_id=dataset_id, version=version, purpose=d.purpose, categories=sorted(set(d.data_categories)),
        location=location, sha256=sha256, rows=report.rows_published, suppressed_rows=report.rows_suppressed,
        k=max(achieved_k, report.k), l_diversity=float(max(achieved_l, 1)) if achieved_k else float(report.l),
        privacy_model=privacy_model_text(resolved),
        information_loss=min(1.0, max(0.0, report.loss)), epsilon=d.aggregates.epsilon, columns=columns,
        contributor_weights=weights, published_at=now)


def privacy_model_text(resolved: ResolvedDefinition) -> str:
    m = resolved.model
    text = f"k-anonymity k={m.k} members (at most {m.max_rows_per_member} row(s) each)"
    if m.l > 1:
        text += f", {m.l_kind} l-diversity l={m.l}"
    if m.t is not None:
        text += f", t-closeness t={m.t}"
    return text + f", suppression limit {m.suppression_limit:g}"
