"""Secrets at their development defaults: refused outside a development stack, warned about inside one."""

from __future__ import annotations

import logging

import pytest

from datacoop.kit.settings import DEV_OPERATOR_TOKEN, SettingRefused, dev_default_warned


def test_a_development_default_is_refused_unless_dev_secrets(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SettingRefused, match="DATACOOP_X_TOKEN is the development default.*DATACOOP_DEV_SECRETS"):
        dev_default_warned(DEV_OPERATOR_TOKEN, DEV_OPERATOR_TOKEN, "DATACOOP_X_TOKEN", dev_secrets=False)
    with caplog.at_level(logging.WARNING):
        assert dev_default_warned(DEV_OPERATOR_TOKEN, DEV_OPERATOR_TOKEN, "DATACOOP_X_TOKEN",
                                  dev_secrets=True) == DEV_OPERATOR_TOKEN
    assert "DATACOOP_X_TOKEN is the development default" in caplog.text


def test_a_secret_of_ones_own_is_taken_silently(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert dev_default_warned("s3cret-0123456789", DEV_OPERATOR_TOKEN, "DATACOOP_X_TOKEN",
                                  dev_secrets=False) == "s3cret-0123456789"
    assert caplog.text == ""
