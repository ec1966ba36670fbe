"""The service's builder without a broker: a writer that applies what it appends to the projection at once,
and the vault's decrypt replaced by rows in memory. What a build appends when members leave before or
during it, and that a failed build's detail never quotes a record's value."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from datacoop.bus.consumer import Delivery
from datacoop.events.datasets import (
    DatasetDefined,
    DatasetVersionPublished,
    DatasetVersionSuperseded,
    VersionBuildFinished,
    VersionBuildFinishedV1,
    VersionBuildStarted,
)
from datacoop.events.envelope import Envelope
from datacoop.events.members import ConsentGranted, ConsentRevoked
from datacoop.events.records import RecordsContributed
from datacoop.events.registry import REGISTRY, Event
from datacoop.store import ProjectionStore
from services.anonymizer import build as pipeline
from services.anonymizer.definition import DefinitionError, shared_dir
from services.anonymizer.projection import SCHEMA_SQL, AnonymizerProjection
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
                                  anonymizer_definitions_dir=tmp_path / "no-definitions", anonymizer_min_interval_s=0)
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


def _pseudonym(svc: AnonymizerService, member: str, version: int) -> str:
    """The member's pseudonym in `version` (each version has its own key)."""
    return pipeline.pseudonyms(pipeline.version_key(svc.master_secret, DATASET, version), [member])[member]


def test_a_member_who_revokes_during_a_build_is_not_in_the_version_it_publishes(service) -> None:
    leaver = MEMBERS[0]

    async def revoke_while_decrypting() -> None:
        _revoke(service, leaver)  # the consumer applies the revocation while the vault answers

    service._decrypt = _vault(adult_records(), revoke_while_decrypting)  # type: ignore[method-assign]
    asyncio.run(service.run_build(BuildRequest(DATASET, "on-demand")))
    (version,) = _published(service)
    assert leaver not in version.contributor_weights and len(version.contributor_weights) == len(MEMBERS) - 1
    assert _pseudonym(service, leaver, version.version) not in _pseudonyms_in(service, version)
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
    assert leaver not in v2.contributor_weights and _pseudonym(service, leaver, 2) not in _pseudonyms_in(service, v2)
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
    traced = "Traceback" in caplog.text or 'File "' in caplog.text
    assert traced == (poison == "unexpected"), "the frames of a bug, not of an expected refusal"


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
        assert _pseudonym(service, gone[0], version.version) not in _pseudonyms_in(service, version)
        assert parquet.exists()
    else:
        assert finished.outcome == "failed" and not _published(service)
        assert not parquet.exists() and pipeline.read_aggregates(service.aggregates_db, DATASET, 1) is None


# -- a build whose output is that of the version on offer publishes nothing ------------------------------

NEWCOMER = f"0x{len(MEMBERS) + 1:040x}"


