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
