"""Consumer-group mode splits a topic's partitions among instances, so each instance's projection holds
only some subjects. A service that decides commands on its projection refuses it (a replayed signature
could pass on an instance that never saw the subject); the library's runner keeps it for consumers that
write nothing (tests/integration/bus/test_dead_letters.py runs one in a group)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from datacoop.kit.settings import SettingRefused
from infra.local import REPO_ROOT
from services.consent.service import build_app
from services.consent.settings import ConsentSettings


def test_a_writer_service_refuses_group_mode(tmp_path: Path) -> None:
    with pytest.raises(SettingRefused, match="DATACOOP_GROUP_ID: the consent service writes"):
        build_app(ConsentSettings(bootstrap="127.0.0.1:1", data_dir=tmp_path, dev_secrets=True, group_id="consent"))
    assert not list(tmp_path.glob("*.duckdb")), "refused before any file is made"


def test_the_process_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATACOOP_DATA_DIR": str(tmp_path), "DATACOOP_DEV_SECRETS": "true",
           "DATACOOP_GROUP_ID": "consent"}
    result = subprocess.run([sys.executable, "-m", "services.consent.service"], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot start" in result.stderr and "DATACOOP_GROUP_ID" in result.stderr
    assert "Traceback" not in result.stderr