def _contribute(svc: AnonymizerService, member: str, prefix: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` (fields) as records of a new upload of `member`: new record ids, sorting after every earlier one
    (the vault's ids begin with the upload's UUIDv7), applied to the projection; the records."""
    records = [{"record_id": f"{prefix}-{j}", "member": member, "fields": fields} for j, fields in enumerate(rows)]
    apply(svc, [_delivery(RecordsContributed(
        member=member, category="demographics", upload_id=f"up-{prefix}", upload_tag="0" * 64, schema_version=1,
        chunk=0, chunks=1, records=[{"record_id": r["record_id"], "nonce": "AAAAAAAAAAAAAAAA", "ciphertext": "AAAA"}
                                    for r in records], contributed_at=NOW), member)])
    return records


def _with_newcomer(svc: AnonymizerService) -> list[dict[str, Any]]:
    """The report's member: consent, one upload of two rows, a version with her; then the same two rows as a
    second upload (new record ids). The vault's records, as it serves them (by record id)."""
    apply(svc, [_delivery(ConsentGranted(member=NEWCOMER, consent_id=f"c-{NEWCOMER}", purpose=PURPOSE,
                                         categories=["demographics"], granted_at=NOW, expires_at=None,
                                         catalog_version=1, nonce=1, signature=SIG), NEWCOMER)])
    rows = [r["fields"] for r in adult_records()[:ROWS_EACH]]
    records = adult_records() + _contribute(svc, NEWCOMER, "w-first", rows)
    svc._decrypt = _vault(records)  # type: ignore[method-assign]
    asyncio.run(svc.run_build(BuildRequest(DATASET, "on-demand")))
    assert [v.version for v in _published(svc)] == [1] and NEWCOMER in _published(svc)[0].contributor_weights
    records += _contribute(svc, NEWCOMER, "x-again", rows)
    svc._decrypt = _vault(sorted(records, key=lambda r: r["record_id"]))  # type: ignore[method-assign]
    return records


def test_new_records_that_publish_the_same_rows_again_leave_the_version_on_offer(service) -> None:
    _with_newcomer(service)
    assert service.unchanged_since(DATASET) is None  # other record ids: the record-id check would build
    req = BuildRequest(DATASET, "change")
    asyncio.run(service.run_build(req))
    assert [v.version for v in _published(service)] == [1]
    v1 = service.projection.version(DATASET, 1)
    assert v1 is not None and not v1["superseded"]
    assert not [e for e in _events(service) if isinstance(e, DatasetVersionSuperseded)]
    status = service.build_status(req.build_id)
    assert status is not None and (status["outcome"], status["version"]) == ("unchanged", 1), status
    assert "version 1 already holds" in status["detail"] and "force" in status["detail"]
    assert service.live_progress[req.build_id]["outcome"] == "unchanged"
    assert not pipeline.parquet_path(Path(service.store_dir), DATASET, 2).exists()
    assert pipeline.read_aggregates(service.aggregates_db, DATASET, 2) is None
    assert service.unchanged_since(DATASET) == 1  # these inputs are known to give version 1: no second decrypt


def test_a_build_of_the_same_rows_again_ends_unchanged_on_the_topic_and_the_trigger_rests(service) -> None:
    """The debounced trigger builds once for the new record ids; the build ends `unchanged`, naming the
    version kept, and nothing follows."""
    _with_newcomer(service)
    service.config.anonymizer_debounce_s = 0.0  # the new upload's records are quiet long enough
    asyncio.run(service.builder_once())
    finished = [e for e in _events(service) if isinstance(e, VersionBuildFinished)]
    assert [(f.outcome, f.version) for f in finished] == [("published", 1), ("unchanged", 1)]
    assert finished[-1].detail.startswith("version 1 already holds exactly what this build would publish")
    assert sorted((b["trigger"], b["outcome"], b["version"]) for b in service.projection.builds(DATASET)) == [
        ("change", "unchanged", 1), ("on-demand", "published", 1)]
    before = len(_events(service))
    service._changed[DATASET] = 0.0
    asyncio.run(service.builder_once())
    assert len(_events(service)) == before  # the inputs now known to give version 1: nothing to build
    store = ProjectionStore(":memory:", SCHEMA_SQL)
    replayed = AnonymizerProjection(store.conn)
    with store.transaction() as tx:
        replayed.apply(tx, [_delivery(e, DATASET) for e in _events(service)])
    assert sorted(b["outcome"] for b in replayed.builds(DATASET)) == ["published", "unchanged"]
    assert replayed.newest_live_inputs(DATASET) == service.projection.newest_live_inputs(DATASET)


def _change_builds(svc: AnonymizerService) -> int:
    return sum(1 for e in _events(svc) if isinstance(e, VersionBuildStarted) and e.trigger == "change")


def test_builds_on_changes_wait_the_minimum_interval_after_the_last_build(service) -> None:
    """Each build replaces the version on sale, whose unpaid orders can then no longer be paid: a dataset whose
    members contribute one by one got a new version every few seconds. Changes now wait until the interval
    since its last build has passed, then build once."""
    _with_newcomer(service)  # an on-demand build just began and published version 1
    service.config.anonymizer_debounce_s = 0.0
    service.config.anonymizer_min_interval_s = 900.0
    asyncio.run(service.builder_once())
    assert _change_builds(service) == 0 and DATASET in service._changed, "held back, not forgotten"
    service._build_started[DATASET] -= 901  # the interval has passed
    asyncio.run(service.builder_once())
    assert _change_builds(service) == 1 and DATASET not in service._changed


def test_changes_that_never_pause_still_get_a_build_after_the_longest_wait(service) -> None:
    """Quiet for the debounce never comes while members keep contributing: the first change waiting longer than
    DATACOOP_ANONYMIZER_MAX_WAIT_S builds all the same (no build ever came before)."""
    _with_newcomer(service)
    service.config.anonymizer_debounce_s = 60.0
    service.config.anonymizer_min_interval_s = 0.0
    now = time.monotonic()
    service._changed[DATASET] = now  # the latest change a moment ago
    service._first_changed[DATASET] = now - 10
    asyncio.run(service.builder_once())
    assert _change_builds(service) == 0, "the first change waited 10 s of 300: keep waiting for a pause"
    service._first_changed[DATASET] = now - service.config.anonymizer_max_wait_s - 1
    asyncio.run(service.builder_once())
    assert _change_builds(service) == 1


def test_a_v1_log_reads_a_kept_version_as_unchanged_and_the_rest_as_written(service) -> None:
    """build_finished.v1 said `published` for a build whose output was identical to the version on offer; read
    through the registry (the consumer's path for an old version), it is v2's `unchanged`, and nothing else is."""
    _with_newcomer(service)
    service.config.anonymizer_debounce_s = 0.0
    asyncio.run(service.builder_once())
    v2_ends = [e for e in _events(service) if isinstance(e, VersionBuildFinished)]
    as_v1 = [{**e.model_dump(mode="json"), "outcome": "failed" if e.outcome == "failed" else "published"}
             for e in v2_ends]  # as the v1 anonymizer wrote them
    read = [REGISTRY.decode(VersionBuildFinishedV1.type_name(), d) for d in as_v1]
    assert all(type(r) is VersionBuildFinished for r in read)
    assert [(r.outcome, r.version, r.detail) for r in read] == [(e.outcome, e.version, e.detail) for e in v2_ends]
    assert [r.outcome for r in read] == ["published", "unchanged"]
    forged = {**as_v1[-1], "version": 2}  # the detail names another version than the event: not a kept one
    assert REGISTRY.decode(VersionBuildFinishedV1.type_name(), forged).outcome == "published"  # type: ignore[attr-defined]
    failed = {**as_v1[-1], "outcome": "failed", "version": None}
    assert REGISTRY.decode(VersionBuildFinishedV1.type_name(), failed).outcome == "failed"  # type: ignore[attr-defined]


def test_each_version_has_its_own_pseudonyms_so_two_versions_cannot_be_joined_row_to_row(service) -> None:
    """The same rows published again as version 2 share no pseudonym with version 1 (one key per dataset made
    them equal: versions joined on them, and the pseudonym that appears or vanishes named who joined or left);
    within a version each member still has one pseudonym, under that version's key."""
    _with_newcomer(service)
    asyncio.run(service.run_build(BuildRequest(DATASET, "on-demand", force=True)))
    v1, v2 = _published(service)
    first, second = _pseudonyms_in(service, v1), _pseudonyms_in(service, v2)
    assert first and second and not first & second
    assert {_pseudonym(service, m, 2) for m in v2.contributor_weights} == second
    assert {_pseudonym(service, m, 1) for m in v1.contributor_weights} == first


def test_a_forced_build_publishes_the_same_rows_again_and_says_so(service) -> None:
    _with_newcomer(service)
    req = BuildRequest(DATASET, "on-demand", force=True)
    asyncio.run(service.run_build(req))
    v1, v2 = _published(service)
    assert (v2.version, v2.contributor_weights) == (2, v1.contributor_weights)
    assert v2.sha256 != v1.sha256, "the same rows under version 2's own pseudonyms"

    def rows(v: DatasetVersionPublished) -> list[dict[str, Any]]:
        table = pq.read_table(io.BytesIO(Path(v.location.removeprefix("file://")).read_bytes()))
        return table.drop_columns([pipeline.PSEUDONYM_COLUMN]).to_pylist()
    assert rows(v2) == rows(v1)
    finished = [e for e in _events(service) if isinstance(e, VersionBuildFinished)][-1]
    assert (finished.outcome, finished.version) == ("published", 2)
    assert "forced: the same rows and contributors as version 1" in finished.detail
    assert "unpaid orders for version 1 can no longer be paid" in finished.detail
    status = service.build_status(req.build_id)
    assert status is not None and (status["outcome"], status["detail"]) == ("published", finished.detail)
    old = service.projection.version(DATASET, 1)
    assert old is not None and old["superseded"] and old["superseded_by"] == 2


@pytest.mark.parametrize("when", ["while decrypting", "before the append"])
def test_a_member_who_leaves_is_never_kept_on_offer_by_an_identical_build(service, monkeypatch, when) -> None:
    """The newcomer's second upload would give version 1 again, but she revokes during the build: her rows
    go, the output is no longer version 1's, and version 1 (holding her) leaves the offer, replaced."""
    records = _with_newcomer(service)
    if when == "while decrypting":
        async def revoke() -> None:
            _revoke(service, NEWCOMER)

        service._decrypt = _vault(sorted(records, key=lambda r: r["record_id"]), revoke)  # type: ignore[method-assign]
    else:
        identical_on_offer = service._identical_on_offer

        def then_she_leaves(dataset_id: str, built: pipeline.BuiltVersion) -> int | None:
            same = identical_on_offer(dataset_id, built)
            if NEWCOMER in service._eligible(DATASET):
                assert same == 1
                _revoke(service, NEWCOMER)  # after the check, before the append: the lock's check sees it
            return same

        monkeypatch.setattr(service, "_identical_on_offer", then_she_leaves)
    asyncio.run(service.run_build(BuildRequest(DATASET, "change")))
    v1, v2 = _published(service)
    assert NEWCOMER not in v2.contributor_weights and v2.sha256 != v1.sha256
    assert _pseudonym(service, NEWCOMER, 2) not in _pseudonyms_in(service, v2)
    old = service.projection.version(DATASET, 1)
    assert old is not None and old["superseded"] and old["superseded_by"] == 2
    assert "consent ended" in old["superseded_reason"]


def test_a_logged_definition_with_a_column_in_no_role_still_builds_but_is_refused_when_offered_again(service) -> None:
    """Before every column needed a role, a column in none was published as it is. Such a definition in the log
    still builds, that column unchanged; offered again (a datasets/ file at start, the API), it is refused."""
    old = census_definition(k=3, l=1, max_rows_per_member=ROWS_EACH) | {"name": "census-old", "sensitive": []}
    apply(service, [_delivery(DatasetDefined(dataset_id="census-old", definition_version=1, purpose=PURPOSE,
                                             categories=["demographics"], definition=old, source="file",
                                             defined_at=NOW), "census-old")])
    asyncio.run(service.run_build(BuildRequest("census-old", "on-demand")))
    (version,) = _published(service)
    table = pq.read_table(io.BytesIO(Path(version.location.removeprefix("file://")).read_bytes()))
    assert set(table.column("salary-class").to_pylist()) == {"<=50K", ">50K"}, "published unchanged, as before"
    with pytest.raises(DefinitionError) as refused:
        asyncio.run(service.define(old, "file"))
    assert any("'salary-class' is in no role" in p for p in refused.value.problems)
