"""schemas/ must equal what the models generate, and published versions must stay compatible."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from pydantic import create_model

from datacoop import schemas
from datacoop.events import REGISTRY, Event, EventRegistry
from datacoop.events.members import ConsentGranted


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
