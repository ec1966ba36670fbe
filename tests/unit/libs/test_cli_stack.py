"""`datacoop up` / `datacoop status` pieces that need no broker: ports, the status table, leftovers."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datacoop.cli import app
from datacoop.cli import stack as stack_mod
from infra.local import Broker, InfraError, free_port

SECRET = "0x" + "ab" * 32


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _described(dead: int, service_url: str) -> dict[str, object]:
    return {"broker": {"bootstrap": "127.0.0.1:1", "pid": os.getpid()},
            "chain": {"url": "http://127.0.0.1:2", "pid": dead, "DATACOOP_SETTLER_KEY": SECRET,
                      "DATACOOP_ADMIN_KEY": SECRET, "DATACOOP_MARKET_ADDRESS": "0xmarket"},
            "services": {"consent": {"url": service_url, "pid": os.getpid(), "log": "x"}},
            "workers": [dead]}


def test_a_service_gets_its_documented_port_when_free_and_another_when_taken() -> None:
    port = free_port()
    assert stack_mod.port_or_free(port) == port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert stack_mod.port_or_free(port) != port


def test_documented_ports_match_the_services_settings() -> None:
    from services.consent.settings import ConsentSettings

    consent = next(s for s in stack_mod.SERVICES if s.name == "consent")
    assert consent.default_port == ConsentSettings.model_fields["port"].default == 8101
    ports = {s.name: s.default_port for s in stack_mod.SERVICES}
    assert ports == {"consent": 8101, "vault": 8102, "anonymizer": 8103, "marketplace": 8104, "jobs": 8106,
                     "settlement": 8105}, "README's port list"
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    documented = {m[1]: int(m[2]) for m in re.finditer(r"^### (\w+) \(port (\d+)", readme, re.MULTILINE)}
    assert documented == ports, "README's per-service headings give each service's port"


def test_a_port_whose_last_connection_lingers_in_time_wait_is_still_free() -> None:
    """A stack just stopped leaves its ports' connections in TIME_WAIT: a restart gets them back."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end of the connection waits in TIME_WAIT
        client.close()
    assert stack_mod.port_or_free(port) == port


def test_an_exited_process_nobody_reaped_is_not_running() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited; left unreaped, as `status` finds it
    try:
        rows = {r[0]: r for r in stack_mod.status_rows(_described(proc.pid, f"http://127.0.0.1:{free_port()}"))}
        assert rows["worker 1"][3] == "exited" and rows["chain (anvil)"][3] == "stopped"
    finally:
        proc.wait()


def test_status_rows_check_each_process_now() -> None:
    rows = {r[0]: r for r in stack_mod.status_rows(_described(_dead_pid(), f"http://127.0.0.1:{free_port()}"))}
    assert rows["broker (Tansu)"][3] == "running"
    assert rows["chain (anvil)"][3] == "stopped"
    assert rows["service consent"][3] == "starting", "alive but not answering /readyz"
    assert rows["worker 1"][3] == "exited"


