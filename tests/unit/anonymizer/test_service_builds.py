"""The service's builder without a broker: a writer that applies what it appends to the projection at once,
and the vault's decrypt replaced by rows in memory. What a build appends when members leave before or
during it, and that a failed build's detail never quotes a record's value."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from datacoop.bus.consumer import Delivery
from datacoop.events.datasets import (
    DatasetVersionPublished,
    DatasetVersionSuperseded,
    VersionBuildFinished,
)
from datacoop.events.envelope import Envelope
from datacoop.events.members import ConsentGranted, ConsentRevoked
from datacoop.events.records import RecordsContributed
from datacoop.events.registry import Event
from services.anonymizer import build as pipeline
from services.anonymizer.definition import shared_dir
from services.anonymizer.service import AnonymizerService, BuildRequest
from services.anonymizer.settings import AnonymizerSettings
from tests.e2e.anonymizer_fixtures import DATASET, PURPOSE, census_definition

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SIG = "0x" + "11" * 65
MEMBERS = [f"0x{i + 1:040x}" for i in range(24)]
ROWS_EACH = 2
MARKER = "Zz-marker-7f3a"
_offsets = count()


def _delivery(ev: Event, subject: str) -> Delivery:
    env = Envelope(source="test", type=ev.type_name(), subject=subject, seq=1, data=ev.model_dump(mode="json"))
    return Delivery("t", 0, next(_offsets), env, ev)


class AppliedAtOnce:
    """The writer's contract (decide under the subject's lock, events applied before the next command)
    without Kafka; keeps every event it appended, in order."""

    def __init__(self, svc: AnonymizerService) -> None:
        self.svc = svc
        self.events: list[Event] = []
        self.lock = asyncio.Lock()

    async def execute(self, subject: str, decide: Callable[[], Sequence[Event]], **_: Any) -> list[Delivery]:
        async with self.lock:
            events = list(decide())
            deliveries = [_delivery(ev, subject) for ev in events]
            if deliveries:
                apply(self.svc, deliveries)
                self.events += events
            return deliveries


def apply(svc: AnonymizerService, deliveries: list[Delivery]) -> None:
    """What the consumer does with events it reads: into the projection, then the listeners."""
    with svc.store.transaction() as tx:
        svc.projection.apply(tx, deliveries)
    svc._on_applied(deliveries)


def adult_records() -> list[dict[str, Any]]:
    with (shared_dir() / "data" / "adult" / "adult.csv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return [{"record_id": f"u-{m:03d}-{j}", "member": member, "fields": {**rows[m * ROWS_EACH + j],
                                                                        "age": int(rows[m * ROWS_EACH + j]["age"])}}
            for m, member in enumerate(MEMBERS) for j in range(ROWS_EACH)]


@pytest.fixture
def service(tmp_path: Path) -> AnonymizerService:
    settings = AnonymizerSettings(data_dir=tmp_path, anonymizer_operator_token="o" * 24,
                                  vault_service_token="v" * 24, anonymizer_pseudonym_key="p" * 32,
                                  anonymizer_object_store=str(tmp_path / "objects"),
                                  anonymizer_definitions_dir=tmp_path / "no-definitions")
    svc = AnonymizerService(settings, clock=lambda: NOW)
    svc.writer = AppliedAtOnce(svc)  # type: ignore[assignment]
    svc._warmed = True
    records = adult_records()
    apply(svc, [_delivery(ConsentGranted(member=m, consent_id=f"c-{m}", purpose=PURPOSE, categories=["demographics"],
                                         granted_at=NOW, expires_at=None, catalog_version=1, nonce=1, signature=SIG), m)
                for m in MEMBERS])
    apply(svc, [_delivery(RecordsContributed(
        member=m, category="demographics", upload_id=f"up-{m}", upload_tag="0" * 64, schema_version=1, chunk=0,
        chunks=1, records=[{"record_id": r["record_id"], "nonce": "AAAAAAAAAAAAAAAA", "ciphertext": "AAAA"}
                           for r in records if r["member"] == m], contributed_at=NOW), m) for m in MEMBERS])
    asyncio.run(svc.define(census_definition(k=3, l=2, max_rows_per_member=ROWS_EACH), "api"))
    svc._decrypt = _vault(records)  # type: ignore[method-assign]
    return svc


def _vault(records: list[dict[str, Any]], during: Callable[[], Any] | None = None) -> Any:
    async def decrypt(req: BuildRequest, categories: list[str], members: list[str], n: int) -> list[dict[str, Any]]:
        if during is not None:
            await during()
        return [r for r in records if r["member"] in set(members)]
    return decrypt


def _revoke(svc: AnonymizerService, member: str) -> None:
    apply(svc, [_delivery(ConsentRevoked(member=member, consent_id=f"c-{member}", revoked_at=NOW, nonce=2,
                                         signature=SIG), member)])


def _events(svc: AnonymizerService) -> list[Event]:
    return svc.writer.events  # type: ignore[union-attr]


def _published(svc: AnonymizerService) -> list[DatasetVersionPublished]:
    return [e for e in _events(svc) if isinstance(e, DatasetVersionPublished)]


def _pseudonyms_in(svc: AnonymizerService, version: DatasetVersionPublished) -> set[str]:
    table = pq.read_table(io.BytesIO(Path(version.location.removeprefix("file://")).read_bytes()))
    return set(table.column(pipeline.PSEUDONYM_COLUMN).to_pylist())


def _pseudonym(svc: AnonymizerService, member: str) -> str:
    return pipeline.pseudonyms(pipeline.dataset_key(svc.master_secret, DATASET), [member])[member]


def test_a_member_who_revokes_during_a_build_is_not_in_the_version_it_publishes(service) -> None:
    leaver = MEMBERS[0]

    async def revoke_while_decrypting() -> None:
        _revoke(service, leaver)  # the consumer applies the revocation while the vault answers

    service._decrypt = _vault(adult_records(), revoke_while_decrypting)  # type: ignore[method-assign]
    asyncio.run(service.run_build(BuildRequest(DATASET, "on-demand")))
    (version,) = _published(service)
    assert leaver not in version.contributor_weights and len(version.contributor_weights) == len(MEMBERS) - 1
    assert _pseudonym(service, leaver) not in _pseudonyms_in(service, version)
    finished = [e for e in _events(service) if isinstance(e, VersionBuildFinished)]
    assert [(f.outcome, f.version) for f in finished] == [("published", 1)]


def test_a_version_holding_a_member_who_left_goes_off_sale_at_once_even_during_a_build(service) -> None:
    asyncio.run(service.run_build(BuildRequest(DATASET, "on-demand")))
    leaver = MEMBERS[1]
    assert leaver in _published(service)[0].contributor_weights

    async def scenario() -> None:
        service.runner.caught_up.set()
        watcher = asyncio.create_task(service.supersede_forever())
        vault_answers = asyncio.Event()

        async def slow_vault() -> None:
            _revoke(service, leaver)  # she leaves while another build of the dataset is under way
            await asyncio.sleep(0.3)
            assert 1 not in service.projection.live_contributors(DATASET), "v1 still on sale during the build"
            vault_answers.set()

        service._decrypt = _vault(adult_records(), slow_vault)  # type: ignore[method-assign]
        await service.run_build(BuildRequest(DATASET, "on-demand", force=True))
        assert vault_answers.is_set()
        while service.queue:  # the watcher asked for a build too: the inputs are those of version 2
            await service.builder_once()
        watcher.cancel()

    asyncio.run(scenario())
    events = _events(service)
    gone = next(i for i, e in enumerate(events) if isinstance(e, DatasetVersionSuperseded) and e.version == 1)
    assert events[gone].superseded_by is None and "consent ended" in events[gone].reason  # type: ignore[attr-defined]
    assert gone < next(i for i, e in enumerate(events) if isinstance(e, DatasetVersionPublished) and e.version == 2)
    v2 = _published(service)[1]
    assert leaver not in v2.contributor_weights and _pseudonym(service, leaver) not in _pseudonyms_in(service, v2)
    v1 = service.projection.version(DATASET, 1)
    assert v1 is not None and v1["superseded"] and v1["superseded_by"] == 2  # its successor, named when published
    assert "consent ended" in v1["superseded_reason"]


@pytest.mark.parametrize("poison", ["hierarchy", "unexpected"])
def test_a_failed_build_never_quotes_a_records_value(service, poison, monkeypatch, caplog) -> None:
    records = adult_records()
    records[5]["fields"]["occupation"] = MARKER if poison == "hierarchy" else records[5]["fields"]["occupation"]
    service._decrypt = _vault(records)  # type: ignore[method-assign]
    if poison == "unexpected":
        def fails(*args: Any, **kwargs: Any) -> Any:
            raise ValueError(f"invalid literal for int() with base 10: {MARKER!r}")
        monkeypatch.setattr(pipeline, "build_version", fails)
    with caplog.at_level(logging.DEBUG):
        asyncio.run(service.run_build(BuildRequest(DATASET, "on-demand")))
    (finished,) = [e for e in _events(service) if isinstance(e, VersionBuildFinished)]
    assert finished.outcome == "failed" and finished.detail
    assert "occupation" in finished.detail if poison == "hierarchy" else "ValueError" in finished.detail
    assert MARKER not in "".join(e.model_dump_json() for e in _events(service))
    assert MARKER not in str(service.projection.builds(DATASET)) + str(service.live_progress)
    assert MARKER not in caplog.text


@pytest.mark.parametrize("leavers", [1, len(MEMBERS) - 2])
def test_members_who_leave_while_the_version_is_written_are_not_in_it(service, monkeypatch, leavers) -> None:
    """The last check runs in the same step as the append: a revocation applied after the files were
    written drops the member and anonymizes again; when too few members remain for k, nothing is
    published and the files written for that version are gone."""
    write_aggregates = pipeline.write_aggregates
    gone = MEMBERS[:leavers]

    def write_then_they_leave(*args: Any, **kwargs: Any) -> None:
        write_aggregates(*args, **kwargs)
        for member in gone:
            if member in service._eligible(DATASET):
                _revoke(service, member)

    monkeypatch.setattr(pipeline, "write_aggregates", write_then_they_leave)
    asyncio.run(service.run_build(BuildRequest(DATASET, "on-demand")))
    (finished,) = [e for e in _events(service) if isinstance(e, VersionBuildFinished)]
    parquet = pipeline.parquet_path(Path(service.store_dir), DATASET, 1)
    if leavers == 1:
        (version,) = _published(service)
        assert finished.outcome == "published" and not set(gone) & set(version.contributor_weights)
        assert _pseudonym(service, gone[0]) not in _pseudonyms_in(service, version)
        assert parquet.exists()
    else:
        assert finished.outcome == "failed" and not _published(service)
        assert not parquet.exists() and pipeline.read_aggregates(service.aggregates_db, DATASET, 1) is None
