"""schemas/ must equal what the models generate, and published versions must stay compatible."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field, PlainSerializer, ValidationError, create_model, model_validator

from datacoop import schemas
from datacoop.events import REGISTRY, Event, EventRegistry
from datacoop.events.members import ConsentGranted, MemberRegistered
from datacoop.events.types import HexSignature, WalletAddress


def test_committed_schemas_are_what_the_models_generate() -> None:
    assert schemas.drift() == [], "run `make schemas` and commit schemas/"


def test_committed_schemas_are_compatible_with_the_models() -> None:
    assert schemas.compatibility() == []


def test_asyncapi_lists_every_topic_and_every_registered_message() -> None:
    doc = schemas.asyncapi(REGISTRY)
    assert doc["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {"datacoop.members", "datacoop.records", "datacoop.datasets", "datacoop.orders",
            "datacoop.payouts", "datacoop.jobs", "datacoop.workers"} <= addresses
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert names == {m.type_name() for m in REGISTRY}


def _copy_registry_with(model: type[Event]) -> EventRegistry:
    reg = EventRegistry()
    for m in REGISTRY:
        reg.models[m.type_name()] = model if m.type_name() == model.type_name() else m
    return reg


def _edited_consent_granted(**changes: object) -> type[Event]:
    """A copy of ConsentGranted.v1 with fields dropped (None) or retyped/added (a type), same type and version."""
    fields: dict[str, object] = {name: (info.annotation, info) for name, info in ConsentGranted.model_fields.items()}
    for name, new_type in changes.items():
        if new_type is None:
            fields.pop(name)
        else:
            fields[name] = (new_type, None if name not in ConsentGranted.model_fields else ...)
    model = create_model("ConsentGranted", __base__=Event, **fields)  # type: ignore[call-overload]
    model.event_type, model.event_version, model.topic = (
        ConsentGranted.event_type, ConsentGranted.event_version, ConsentGranted.topic)
    return model


def test_drift_check_fails_when_a_model_changes_but_schemas_do_not(tmp_path: Path) -> None:
    root = tmp_path / "schemas"
    shutil.copytree(schemas.ROOT, root)
    edited = _edited_consent_granted(note=str | None)
    problems = schemas.drift(root, _copy_registry_with(edited))
    assert any("datacoop.consent.granted.v1.json differs" in p for p in problems)


def test_compatibility_check_fails_on_a_dropped_field_without_a_new_version(tmp_path: Path) -> None:
    edited = _edited_consent_granted(expires_at=None)
    problems = schemas.compatibility(schemas.ROOT, _copy_registry_with(edited))
    assert any("field 'expires_at' was dropped" in p for p in problems)


def test_compatibility_check_fails_on_a_retyped_field_without_a_new_version() -> None:
    edited = _edited_consent_granted(granted_at=str, nonce=str)
    problems = schemas.compatibility(schemas.ROOT, _copy_registry_with(edited))
    assert any("field 'nonce' changed type" in p for p in problems)
    assert any("field 'granted_at' changed type" in p for p in problems)


def test_adding_an_optional_field_is_compatible() -> None:
    edited = _edited_consent_granted(note=str | None)
    assert "note" in edited.model_fields and not edited.model_fields["note"].is_required()
    assert schemas.compatibility(schemas.ROOT, _copy_registry_with(edited)) == []


def test_new_version_of_a_changed_event_passes_while_old_version_stays_published() -> None:
    reg = _copy_registry_with(ConsentGranted)

    class GrantedV2(Event):
        member: str
        consent_id: str
        granted_at: datetime

    GrantedV2.event_type, GrantedV2.event_version, GrantedV2.topic = (
        ConsentGranted.event_type, 2, ConsentGranted.topic)
    reg.register(GrantedV2)
    assert schemas.compatibility(schemas.ROOT, reg) == []


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   check=True, capture_output=True)


def _published_copy(tmp_path: Path) -> Path:
    """schemas/ as committed here, in a git repository of its own (one commit)."""
    repo = tmp_path / "repo"
    shutil.copytree(schemas.ROOT, repo / "schemas")
    _git(repo, "init", "-q")
    _git(repo, "add", "schemas")
    _git(repo, "commit", "-q", "-m", "published")
    return repo / "schemas"


def test_make_schemas_refuses_to_overwrite_a_published_schema_with_a_breaking_shape(tmp_path: Path) -> None:
    """The drift and compatibility checks both compare with schemas/ on disk: if `make schemas` rewrote it from
    a model retyped under the same version, both would pass. It writes nothing instead."""
    root = _published_copy(tmp_path)
    before = {p.name: p.read_text() for p in (root / "events").glob("*.json")}
    reg = _copy_registry_with(_edited_consent_granted(nonce=str, expires_at=None))
    with pytest.raises(schemas.IncompatibleChange) as refused:
        schemas.write(root, reg)
    assert any("field 'nonce' changed type" in p for p in refused.value.problems)
    assert any("field 'expires_at' was dropped" in p for p in refused.value.problems)
    assert {p.name: p.read_text() for p in (root / "events").glob("*.json")} == before, "nothing written"


def test_a_schema_rewritten_and_committed_in_a_breaking_shape_still_fails_against_its_history(tmp_path: Path) -> None:
    root = _published_copy(tmp_path)
    reg = _copy_registry_with(_edited_consent_granted(nonce=str))
    for rel, text in schemas.generate(reg).items():  # by hand, around `make schemas`
        (root / rel).write_text(text)
    _git(root.parent, "commit", "-q", "-am", "retype nonce")
    assert schemas.drift(root, reg) == []
    problems = schemas.compatibility(root, reg)
    assert any(p.startswith("datacoop.consent.granted.v1: field 'nonce' changed type since "
                            "schemas/events/datacoop.consent.granted.v1.json at ") for p in problems), problems


def test_the_compatibility_check_says_so_when_it_has_no_history(tmp_path: Path) -> None:
    root = tmp_path / "schemas"
    shutil.copytree(schemas.ROOT, root)  # not in a git checkout
    problems = schemas.compatibility(root, REGISTRY)
    assert len(problems) == 1 and "cannot read the history of" in problems[0] and "clone" in problems[0]


def test_an_enum_may_gain_values_but_not_lose_them() -> None:
    old = {"x-event-type": "datacoop.t.e.v1", "properties": {"reason": {"enum": ["a", "b"], "type": "string"}}}
    wider = {"properties": {"reason": {"enum": ["a", "b", "c"], "type": "string"}}}
    narrower = {"properties": {"reason": {"enum": ["a"], "type": "string"}}}
    assert schemas.incompatibilities(old, wider) == []
    assert schemas.incompatibilities(old, narrower) == ["datacoop.t.e.v1: field 'reason' changed type; publish a "
                                                        "new version with an upcaster"]


# -- what a field's JSON Schema does not show: checks written as functions, and what a model writes ---------

def _edited_member_registered(**types: object) -> type[Event]:
    """A copy of MemberRegistered.v1 whose fields have the given types (the others as published)."""
    fields: dict[str, object] = {name: (types[name], ...) if name in types else (info.annotation, info)
                                 for name, info in MemberRegistered.model_fields.items()}
    model = create_model("MemberRegistered", __base__=Event, **fields)  # type: ignore[call-overload]
    model.event_type, model.event_version, model.topic = (
        MemberRegistered.event_type, MemberRegistered.event_version, MemberRegistered.topic)
    return model


LOGGED = {"member": "0xAbCdEf0123456789abcdef0123456789ABCDEF01",  # mixed case, not its EIP-55 checksum
          "registered_at": "2026-01-01T00:00:00Z", "nonce": 1, "signature": "0x" + "ab" * 65}


def test_a_check_gained_under_the_same_version_is_refused_though_the_json_schema_is_the_same() -> None:
    """Address -> WalletAddress: the same JSON Schema, but an AfterValidator enforcing EIP-55. An event the log
    holds, accepted under Address, no longer reads: a replay would dead-letter it."""
    edited = _edited_member_registered(member=WalletAddress)
    MemberRegistered.model_validate(LOGGED)
    with pytest.raises(ValidationError):
        edited.model_validate(LOGGED)
    assert schemas._normalise(schemas.event_schema(edited)["properties"]) == \
        schemas._normalise(schemas.event_schema(MemberRegistered)["properties"])  # all but a description
    problems = schemas.compatibility(schemas.ROOT, _copy_registry_with(edited))
    assert any("field 'member' gained the check(s) datacoop.events.types._wallet_address" in p for p in problems)


def test_a_model_validator_gained_is_refused_and_a_check_dropped_is_compatible() -> None:
    class Checked(_edited_member_registered()):  # type: ignore[misc]
        @model_validator(mode="after")
        def _nonce_small(self) -> Checked:
            return self

    problems = schemas.compatibility(schemas.ROOT, _copy_registry_with(Checked))
    assert any("the model gained the check(s)" in p and "_nonce_small" in p for p in problems)
    loosened = _edited_member_registered(registered_at=datetime)  # UtcTime's check dropped: old events still read
    assert schemas.compatibility(schemas.ROOT, _copy_registry_with(loosened)) == []


def test_a_field_excluded_from_the_output_or_written_as_another_type_is_refused() -> None:
    excluded = _edited_member_registered(signature=Annotated[HexSignature, Field(exclude=True)])
    assert "signature" not in excluded.model_validate(LOGGED).model_dump(mode="json")
    problems = schemas.compatibility(schemas.ROOT, _copy_registry_with(excluded))
    assert any("field 'signature' is read but never written" in p for p in problems)
    as_text = _edited_member_registered(nonce=Annotated[int, Field(ge=0), PlainSerializer(str, return_type=str)])
    assert as_text.model_validate(LOGGED).model_dump(mode="json")["nonce"] == "1"
    problems = schemas.compatibility(schemas.ROOT, _copy_registry_with(as_text))
    assert any("field 'nonce' is written as" in p and "'string'" in p for p in problems)


def test_the_checks_of_each_field_are_recorded_in_schemas() -> None:
    checks = schemas.field_checks(MemberRegistered)
    assert checks == {"registered_at": ["datacoop.events.types._utc"]}
    from datacoop.events.payouts import EpochPrepared

    assert schemas.MODEL_CHECKS in schemas.field_checks(EpochPrepared)
    published = json.loads((schemas.ROOT / "events" / f"{MemberRegistered.type_name()}.json").read_text())
    assert published["x-field-checks"] == checks


def test_a_check_renamed_keeps_its_declared_id_and_a_field_written_but_not_read_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import computed_field

    from datacoop.events import types

    monkeypatch.setattr(types._utc, "__qualname__", "_as_utc")  # a rename: its declared id stays
    assert schemas.compatibility(schemas.ROOT, _copy_registry_with(MemberRegistered)) == []
    assert schemas.check_id(types._utc) == "datacoop.events.types._utc"

    class Computed(_edited_member_registered()):  # type: ignore[misc]
        @computed_field  # type: ignore[prop-decorator]
        @property
        def nonce_twice(self) -> int:
            return 2 * int(self.nonce)

    with pytest.raises(ValidationError):  # what a replay would do with what it writes
        Computed.model_validate(Computed.model_validate(LOGGED).model_dump(mode="json"))
    problems = schemas.compatibility(schemas.ROOT, _copy_registry_with(Computed))
    assert any("field 'nonce_twice' is written but not read" in p for p in problems), problems