def test_a_service_is_ready_only_when_the_process_started_answers_its_port() -> None:
    """The port chosen for a service can be taken by another process before the service binds it (another
    stack's service, say): that one's /readyz must not make ours look ready while ours fails to start."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from datacoop.testing.http import answer_json

    answering: dict[str, Any] = {"pid": os.getpid(), "failing": None}

    class Readyz(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            pid = {"pid": answering["pid"]} if answering["pid"] is not None else {}
            if answering["failing"] is None:
                answer_json(self, {"service": "consent", "ready": True, **pid})
                return
            body = json.dumps({"status": 503, "ready": False, "failing": answering["failing"], **pid}).encode()
            self.send_response(503)
            self.send_header("content-type", "application/problem+json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Readyz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        rows = {r[0]: r for r in stack_mod.status_rows(_described(_dead_pid(), url))}
        assert rows["service consent"][3] == "ready"
        answering["pid"] = _dead_pid()  # another process answers on the service's port
        rows = {r[0]: r for r in stack_mod.status_rows(_described(_dead_pid(), url))}
        assert rows["service consent"][3] == "starting"
        answering["pid"] = None  # a service of an older release names no pid: a stack started before still reads
        rows = {r[0]: r for r in stack_mod.status_rows(_described(_dead_pid(), url))}
        assert rows["service consent"][3] == "ready"
        answering.update(pid=os.getpid(), failing="BrokerSilent: no fetch of x[0] answered for 12 s")
        rows = {r[0]: r for r in stack_mod.status_rows(_described(_dead_pid(), url))}
        assert rows["service consent"][3] == "not ready: BrokerSilent: no fetch of x[0] answered for 12 s", \
            "why it is not ready, not `starting`, when its /readyz says"
    finally:
        server.shutdown()
        server.server_close()


def test_status_prints_the_table_and_never_a_private_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stack_file = tmp_path / "stack.json"
    stack_file.write_text(json.dumps(_described(_dead_pid(), f"http://127.0.0.1:{free_port()}")))
    monkeypatch.setattr(stack_mod, "STACK_FILE", stack_file)
    table = CliRunner().invoke(app, ["status"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "broker (Tansu)" in table.output and "service consent" in table.output and "stopped" in table.output
    as_json = CliRunner().invoke(app, ["status", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["chain"]["DATACOOP_MARKET_ADDRESS"] == "0xmarket"
    assert SECRET not in table.output + as_json.output


def test_status_of_a_stack_whose_up_has_ended_says_so_and_fails(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """A stack.json left behind (its `up` ended or was killed): not a table of 'stopped' rows and exit 0."""
    dead = _dead_pid()
    described = {"up_pid": dead, "broker": {"bootstrap": "127.0.0.1:1", "pid": dead},
                 "services": {"consent": {"url": "http://127.0.0.1:2", "pid": dead, "log": "x"}}, "workers": []}
    stack_file = tmp_path / "stack.json"
    stack_file.write_text(json.dumps(described))
    monkeypatch.setattr(stack_mod, "STACK_FILE", stack_file)
    result = CliRunner().invoke(app, ["status"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert f"its `datacoop up` (pid {dead}) has ended" in result.output
    assert "`datacoop up` starts a new one" in result.output
    monkeypatch.setattr(stack_mod, "_is_stack_process", lambda pid: True)  # this test's process as a leftover
    described["services"]["consent"]["pid"] = os.getpid()  # type: ignore[index]
    stack_file.write_text(json.dumps(described))
    result = CliRunner().invoke(app, ["status"], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and f"kill {os.getpid()}" in result.output, result.output


def test_a_new_stack_forgets_the_previous_ones_projections_and_api_key(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "consent.duckdb").write_text("old")
    (tmp_path / "researcher.apikey").write_text("dc_old\n")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "marketplace-grant-key.pem").write_text("kept")
    stack_mod.forget_previous_stack(tmp_path / "data", tmp_path / "researcher.apikey")
    assert not (tmp_path / "data" / "consent.duckdb").exists()
    assert not (tmp_path / "researcher.apikey").exists()
    assert (tmp_path / "keys" / "marketplace-grant-key.pem").exists()


@pytest.fixture
def run_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """stack.json and up.lock in a folder of the test's own; this process holds no lock to begin with."""
    monkeypatch.setattr(stack_mod, "STACK_FILE", tmp_path / "stack.json")
    monkeypatch.setattr(stack_mod, "UP_LOCK_FILE", tmp_path / "up.lock")
    monkeypatch.setattr(stack_mod, "_up_lock", [])
    yield tmp_path
    stack_mod.release_up_lock()


def _sleeper(*args: str) -> subprocess.Popen[str]:
    """A live process whose command line carries `args` (what a service's or a lock holder's would)."""
    return subprocess.Popen([sys.executable, "-c", "import sys, time; exec(sys.argv[1]); time.sleep(60)", *args],
                            stdout=subprocess.PIPE, text=True)


