"""AES-GCM hides a record's bytes, not its length, and the records topic is read by every consumer: each row of
a category is padded to one length before it is sealed, so no ciphertext's size tells what its row holds."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from eth_account import Account
from fastapi import FastAPI

from datacoop.bus.consumer import Delivery
from datacoop.events import Envelope
from services.vault.categories import check_rows, load_schemas, pad_to, sealed_length
from services.vault.client import sample_rows
from services.vault.crypto import open_one
from tests.unit.vault.test_api import _contribute, _register, _svc, vault

__all__ = ["vault"]  # the fixture


class _Published:
    """The writer's contract without Kafka: what `decide` returns is kept (as the topic would hold it) and
    projected."""

    def __init__(self, app: FastAPI) -> None:
        self.svc, self.events = _svc(app), []  # type: ignore[var-annotated]

    async def execute(self, subject: str, decide: Any, **_: Any) -> list[Delivery]:
        events = list(decide())
        self.events += events
        deliveries = [Delivery("records", 0, i, Envelope(source="datacoop/vault", type=e.type_name(), subject=subject,
                                                         seq=1, data=e.model_dump(mode="json")), e)
                      for i, e in enumerate(events)]
        with self.svc.store.transaction() as tx:
            self.svc.projection.apply(tx, deliveries)
        return deliveries


def _health(**fields: Any) -> str:
    return json.dumps({"measured_on": "2026-03-01", **fields}) + "\n"


def test_records_on_the_topic_all_have_one_length_and_read_back_as_sent(vault: FastAPI) -> None:
    published = _Published(vault)
    _svc(vault).writer = published  # type: ignore[assignment]
    member = Account.create()
    _register(vault, member)
    rows = [{"condition": "Asthma", "icd10": "J45.909", "smoker": False},
            {"condition": "Generalized anxiety disorder", "icd10": "F41.1", "smoker": True},
            {},  # every optional field missing
            {"condition": "x" * 120, "icd10": "A12.ABCD", "systolic_mmhg": 120, "weight_kg": 72.5}]
    for row in rows:
        answer = _contribute(vault, member, category="health", content=_health(**row))
        assert answer.status_code == 201, answer.text
    sealed = [r for event in published.events for r in event.records]
    lengths = {len(base64.b64decode(r["ciphertext"])) for r in sealed}
    assert lengths == {sealed_length(load_schemas()["health"]) + 16}, lengths  # + the GCM tag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(_svc(vault).keys.get_or_create(member.address))
    opened = [json.loads(open_one(aead, member.address, r["record_id"], r["nonce"], r["ciphertext"])) for r in sealed]
    assert [{k: v for k, v in o.items() if v is not None and k != "measured_on"} for o in opened] == rows


@pytest.mark.parametrize("category", sorted(load_schemas()))
def test_every_row_a_category_allows_in_ascii_fits_its_sealed_length(category: str) -> None:
    schema = load_schemas()[category]
    width = sealed_length(schema)
    rows = check_rows(schema, [{k: v if v is None or isinstance(v, str) else json.dumps(v) for k, v in r.items()}
                               for r in sample_rows(category, 3_000, seed=7)])
    assert {len(pad_to(orjson.dumps(r), width)) for r in rows} == {width}


def test_the_longest_health_row_in_any_script_fits_its_sealed_length() -> None:
    """Free text sized in UTF-8 bytes: a condition in Chinese or with accents seals as long as one in English
    (a longer ciphertext would tell the script a member writes in)."""
    schema = load_schemas()["health"]
    width = sealed_length(schema)
    longest = {"measured_on": "2100-12-31", "icd10": "A12.ABCD", "systolic_mmhg": "260", "diastolic_mmhg": "160",
               "heart_rate_bpm": "250", "weight_kg": "1.0000000000000002", "height_cm": "259.99999999999994",
               "smoker": "false"}
    for condition in ["x" * 120, "é" * 120, "哮喘" * 60, "😷" * 120, '"\\' * 60, "a\tb\n" * 30]:
        row = check_rows(schema, [{**longest, "condition": condition}])[0]
        assert len(orjson.dumps(row)) <= width, condition[:10]
        assert len(pad_to(orjson.dumps(row), width)) == width


@pytest.mark.parametrize("control", ["\x00", "\x01", "\x1b", "\x0b"])
def test_text_refuses_control_characters_json_would_escape_at_six_bytes(control: str) -> None:
    from services.vault.categories import UploadRefused

    with pytest.raises(UploadRefused) as refused:
        check_rows(load_schemas()["health"], [{"measured_on": "2026-01-01", "condition": f"asthma{control}x"}])
    assert f"control character U+{ord(control):04X} at character 7" in refused.value.errors[0].message


@pytest.mark.parametrize("line, field", [
    ('{"measured_on": "2026-01-01", "condition": "flu \\ud800"}', "condition"),  # a value
    ('{"measured_on": "2026-01-01", "condition": "flu", "\\udfff": 1}', "(whole row)"),  # a field's name
])
def test_a_lone_surrogate_escape_is_a_row_error_every_message_can_carry(line: str, field: str) -> None:
    """JSON lets `\\ud800` stand alone; it is no character and UTF-8 cannot hold it: it used to pass the checks
    and fail the upload as a 500 when the row was serialized (or when the refusal naming it was)."""
    from services.vault.categories import UploadRefused, parse_upload

    with pytest.raises(UploadRefused) as refused:
        check_rows(load_schemas()["health"], parse_upload(line, "jsonl"))
    (error,) = refused.value.errors
    assert error.field == field and "surrogate pair" in error.message, error
    orjson.dumps([{"field": e.field, "message": e.message} for e in refused.value.errors])  # what the API sends
    paired = check_rows(load_schemas()["health"],
                        parse_upload('{"measured_on": "2026-01-01", "condition": "flu \\ud83d\\ude37"}', "jsonl"))
    assert paired[0]["condition"] == "flu 😷", "a whole pair is the character it encodes"


def test_an_upload_holding_a_lone_surrogate_itself_is_refused_whole() -> None:
    from services.vault.categories import UploadRefused, parse_upload

    with pytest.raises(UploadRefused, match="U\\+D800 on line 2"):
        parse_upload("day,steps\n2026-01-01,1\ud800\n", "csv")


def test_a_row_past_the_length_pads_to_a_multiple_of_it() -> None:
    padded = pad_to(b'{"a": "' + b"x" * 300 + b'"}', 256)
    assert len(padded) == 512 and json.loads(padded) == {"a": "x" * 300}
