"""`datacoop up` ends as it should: a service that dies stops the stack with exit 1 naming it and its log;
"stopped cleanly" only after Ctrl-C (or a demo played with --exit-after-demo). No broker or service runs:
the stack is made of sleeping processes standing in for them."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datacoop.cli import app
from datacoop.cli import stack as stack_mod
from infra.local import Broker, free_port


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.fixture
def fake_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`datacoop up` with start_stack giving a broker and a vault that are sleeping processes; the signal
    handler `up` installs is kept here (pytest keeps its own)."""
    made: dict[str, Any] = {}
    monkeypatch.setattr(stack_mod, "STACK_FILE", tmp_path / "stack.json")
    monkeypatch.setattr(stack_mod, "UP_LOCK_FILE", tmp_path / "up.lock")
    monkeypatch.setattr(signal, "signal", lambda signum, handler: made.setdefault("handlers", {}).update(
        {signum: handler}))

    def start_stack(only: list[str] | None = None, with_chain: bool = True) -> stack_mod.Stack:
        vault = next(s for s in stack_mod.SERVICES if s.name == "vault")
        stk = stack_mod.Stack(Broker("broker", free_port(), _sleeper()), None, data_dir=tmp_path)
        stk.services["vault"] = stack_mod.RunningService(vault, free_port(), _sleeper(), tmp_path / "vault.log")
        made["stack"] = stk
        return stk

    monkeypatch.setattr(stack_mod, "start_stack", start_stack)
    monkeypatch.setattr(stack_mod, "start_workers", lambda stk, count: None)
    yield made
    if "stack" in made:
        for proc in [made["stack"].broker.proc, made["stack"].services["vault"].proc]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _up_with(monkeypatch: pytest.MonkeyPatch, when_ready: Callable[[stack_mod.Stack], None],
             *options: str) -> Any:
    """`datacoop up` whose wait for readiness is `when_ready(stack)` (e.g. a crash or a Ctrl-C meanwhile)."""
    monkeypatch.setattr(stack_mod, "wait_ready", lambda stk, **_: when_ready(stk))
    return _up(*options)


def _up(*options: str) -> Any:
    return CliRunner().invoke(app, ["up", "--services", "vault", "--workers", "0", "--no-chain", *options],
                              env={"COLUMNS": "200"})


def test_a_service_that_dies_stops_the_stack_with_exit_1_naming_it_and_its_log(
        monkeypatch: pytest.MonkeyPatch, fake_stack: dict[str, Any], tmp_path: Path) -> None:
    def crash_vault(stk: stack_mod.Stack) -> None:
        stk.services["vault"].proc.send_signal(signal.SIGKILL)
        stk.services["vault"].proc.wait()

    result = _up_with(monkeypatch, crash_vault)
    assert result.exit_code == 1, result.output
    assert "service vault was killed by SIGKILL" in result.output and str(tmp_path / "vault.log") in result.output
    assert "stopped cleanly" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error:"), "the red line comes last"
    assert fake_stack["stack"].broker.proc.poll() is not None, "the rest of the stack was stopped"


def test_a_broker_that_dies_stops_the_stack_with_exit_1_naming_it(
        monkeypatch: pytest.MonkeyPatch, fake_stack: dict[str, Any]) -> None:
    """`up` went on printing "running" after its broker was killed, and stopped "cleanly" on Ctrl-C."""
    def crash_broker(stk: stack_mod.Stack) -> None:
        stk.broker.proc.send_signal(signal.SIGKILL)
        stk.broker.proc.wait()

    result = _up_with(monkeypatch, crash_broker)
    assert result.exit_code == 1, result.output
    assert "the broker was killed by SIGKILL" in result.output and "stopped cleanly" not in result.output
    assert fake_stack["stack"].services["vault"].proc.poll() is not None, "the rest of the stack was stopped"


def test_ctrl_c_stops_the_stack_cleanly(monkeypatch: pytest.MonkeyPatch, fake_stack: dict[str, Any]) -> None:
    result = _up_with(monkeypatch, lambda stk: fake_stack["handlers"][signal.SIGINT](signal.SIGINT, None))
    assert result.exit_code == 0, result.output
    assert "stopped cleanly" in result.output and "error" not in result.output
    assert fake_stack["stack"].services["vault"].proc.poll() is not None


def test_ctrl_c_that_also_ends_the_services_is_still_a_clean_stop(monkeypatch: pytest.MonkeyPatch,
                                                                   fake_stack: dict[str, Any]) -> None:
    """A terminal's Ctrl-C reaches the whole process group: a service may end on it before `up` looks."""
    def ctrl_c_in_a_terminal(stk: stack_mod.Stack) -> None:
        def both() -> None:  # while `up` sleeps between its looks at the services
            stk.services["vault"].proc.send_signal(signal.SIGINT)
            stk.services["vault"].proc.wait()
            fake_stack["handlers"][signal.SIGINT](signal.SIGINT, None)

        threading.Timer(0.3, both).start()

    result = _up_with(monkeypatch, ctrl_c_in_a_terminal)
    assert result.exit_code == 0, result.output
    assert "stopped cleanly" in result.output and "error" not in result.output


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, fake_stack: dict[str, Any]) -> list[str]:
    """What `up` started after the wait for readiness: workers, the demo."""
    made: list[str] = []
    monkeypatch.setattr(stack_mod, "start_workers", lambda stk, count: made.append("workers"))
    monkeypatch.setattr("datacoop.cli.demo.run_demo", lambda stack, console: made.append("demo"))
    return made