def test_each_up_starts_with_empty_logs_and_keeps_the_previous_runs_beside_them(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    stack_mod.set_aside_logs(logs)  # the first run: nothing to set aside
    assert logs.is_dir() and not list(logs.iterdir())
    (logs / "consent.log").write_text("run 1\n")
    stack_mod.set_aside_logs(logs)
    assert not list(logs.iterdir()), "a log holds one run"
    assert (tmp_path / "logs.previous" / "consent.log").read_text() == "run 1\n"
    (logs / "consent.log").write_text("run 2\n")
    stack_mod.set_aside_logs(logs)
    assert (tmp_path / "logs.previous" / "consent.log").read_text() == "run 2\n", "one run back, no more"


def test_a_second_up_is_refused_while_another_up_holds_the_lock(monkeypatch: pytest.MonkeyPatch,
                                                                  run_dir: Path) -> None:
    """Even before the first `up` has written stack.json (starting takes seconds), a second one refuses,
    before starting anything, saying how to stop the first."""
    holder = _sleeper(f"import fcntl, os; fd = os.open({str(run_dir / 'up.lock')!r}, os.O_RDWR | os.O_CREAT); "
                      "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True)")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

        def must_not_start(**_: object) -> None:
            raise AssertionError("a broker was started although another `up` runs")

        monkeypatch.setattr(stack_mod, "start_broker", must_not_start)
        starting = CliRunner().invoke(app, ["up", "--no-chain"], env={"COLUMNS": "200"})
        assert starting.exit_code == 1, starting.output
        assert "another `datacoop up` is starting or running" in starting.output and "Ctrl-C" in starting.output
        (run_dir / "stack.json").write_text(json.dumps({"up_pid": holder.pid, "broker": {"pid": holder.pid}}))
        running = CliRunner().invoke(app, ["up", "--no-chain"], env={"COLUMNS": "200"})
        assert running.exit_code == 1 and f"kill -INT {holder.pid}" in running.output, running.output
    finally:
        holder.kill()
        holder.wait()
    stack_mod.claim_stack()  # the holder is gone: the kernel let go of its lock


def test_processes_left_by_a_killed_up_are_named_with_a_kill_line(run_dir: Path) -> None:
    orphan = _sleeper("pass", "-m", "services.consent.service")  # what a service's command line names
    dead = _dead_pid()
    try:
        (run_dir / "stack.json").write_text(json.dumps({
            "up_pid": dead, "broker": {"bootstrap": "127.0.0.1:1", "pid": dead}, "chain": None,
            "services": {"consent": {"url": "http://127.0.0.1:1", "pid": orphan.pid, "log": "x"},
                         "vault": {"url": "http://127.0.0.1:2", "pid": os.getpid(), "log": "x"}},  # a reused pid
            "workers": [dead]}))
        with pytest.raises(InfraError) as refused:
            stack_mod.claim_stack()
        message = str(refused.value)
        assert f"service consent pid {orphan.pid}" in message and f"`kill {orphan.pid}`" in message
        assert str(os.getpid()) not in message, "a pid reused by another program is not the stack's"
    finally:
        orphan.kill()
        orphan.wait()
    stack_mod.claim_stack()


def test_a_stack_file_whose_processes_are_gone_does_not_block_up(run_dir: Path) -> None:
    dead = _dead_pid()
    stale = {"up_pid": dead, "broker": {"bootstrap": "127.0.0.1:1", "pid": dead}, "chain": None,
             "services": {"consent": {"url": "http://127.0.0.1:1", "pid": dead, "log": "x"}}, "workers": [dead]}
    (run_dir / "stack.json").write_text(json.dumps(stale))
    stack_mod.claim_stack()  # a leftover of a stack that died: no error
    (run_dir / "stack.json").write_text("{half written")
    stack_mod.claim_stack()


def test_the_stack_file_holding_the_chains_keys_is_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stack_file = tmp_path / "stack.json"
    stack_file.write_text("{}")
    stack_file.chmod(0o644)  # left by an older run
    monkeypatch.setattr(stack_mod, "STACK_FILE", stack_file)
    sleeper = subprocess.Popen([sys.executable, "-c", "pass"])
    sleeper.wait()
    broker = Broker("broker", free_port(), sleeper)
    stack_mod.Stack(broker, None, chain_env={"DATACOOP_SETTLER_KEY": SECRET}).save()
    assert stack_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(stack_file.read_text())["broker"]["pid"] == sleeper.pid


def test_up_says_what_it_leaves_out_and_refuses_what_cannot_run() -> None:
    from datacoop.cli import _left_out

    notes = _left_out([], chain=False, workers=3)
    assert any("marketplace" in n and "settlement" in n and "--no-chain" in n for n in notes), notes
    assert _left_out(["consent", "vault"], chain=True, workers=3) == [
        "no workers: they take their jobs from the jobs service, which is not in --services"]
    assert _left_out([], chain=True, workers=3) == []
    refused = CliRunner().invoke(app, ["up", "--no-chain", "--services", "consent,marketplace"],
                                 env={"COLUMNS": "200"})
    assert refused.exit_code == 1 and "marketplace need(s) the chain" in refused.output, refused.output


def test_settlement_commands_say_when_the_running_stack_has_no_settlement(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    from datacoop.cli import settlement as settlement_cli

    monkeypatch.setattr(stack_mod, "running_stack", lambda: {"services": {"consent": {"url": "http://x"}}})
    monkeypatch.delenv("DATACOOP_SETTLEMENT_URL", raising=False)
    shown = CliRunner().invoke(app, ["epoch", "show"], env={"COLUMNS": "200"})
    assert shown.exit_code == 1 and "has no settlement service" in shown.output, shown.output
    monkeypatch.setattr(stack_mod, "running_stack", lambda: None)
    assert settlement_cli.settlement_url_default() == settlement_cli.DEFAULT_SETTLEMENT_URL


def test_help_lists_each_command_in_whole_sentences() -> None:
    """A docstring's first paragraph spans source lines; the list folds them (rich kept each break)."""
    shown = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    assert "a refund of an allocated order would stop every later payout root" in shown.output
    assert "take and run jobs. Exits non-zero, saying why" in shown.output


def test_a_setting_exported_before_up_wins_over_the_local_stacks_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """README: a DATACOOP_* setting exported before `datacoop up` reaches the services. The anonymizer's build
    pacing was overwritten by the stack's local values all the same; what must be the stack's still is."""
    from datacoop.cli.stack import SERVICES, Stack, service_env

    class _Broker:
        bootstrap, pid = "127.0.0.1:1", 1

    anonymizer = next(s for s in SERVICES if s.name == "anonymizer")
    monkeypatch.setenv("DATACOOP_ANONYMIZER_MIN_INTERVAL_S", "600")
    monkeypatch.setenv("DATACOOP_BOOTSTRAP", "elsewhere:9092")
    env = service_env(anonymizer, Stack(broker=_Broker(), chain=None), 8103)  # type: ignore[arg-type]
    assert env["DATACOOP_ANONYMIZER_MIN_INTERVAL_S"] == "600" and env["DATACOOP_ANONYMIZER_DEBOUNCE_S"] == "1"
    assert env["DATACOOP_BOOTSTRAP"] == "127.0.0.1:1", "the stack's broker, whatever was exported"
    monkeypatch.delenv("DATACOOP_ANONYMIZER_MIN_INTERVAL_S")
    assert service_env(anonymizer, Stack(broker=_Broker(), chain=None), 8103)[  # type: ignore[arg-type]
        "DATACOOP_ANONYMIZER_MIN_INTERVAL_S"] == "10"
