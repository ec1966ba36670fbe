"""Secret files: private from the first byte, never overwritten, whole or absent."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from datacoop.keys import load_or_create_key, public_key_b64, write_secret


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_secret_is_created_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_secret(tmp_path / "sub" / "kek", b"secret\n")
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "kek").read_bytes() == b"secret\n"
    assert _mode(tmp_path / "sub" / "kek") == 0o600
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["kek"], "no temporary file left behind"


def test_a_secret_is_never_overwritten(tmp_path: Path) -> None:
    write_secret(tmp_path / "kek", b"first")
    with pytest.raises(FileExistsError):
        write_secret(tmp_path / "kek", b"second")
    assert (tmp_path / "kek").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["kek"]


def test_a_signing_key_is_made_once_then_loaded(tmp_path: Path) -> None:
    made = load_or_create_key(tmp_path / "k.pem")
    assert _mode(tmp_path / "k.pem") == 0o600
    assert public_key_b64(load_or_create_key(tmp_path / "k.pem")) == public_key_b64(made)


def test_a_temporary_file_left_by_a_crash_does_not_block_the_next_start(tmp_path: Path) -> None:
    """A crash between writing and linking leaves `.name.<random>.tmp`; the next process (in a container,
    the same pid 1) must still make the key."""
    (tmp_path / f".k.pem.{os.getpid()}.tmp").write_bytes(b"half")
    made = load_or_create_key(tmp_path / "k.pem")
    assert public_key_b64(load_or_create_key(tmp_path / "k.pem")) == public_key_b64(made)
