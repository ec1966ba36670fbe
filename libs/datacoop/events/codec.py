"""Encoding of envelopes to Kafka records and back.

Value: the envelope as CloudEvents structured-mode JSON. Key: the subject. Headers mirror
`ce_type` and `ce_id` (and the content type) so a consumer can filter without parsing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from datacoop.events.envelope import Envelope

Headers = list[tuple[str, bytes]]


class DecodeError(ValueError):
    """The bytes are not a valid datacoop envelope; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    key: bytes
    value: bytes
    headers: Headers


def encode(envelope: Envelope) -> KafkaRecord:
    return KafkaRecord(
        key=envelope.subject.encode(),
        value=envelope.__pydantic_serializer__.to_json(envelope),  # bytes; model_dump_json() makes a str
        headers=[
            ("ce_type", envelope.type.encode()),
            ("ce_id", envelope.id.encode()),
            ("ce_specversion", b"1.0"),
            ("content-type", b"application/cloudevents+json"),
        ],
    )


def decode(value: bytes | None) -> Envelope:
    if not value:
        raise DecodeError("empty record value: expected a CloudEvents JSON envelope")
    try:
        return Envelope.model_validate_json(value)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:3])
        raise DecodeError(f"not a valid envelope: {errs}") from exc


def header(headers: Sequence[tuple[str, bytes | None]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return None if value is None else value.decode(errors="replace")  # Kafka allows a null value
    return None
