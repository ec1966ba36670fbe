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
    (["--jobs-url", "http://127.0.0.1:9"], {"DATACOOP_WORKER_START_WAIT_S": "-1", "DATACOOP_KEY": KEY},
     "DATACOOP_WORKER_START_WAIT_S='-1' is not a number >= 0"),
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
                 "DATACOOP_WORKER_MIN_GROUP_SIZE", "DATACOOP_WORKER_ID", "DATACOOP_WORKER_START_WAIT_S"):
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


def test_the_default_worker_id_is_the_same_on_every_run_of_one_machine_and_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --worker-id a worker registers under the same id each time it starts on this machine with this
    key, so its provider's record carries over; another key or machine gets another id."""
    from eth_account import Account

    from datacoop.kit import logs
    from services.worker import worker as worker_module

    started: list[str] = []

    class Idle:
        jobs_done = 0

        def __init__(self, session: object, *_: object, **__: object) -> None:
            started.append(session.worker_id)  # type: ignore[attr-defined]

        def run_forever(self, max_jobs: int | None = None) -> None:
            return None

    monkeypatch.setattr(worker_module, "Worker", Idle)
    monkeypatch.setattr(worker_main.signal, "signal", lambda *_: None)
    monkeypatch.setattr(logs, "configure", lambda *_, **__: None)  # leave this process's logging alone
    monkeypatch.setattr(worker_main.socket, "gethostname", lambda: "vm")
    for name in ("DATACOOP_WORKER_MIN_GROUP_SIZE", "DATACOOP_WORKER_DELAY_S"):
        monkeypatch.delenv(name, raising=False)
    other = "cd" * 32
    for key in (KEY, KEY, "0x" + KEY, other):
        worker_main.run("http://127.0.0.1:9", key)
    assert started[0] == started[1] == started[2] != started[3]
    assert started[0] == worker_main.default_worker_id(Account.from_key(KEY).address, "vm")
    assert started[0].startswith("vm-") and worker_main.WORKER_ID.fullmatch(started[0])
    worker_main.run("http://127.0.0.1:9", KEY, worker_id="my-gpu-box")
    assert started[-1] == "my-gpu-box", "--worker-id still wins"

    address = Account.from_key(KEY).address
    assert worker_main.default_worker_id(address.lower(), "vm") == worker_main.default_worker_id(address, "vm")
    assert worker_main.default_worker_id(address, "vm") != worker_main.default_worker_id(address, "vm2")
    for host in ("gpu box/1 ☃", "x" * 300, ""):
        worker_id = worker_main.default_worker_id(address, host)
        assert worker_main.WORKER_ID.fullmatch(worker_id), worker_id


def test_a_jobs_url_where_nothing_answers_ends_the_worker_with_status_3_and_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a retry loop for ever: after DATACOOP_WORKER_START_WAIT_S it says where it looked and what to check."""
    monkeypatch.setenv("DATACOOP_KEY", KEY)
    monkeypatch.setenv("DATACOOP_WORKER_START_WAIT_S", "0.3")
    monkeypatch.setenv("DATACOOP_LOG_JSON", "false")
    monkeypatch.delenv("DATACOOP_WORKER_BACKEND", raising=False)
    with pytest.raises(SystemExit) as stopped:
        worker_main.main(["--jobs-url", "http://127.0.0.1:9", "--worker-id", "w-1"])
    err = capsys.readouterr().err
    assert stopped.value.code == 3
    line = err.strip().splitlines()[-1]
    assert line.startswith("datacoop worker: cannot run: no jobs service answered at http://127.0.0.1:9 for 0.3 s")
    assert "check --jobs-url (or DATACOOP_JOBS_URL)" in line and "Traceback" not in err
