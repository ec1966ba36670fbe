"""The writer puts a current event type's model itself into the envelope: the same JSON as via a dict."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from datacoop.command import _envelope
from datacoop.events.codec import decode, encode
from datacoop.events.envelope import Envelope
from datacoop.events.members import ConsentGranted
from datacoop.testing.ledger import AmountRecorded

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _granted() -> ConsentGranted:
    return ConsentGranted(member="0x" + "ab" * 20, consent_id="c-1", purpose="health-research",
                          categories=["fitness", "health"], granted_at=NOW, expires_at=NOW + timedelta(days=30),
                          catalog_version=1, nonce=3, signature="0x" + "cd" * 65)


def test_a_current_types_envelope_holds_the_model_and_encodes_as_the_dict_form_does() -> None:
    event = _granted()
    typed = _envelope(event, "e-1", "datacoop/consent", event.member, 4, "corr", None)
    plain = Envelope(id="e-1", source="datacoop/consent", type=event.type_name(), subject=event.member, seq=4,
                     dataschema=f"schemas/events/{event.type_name()}.json", correlationid="corr", time=typed.time,
                     data=event.model_dump(mode="json"))
    assert typed.data is event  # the typed envelope holds the model itself
    assert encode(typed).value == encode(plain).value
    assert decode(encode(typed).value).data == json.loads(event.model_dump_json())


def test_a_type_outside_the_registry_goes_through_a_dict() -> None:
    event = AmountRecorded(amount_units=7, note="n")  # registered in the ledger's own registry only
    envelope = _envelope(event, "e-2", "t", "acct", 1, None, None)
    assert envelope.data == {"amount_units": 7, "note": "n"}
