"""`datacoop vault rotate-kek` given a --keys-file DuckDB cannot open: "in use ... stop the vault" only when
another process holds its lock; a file that is no DuckDB database (a wrong path, the KEK file by mistake) is
named as not the key store, so the operator does not go looking for a running vault."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import duckdb
from typer.testing import CliRunner

from datacoop.cli import app
from datacoop.cli.vault import _unopenable_store


def _rotate(tmp_path: Path, keys_file: Path) -> tuple[int, str]:
    env = {"DATACOOP_VAULT_KEK": base64.b64encode(os.urandom(32)).decode(), "DATACOOP_DATA_DIR": str(tmp_path),
           "COLUMNS": "300"}
    result = CliRunner().invoke(app, ["vault", "rotate-kek", "--new-kek-file", str(tmp_path / "new.kek"),
                                      "--keys-file", str(keys_file)], env=env)
    return result.exit_code, result.output


def test_a_keys_file_that_is_no_duckdb_file_is_called_not_a_key_store_not_in_use(tmp_path: Path) -> None:
    kek_file = tmp_path / "vault-kek"  # the KEK file given as --keys-file by mistake
    kek_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    code, output = _rotate(tmp_path, kek_file)
    assert code == 1, output
    assert "in use" not in output and "stop the vault" not in output, output
    assert f"{kek_file} is not a vault key store (a DuckDB file)" in output, output
    assert "give the vault's key store with --keys-file" in output, output
    assert not (tmp_path / "new.kek").exists(), "no new KEK is generated for a store that was never opened"


def test_a_store_another_process_holds_the_lock_of_is_in_use() -> None:
    held = duckdb.IOException('IO Error: Could not set lock on file "/v/vault-keys.duckdb": Conflicting lock is '
                              "held in /usr/bin/python3 (PID 4081). See also https://duckdb.org/docs/")
    told = _unopenable_store(Path("/v/vault-keys.duckdb"), held)
    assert told.startswith("the key store /v/vault-keys.duckdb is in use (IO Error: Could not set lock"), told
    assert told.endswith("stop the vault, then run this again"), told


def test_duckdbs_reason_is_kept_for_a_file_that_is_not_a_key_store() -> None:
    invalid = duckdb.IOException('IO Error: The file "/v/kek" exists, but it is not a valid DuckDB database file!')
    told = _unopenable_store(Path("/v/kek"), invalid)
    assert told.startswith("/v/kek is not a vault key store (a DuckDB file)") and "not a valid DuckDB" in told, told
    assert "in use" not in told, told