def _real_wait_ready(monkeypatch: pytest.MonkeyPatch, before: Callable[[], None]) -> None:
    """`up` waits for readiness as it does (the stand-in vault never gets ready) after `before()`."""
    real = stack_mod.wait_ready

    def wait_ready(stk: stack_mod.Stack, **options: Any) -> None:
        before()
        real(stk, timeout_s=5, **options)

    monkeypatch.setattr(stack_mod, "wait_ready", wait_ready)


def _ctrl_c_in_a_terminal(fake_stack: dict[str, Any]) -> None:
    """The terminal signals the whole process group: the vault ends on it, and `up` gets it."""
    vault = fake_stack["stack"].services["vault"]
    vault.log_path.write_text("vault stopping on SIGINT\n")
    vault.proc.send_signal(signal.SIGINT)
    vault.proc.wait()
    fake_stack["handlers"][signal.SIGINT](signal.SIGINT, None)


def test_ctrl_c_in_a_terminal_while_services_start_is_a_clean_stop(
        monkeypatch: pytest.MonkeyPatch, fake_stack: dict[str, Any], started: list[str]) -> None:
    _real_wait_ready(monkeypatch, lambda: _ctrl_c_in_a_terminal(fake_stack))
    result = _up("--demo")
    assert result.exit_code == 0, result.output
    assert "stopped cleanly" in result.output and "error" not in result.output
    assert started == [], "no workers started and no demo played after Ctrl-C"


def test_sigint_to_up_alone_while_services_start_stops_at_once(
        monkeypatch: pytest.MonkeyPatch, fake_stack: dict[str, Any], started: list[str]) -> None:
    """`kill -INT <up>`: the services keep running, and `up` must not wait for them to get ready (the
    timeout) nor start workers and the demo before it stops."""
    _real_wait_ready(monkeypatch, lambda: threading.Timer(
        0.3, fake_stack["handlers"][signal.SIGINT], (signal.SIGINT, None)).start())
    result = _up("--demo")
    assert result.exit_code == 0, result.output
    assert "stopped cleanly" in result.output and "error" not in result.output
    assert started == []
    assert fake_stack["stack"].services["vault"].proc.poll() is not None, "the stack was stopped"


def test_ctrl_c_during_the_demo_is_a_clean_stop(monkeypatch: pytest.MonkeyPatch, fake_stack: dict[str, Any]) -> None:
    """The services end on the terminal's Ctrl-C, so the demo fails on its next request: no crash either."""
    def demo_interrupted(stack: dict[str, Any], console: Any) -> None:
        _ctrl_c_in_a_terminal(fake_stack)
        raise ConnectionRefusedError("the vault is gone")

    monkeypatch.setattr("datacoop.cli.demo.run_demo", demo_interrupted)
    result = _up_with(monkeypatch, lambda stk: None, "--demo")
    assert result.exit_code == 0, result.output
    assert "stopped cleanly" in result.output and "error" not in result.output


def test_exit_after_demo_without_demo_is_refused_before_anything_starts(fake_stack: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["up", "--exit-after-demo", "--no-chain"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "--exit-after-demo" in result.output and "add --demo" in result.output
    assert "stack" not in fake_stack, "nothing was started"


def test_a_broker_that_dies_while_services_start_is_named_at_once(
        monkeypatch: pytest.MonkeyPatch, fake_stack: dict[str, Any], started: list[str]) -> None:
    """The services would wait on it until the readiness timeout, which named only them."""
    def kill_broker() -> None:
        fake_stack["stack"].broker.proc.kill()
        fake_stack["stack"].broker.proc.wait()

    _real_wait_ready(monkeypatch, kill_broker)
    result = _up("--demo")
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "the broker exited with code -9 while the services started" in said, said
    assert "not ready after" not in said and started == []


def test_a_service_refused_its_port_points_to_another_stack(
        monkeypatch: pytest.MonkeyPatch, fake_stack: dict[str, Any]) -> None:
    """A service now refuses a taken port in its own words; `up`'s hint looked only for uvicorn's."""
    def port_taken() -> None:
        vault = fake_stack["stack"].services["vault"]
        vault.log_path.write_text("datacoop vault: cannot start: port 8102 on 127.0.0.1 is taken by another "
                                  "process (DATACOOP_PORT): stop it, or set DATACOOP_PORT to a free port\n")
        vault.proc.kill()
        vault.proc.wait()

    _real_wait_ready(monkeypatch, port_taken)
    said = " ".join(_up().output.split())
    assert "was taken by another process after this stack chose it (another stack?)" in said, said
