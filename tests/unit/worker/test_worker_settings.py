"""`python -m services.worker.main` (what docker-compose runs): a setting it can't use is one line naming
the flag or variable, and exit status 2, never a traceback or a retry loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.worker import main as worker_main

KEY = "ab" * 32


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["--jobs-url", "http://127.0.0.1:9"], {"DATACOOP_WORKER_CORES": "abc", "DATACOOP_KEY": KEY},
     "DATACOOP_WORKER_CORES='abc' is not a whole number"),
    (["--jobs-url", "http://127.0.0.1:9"], {"DATACOOP_WORKER_DELAY_S": "abc", "DATACOOP_KEY": KEY},
     "DATACOOP_WORKER_DELAY_S='abc' is not a number"),
    (["--jobs-url", "http://127.0.0.1:9"], {"DATACOOP_WORKER_MIN_GROUP_SIZE": "0", "DATACOOP_KEY": KEY},
     "DATACOOP_WORKER_MIN_GROUP_SIZE='0' is not a whole number >= 1"),
    (["--jobs-url", "http://127.0.0.1:9", "--key-file", "/nowhere/provider.key"], {},
     "--key-file /nowhere/provider.key: cannot read it (No such file or directory)"),
    (["--jobs-url", "http://127.0.0.1:9"], {"DATACOOP_KEY": "not-a-key"}, "DATACOOP_KEY does not hold a provider key"),
    (["--jobs-url", "notaurl"], {"DATACOOP_KEY": KEY}, "--jobs-url 'notaurl' is not an http(s) URL"),
    (["--jobs-url", "http://127.0.0.1:9", "--cores", "-2"], {"DATACOOP_KEY": KEY}, "--cores -2 must be at least 1"),
    (["--jobs-url", "http://127.0.0.1:9", "--worker-id", "a b/c"], {"DATACOOP_KEY": KEY},
     "--worker-id 'a b/c' is not a valid worker id"),
])
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(argv: list[str], env: dict[str, str], expected: str,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("DATACOOP_KEY", "DATACOOP_WORKER_CORES", "DATACOOP_WORKER_DELAY_S", "DATACOOP_WORKER_KEY_FILE",
                 "DATACOOP_WORKER_MIN_GROUP_SIZE", "DATACOOP_WORKER_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        worker_main.main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_key_file_that_is_not_a_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "provider.key"
    bad.write_text("hello")
    with pytest.raises(worker_main.SettingInvalid, match=f"--key-file {bad} does not hold a provider key"):
        worker_main._key(str(bad))
    bad.write_text("0x" + KEY)
    assert worker_main._key(str(bad)) == "0x" + KEY
