"""The committed contract artifacts are exactly what `node infra/contracts/build.mjs` produces."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "infra" / "contracts" / "artifacts"


def build_into(out_dir: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; install Node.js 20 and run `npm ci`")
    done = subprocess.run([node, "infra/contracts/build.mjs", str(out_dir)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"build.mjs failed:\n{done.stderr}"


def test_committed_artifacts_match_a_fresh_build(tmp_path: Path) -> None:
    build_into(tmp_path)
    fresh = sorted(p.name for p in tmp_path.glob("*.json"))
    assert fresh == sorted(p.name for p in COMMITTED.glob("*.json")), "artifact set differs from the sources"
    stale = [name for name in fresh if (tmp_path / name).read_bytes() != (COMMITTED / name).read_bytes()]
    assert not stale, f"artifacts {stale} are stale; run `node infra/contracts/build.mjs` and commit them"


def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    build_into(tmp_path / "one")
    build_into(tmp_path / "two")
    for first in sorted((tmp_path / "one").glob("*.json")):
        assert first.read_bytes() == (tmp_path / "two" / first.name).read_bytes(), first.name
