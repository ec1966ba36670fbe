"""DATACOOP_LOG_LEVEL: a logging level in any case; anything else is a bad setting, said in one line."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from datacoop.kit import serve
from datacoop.kit.settings import ServiceSettings


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), ("Info", "INFO"), ("WARNING", "WARNING"),
                                              ("warn", "WARNING"), ("error", "ERROR"), ("fatal", "CRITICAL")])
def test_a_level_is_taken_in_any_case(monkeypatch: pytest.MonkeyPatch, given: str, level: str) -> None:
    monkeypatch.setenv("DATACOOP_LOG_LEVEL", given)
    assert ServiceSettings().log_level == level


def test_an_unknown_level_is_a_bad_setting() -> None:
    with pytest.raises(ValidationError, match="log_level"):
        ServiceSettings(log_level="verbose")


def test_a_service_with_an_unknown_level_says_it_cannot_start_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATACOOP_LOG_LEVEL", "verbose")

    def build(settings: Any) -> Any:
        raise AssertionError("no app is built with settings that can't be used")

    with pytest.raises(SystemExit) as exited:
        serve("x", ServiceSettings, build)
    assert exited.value.code == 2
    said = capsys.readouterr().err
    assert said.startswith("datacoop x: cannot start: bad settings (DATACOOP_LOG_LEVEL: Input should be "), said
    assert "'DEBUG'" in said and len(said.strip().splitlines()) == 1


def test_a_service_with_no_broker_says_so_in_one_line_after_waiting(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """It died with aiokafka's multi-frame traceback (KafkaConnectionError: Unable to bootstrap) and exit 3."""
    from datacoop.kit import app as kit_app
    from infra.local import free_port

    monkeypatch.setattr(kit_app, "BROKER_WAIT_S", 0.6)
    bootstrap = f"127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as exited:
        serve("x", ServiceSettings(bootstrap=bootstrap), lambda settings: object())
    assert exited.value.code == 3
    said = capsys.readouterr().err
    assert said.startswith(f"datacoop x: cannot start: no Kafka broker answers at {bootstrap} (DATACOOP_BOOTSTRAP) "
                           "after 0.6 s ("), said
    assert "refused" in said.lower() and "DATACOOP_BOOTSTRAP to your broker" in said
    assert len(said.strip().splitlines()) == 1


def test_a_broker_that_answers_is_found(broker: Any) -> None:
    from datacoop.kit.app import broker_unreachable
    from infra.local import free_port

    assert broker_unreachable(f"127.0.0.1:{free_port()},{broker.bootstrap}", 0) is None
    assert broker_unreachable("nonsense", 0) is not None


def test_a_host_that_is_no_address_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    """It exited 3 with uvicorn's bare "[Errno -2] Name or service not known", naming no setting."""
    with pytest.raises(SystemExit) as exited:
        serve("x", ServiceSettings(host="not-a-host.invalid"), lambda settings: object())
    said = capsys.readouterr().err
    assert exited.value.code == 2 and "DATACOOP_HOST 'not-a-host.invalid' is no address" in said, said
    assert "e.g. 0.0.0.0" in said and len(said.strip().splitlines()) == 1


@pytest.mark.parametrize("bootstrap", ["garbage", "kafka:", ":9092", "kafka:99999", "a:1,,b:2"])
def test_a_bootstrap_that_is_not_host_port_is_refused_at_once(bootstrap: str, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`garbage` was waited on for 30 s as a broker that did not answer yet, then exit 3."""
    monkeypatch.setenv("DATACOOP_BOOTSTRAP", bootstrap)
    with pytest.raises(SystemExit) as exited:
        serve("x", ServiceSettings, lambda settings: object())
    said = capsys.readouterr().err
    assert exited.value.code == 2 and "DATACOOP_BOOTSTRAP: " in said and "is not host:port" in said, said
    assert "Value error" not in said


@pytest.mark.parametrize("bootstrap", ["127.0.0.1:9092", "kafka-1:9092,kafka-2:9092", "[::1]:9092"])
def test_a_bootstrap_list_is_taken(bootstrap: str) -> None:
    assert ServiceSettings(bootstrap=bootstrap).bootstrap == bootstrap


def test_a_port_another_process_listens_on_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    """It opened its database and the broker, then uvicorn's bare "[Errno 98] ... address already in use", exit 3
    (the code for "no broker")."""
    import socket

    built: list[bool] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            serve("x", ServiceSettings(port=port), lambda settings: built.append(True))
    said = capsys.readouterr().err
    assert exited.value.code == 2 and f"port {port} on 127.0.0.1 is taken by another process (DATACOOP_PORT)" in said
    assert built == [], "refused before anything is built"
