"""Envelope, registry, codec and upcasting: pure, no broker."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import Field, TypeAdapter, ValidationError

from datacoop.events import Envelope, Event, EventRegistry, derived_event_id, event, new_event_id
from datacoop.events.codec import DecodeError, decode, encode, header
from datacoop.events.registry import EventDataInvalid, UnknownEventType


def test_envelope_round_trips_through_kafka_bytes_with_mirrored_headers() -> None:
    env = Envelope(source="datacoop/test", type="datacoop.test.thing_done.v1", subject="s-1", seq=3,
                   data={"x": 1}, correlationid="c-1")
    rec = encode(env)
    assert rec.key == b"s-1"
    assert header(rec.headers, "ce_type") == "datacoop.test.thing_done.v1"
    assert header(rec.headers, "ce_id") == env.id
    assert decode(rec.value) == env


def test_envelope_times_are_utc_and_naive_times_are_refused() -> None:
    local = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    env = Envelope(source="s", type="datacoop.a.b.v1", subject="x", seq=1, data={}, time=local)
    assert env.time.utcoffset() == timedelta(0) and env.time.hour == 10
    with pytest.raises(ValidationError, match="timezone"):
        Envelope(source="s", type="datacoop.a.b.v1", subject="x", seq=1, data={}, time=datetime(2026, 1, 1))


def test_seq_starts_at_one_and_type_must_name_a_version() -> None:
    with pytest.raises(ValidationError):
        Envelope(source="s", type="datacoop.a.b.v1", subject="x", seq=0, data={})
    with pytest.raises(ValidationError):
        Envelope(source="s", type="datacoop.a.b", subject="x", seq=1, data={})


def test_garbage_bytes_raise_a_decode_error_that_names_the_problem() -> None:
    with pytest.raises(DecodeError, match="Invalid JSON"):
        decode(b"\x00\x01")
    with pytest.raises(DecodeError, match="empty"):
        decode(None)


def test_derived_ids_are_stable_per_cause_and_type() -> None:
    a = derived_event_id("cause-1", "datacoop.x.y.v1")
    assert a == derived_event_id("cause-1", "datacoop.x.y.v1")
    assert a != derived_event_id("cause-2", "datacoop.x.y.v1")
    assert a != derived_event_id("cause-1", "datacoop.x.z.v1")


def _registry_with_two_versions() -> EventRegistry:
    reg = EventRegistry()

    @event("datacoop.test.priced", 1, topic="t", registry=reg)
    class PricedV1(Event):
        price: float

    @event("datacoop.test.priced", 2, topic="t", registry=reg)
    class PricedV2(Event):
        price_units: int = Field(ge=0)
        currency: str

    reg.register_upcaster("datacoop.test.priced", 1,
                          lambda d: {"price_units": round(d["price"] * 1_000_000), "currency": "USDC"})
    return reg


def test_old_version_is_upcast_to_the_newest_on_read() -> None:
    reg = _registry_with_two_versions()
    ev = reg.decode("datacoop.test.priced.v1", {"price": 1.5})
    assert ev.type_name() == "datacoop.test.priced.v2"
    assert ev.model_dump() == {"price_units": 1_500_000, "currency": "USDC"}


def test_typed_envelope_validates_envelope_and_current_data_in_one_pass() -> None:
    reg = _registry_with_two_versions()
    assert reg.typed_envelope("datacoop.test.priced.v1") is None, "old versions need upcasting first"
    assert reg.typed_envelope("datacoop.test.nope.v1") is None
    typed = reg.typed_envelope("datacoop.test.priced.v2")
    assert typed is not None and reg.typed_envelope("datacoop.test.priced.v2") is typed  # made once
    env = Envelope(source="t", type="datacoop.test.priced.v2", subject="s", seq=1,
                   data={"price_units": 7, "currency": "USDC"})
    value = encode(env).value
    got = typed.model_validate_json(value)
    assert isinstance(got, Envelope) and got.id == env.id and got.seq == 1
    assert got.data == reg.decode(env.type, env.data)  # the event itself, as the two-step path gives it
    with pytest.raises(ValidationError):
        typed.model_validate_json(value.replace(b'"price_units":7', b'"price_units":"lots"'))


def test_unknown_types_and_invalid_data_are_refused_with_what_is_wrong() -> None:
    reg = _registry_with_two_versions()
    with pytest.raises(UnknownEventType, match="datacoop.test.priced.v9"):
        reg.decode("datacoop.test.priced.v9", {})
    with pytest.raises(EventDataInvalid, match="price_units"):
        reg.decode("datacoop.test.priced.v2", {"price_units": -1, "currency": "USDC"})
    with pytest.raises(EventDataInvalid, match="extra|Extra"):
        reg.decode("datacoop.test.priced.v2", {"price_units": 1, "currency": "USDC", "oops": 1})


def test_registering_a_different_model_under_a_taken_type_is_refused() -> None:
    reg = _registry_with_two_versions()
    with pytest.raises(ValueError, match="registered twice"):
        @event("datacoop.test.priced", 2, topic="t", registry=reg)
        class Again(Event):
            other: int


def test_new_event_ids_are_uuid7_carrying_the_current_millisecond_and_unique() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids[:: 997]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical lower-case 8-4-4-4-12 form
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after
    assert sorted(ids, key=lambda t: uuid.UUID(t).int >> 80) == ids  # ordered by their millisecond


def test_the_typed_envelope_cache_holds_registered_types_only() -> None:
    """A consumer asks it for every record's ce_type header, which is anyone's text: unknown names are not kept."""
    registry = EventRegistry()
    for i in range(100):
        assert registry.typed_envelope(f"datacoop.x.junk_{i}.v1") is None
    assert registry._typed == {}


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_events_refuse_numbers_json_cannot_carry(bad: float) -> None:
    """JSON has no NaN or Infinity (pydantic writes null): an event holding one would be applied by its writer
    as the number while the log, and every projection rebuilt from it, holds null. Refused when made."""
    reg = EventRegistry()

    @event("datacoop.test.measured", 1, topic="t", registry=reg)
    class Measured(Event):
        x: float = Field(gt=0)  # the shape of VersionBuilt.epsilon: gt=0 alone lets inf through

    assert Measured(x=2.5).x == 2.5
    with pytest.raises(ValidationError, match="finite number"):
        Measured(x=bad)


def test_free_form_event_objects_refuse_non_finite_numbers_anywhere_and_name_where() -> None:
    from datacoop.events.jobs import JobResultReported
    from datacoop.events.types import JsonObject

    fine = {"mean": 1.5, "rows": [{"n": 3, "share": None}], "label": "NaN"}  # a string "NaN" is text
    assert TypeAdapter(JsonObject).validate_python(fine) == fine
    with pytest.raises(ValidationError) as refused:
        TypeAdapter(JsonObject).validate_python({"rows": [{"n": 3}, {"share": float("nan")}]})
    assert "rows[1].share is nan" in str(refused.value) and "give a finite number" in str(refused.value)
    with pytest.raises(ValidationError, match=r"result\n.*mean is inf"):
        JobResultReported.model_validate({**_a_result_report(), "result": {"mean": float("inf")}})
    assert JobResultReported.model_validate(_a_result_report()).result == {"mean": 1.5}


def _a_result_report() -> dict[str, object]:
    return {"worker_id": "w-1", "lease_id": "l-1", "provider": "0x" + "ab" * 20, "result": {"mean": 1.5},
            "result_sha256": "0" * 64, "signature": "0x" + "11" * 65, "compute_ms": 5,
            "reported_at": datetime(2026, 1, 1, tzinfo=UTC)}
