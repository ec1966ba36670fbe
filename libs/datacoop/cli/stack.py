"""The local stack behind `datacoop up`: broker, chain and every service as separate processes."""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datacoop.kit.settings import ServiceSettings
from infra.local import REPO_ROOT, Broker, Chain, InfraError, die_with_parent, free_port, start_broker, start_chain

RUN_DIR = REPO_ROOT / "var" / "run"
STACK_FILE = RUN_DIR / "stack.json"
RESEARCHER_KEY_FILE = RUN_DIR / "researcher.apikey"


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    module: str
    summary: str
    needs_chain: bool = False

    @property
    def default_port(self) -> int:
        """The port the service's settings default to (`services.<name>.settings`), the one README documents."""
        settings = importlib.import_module(f"services.{self.name}.settings")
        classes = [c for c in vars(settings).values() if isinstance(c, type) and issubclass(c, ServiceSettings)
                   and c is not ServiceSettings]
        return int(classes[0].model_fields["port"].default)


# Every service that exists, in start order. A new service adds one line here (see README).
SERVICES: list[ServiceEntry] = [
    ServiceEntry("consent", "services.consent.service", "members, signed consents, receipts, erasure requests"),
    ServiceEntry("vault", "services.vault.service",
                 "contributed records encrypted per member, internal decrypt, crypto-shredding"),
    ServiceEntry("anonymizer", "services.anonymizer.service",
                 "dataset definitions, consent-checked k-anonymous versions (Parquet), DP aggregates"),
    ServiceEntry("marketplace", "services.marketplace.service",
                 "catalog, orders paid on chain, signed Parquet downloads, DP queries with budgets", needs_chain=True),
    ServiceEntry("jobs", "services.jobs.service",
                 "analytics jobs: submission, leases to workers, signed results, redundancy, job fees"),
    ServiceEntry("settlement", "services.settlement.service",
                 "payments seen on chain, revenue allocations, payout epochs and proofs", needs_chain=True),
]


@dataclass
class RunningService:
    entry: ServiceEntry
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_start: int = 0  # this run's lines begin here

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> str:
        if self.proc.poll() is not None:
            return f"exited ({self.proc.returncode})"
        return "ready" if _service_state(self.url, self.proc.pid) == "ready" else "starting"

    @property
    def moved(self) -> bool:
        """True when the service's documented port was taken and it listens elsewhere."""
        return self.port != self.entry.default_port


def _service_state(url: str, pid: int) -> str:
    """`ready`, `starting` (not caught up yet, or not answering), or `not ready: <why>` where its /readyz says
    its consumer is failing (the broker silent, the database unwritable) rather than still catching up."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
            body = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:  # 503: not ready, the body says why
        try:
            body = json.loads(exc.read() or b"{}")
        except (ValueError, OSError):
            return "starting"
        failing = body.get("failing") if isinstance(body, dict) and body.get("pid", pid) == pid else None
        return f"not ready: {str(failing)[:160]}" if failing else "starting"
    except (urllib.error.URLError, OSError, ValueError):
        return "starting"
    return "ready" if isinstance(body, dict) and body.get("pid", pid) == pid else "starting"


@dataclass
class Stack:
    broker: Broker
    chain: Chain | None
    services: dict[str, RunningService] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    data_dir: Path = RUN_DIR / "data"
    chain_env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {
            "up_pid": os.getpid(),  # the `datacoop up` that owns the stack
            "broker": {"bootstrap": self.broker.bootstrap, "pid": self.broker.pid},
            "chain": {"url": self.chain.url, "pid": self.chain.pid, **self.chain_env} if self.chain else None,
            "services": {n: {"url": s.url, "pid": s.proc.pid, "log": str(s.log_path)}
                         for n, s in self.services.items()},
            "workers": [w.pid for w in self.workers],
        }

    def save(self) -> None:
        """Write var/run/stack.json, readable by its owner alone (it holds the local chain's keys)."""
        STACK_FILE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(STACK_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file left by an older run keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(self.describe(), indent=2))

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        for svc in reversed(list(self.services.values())):
            if svc.proc.poll() is None:
                svc.proc.terminate()
        deadline = time.monotonic() + 10
        for svc in self.services.values():
            try:
                svc.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait()
        if self.chain:
            self.chain.stop()
        self.broker.stop()
        STACK_FILE.unlink(missing_ok=True)
        release_up_lock()


UP_LOCK_FILE = RUN_DIR / "up.lock"
_up_lock: list[int] = []  # the open lock file of this process's `datacoop up`, held until it exits


def claim_stack() -> None:
    """Hold var/run/up.lock for this process's life (the kernel lets go when it exits, however it
    exits), or InfraError when another `datacoop up` holds it, starting or running. Then InfraError
    when var/run/stack.json names stack processes that outlived their `datacoop up` (a killed `up`
    leaves its children running). A second `up` would delete the projections those services hold
    open and take over their stack file."""
    if not _up_lock:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(UP_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = (running_stack() or {}).get("up_pid")
            stop = f"Ctrl-C where it runs, or `kill -INT {owner}`" if isinstance(owner, int) else "Ctrl-C where it runs"
            raise InfraError(f"another `datacoop up` is starting or running in this checkout (it holds {UP_LOCK_FILE}; "
                             f"`datacoop status` shows its stack); stop it first: {stop}") from None
        _up_lock.append(fd)
    described = running_stack()
    if described is None:
        return
    left = _left_running(described)
    if left:
        raise InfraError(f"processes of an earlier stack are still running without their `datacoop up`: {left}, "
                         "then run `datacoop up` again")


def _left_running(described: dict[str, Any]) -> str:
    """The stack's processes that are alive now and the `kill` line that stops them ("" when none)."""
    left = [(component, pid) for component, _, pid in _components(described)
            if isinstance(pid, int) and pid > 0 and _alive(pid) and _is_stack_process(pid)]
    if not left:
        return ""
    return (f"{', '.join(f'{c} pid {p}' for c, p in left)}; stop them with "
            f"`kill {' '.join(str(pid) for _, pid in left)}`")


def owner_gone(described: dict[str, Any]) -> str | None:
    """What to tell a user about a stack whose `datacoop up` no longer runs (stack.json left by a run that
    ended, or by a killed one), or None while it runs."""
    owner = described.get("up_pid")
    if not isinstance(owner, int) or (_alive(owner) and _is_stack_process(owner)):  # a reused pid is not it
        return None
    left = _left_running(described)
    if not left:
        return (f"this stack is not running: its `datacoop up` (pid {owner}) has ended and {STACK_FILE} is left from "
                "that run; `datacoop up` starts a new one")
    return f"its `datacoop up` (pid {owner}) is gone, but these still run: {left}"


def release_up_lock() -> None:
    """Let another `datacoop up` start (this one's stack is stopped)."""
    while _up_lock:
        os.close(_up_lock.pop())


def _is_stack_process(pid: int) -> bool:
    """The live process `pid` is a broker, chain, service or worker (a pid in an old stack.json may have
    been reused by anything since); True where /proc cannot tell."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not Path("/proc/self").exists()
    return any(mark in cmdline for mark in (b"tansu", b"anvil", b"services.", b"datacoop"))


def _components(described: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(component, address, pid) of every process a stack description (`Stack.describe()` or
    stack.json) names, in start order; a part missing from a damaged file is skipped."""
    found: list[tuple[str, str, Any]] = []
    if isinstance(broker := described.get("broker"), dict):
        found.append(("broker (Tansu)", str(broker.get("bootstrap", "")), broker.get("pid")))
    if isinstance(chain := described.get("chain"), dict):
        found.append(("chain (anvil)", str(chain.get("url", "")), chain.get("pid")))
    if isinstance(services := described.get("services"), dict):
        found += [(f"service {name}", str(svc.get("url", "")), svc.get("pid"))
                  for name, svc in services.items() if isinstance(svc, dict)]
    if isinstance(workers := described.get("workers"), list):
        found += [(f"worker {i + 1}", "-> jobs", pid) for i, pid in enumerate(workers)]
    return found


def start_stack(only: list[str] | None = None, with_chain: bool = True, fresh: bool = True) -> Stack:
    """Start the broker, the chain and the services; raises InfraError naming what failed, or when
    another `datacoop up`'s stack is still running."""
    claim_stack()
    logs = RUN_DIR / "logs"
    set_aside_logs(logs)
    broker = start_broker(log_path=logs / "broker.log")
    chain = None
    try:
        chain_env: dict[str, str] = {}
        if with_chain:
            from datacoop.chain import deploy_local_stack

            chain = start_chain(log_path=logs / "chain.log", block_time_s=1)
            chain_env = deploy_local_stack(chain.url)
        stack = Stack(broker, chain, chain_env=chain_env)
        if fresh:  # the broker keeps its log in memory: a new broker means a new, empty world
            forget_previous_stack(stack.data_dir)
        for entry in SERVICES:
            if only and entry.name not in only:
                continue
            if entry.needs_chain and chain is None:
                continue
            stack.services[entry.name] = spawn_service(entry, stack)
        stack.save()
        return stack
    except BaseException:
        if chain:
            chain.stop()
        broker.stop()
        raise


def set_aside_logs(logs: Path) -> None:
    """Start `logs` empty: the previous `up`'s logs move to `<logs>.previous` (replacing the run before
    that), so each log holds one run and the last one's stays readable after a restart."""
    previous = logs.with_name(f"{logs.name}.previous")
    if logs.is_dir() and any(logs.iterdir()):
        shutil.rmtree(previous, ignore_errors=True)
        logs.rename(previous)
    logs.mkdir(parents=True, exist_ok=True)


def forget_previous_stack(data_dir: Path, researcher_key: Path = RESEARCHER_KEY_FILE) -> None:
    """Remove what a previous `datacoop up` left that means nothing to a new broker and chain: the
    projections in `data_dir`, and the researcher API key `datacoop researcher register` saved (the new
    marketplace has never seen it)."""
    for old in [*data_dir.glob("*.duckdb*"), researcher_key]:
        old.unlink(missing_ok=True)


def service_env(entry: ServiceEntry, stack: Stack, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DATACOOP_BOOTSTRAP": stack.broker.bootstrap,
        "DATACOOP_PORT": str(port),
        "DATACOOP_DATA_DIR": str(stack.data_dir),
        "DATACOOP_OBJECT_STORE_DIR": str(RUN_DIR / "objects"),
        "DATACOOP_ANONYMIZER_OBJECT_STORE": str(RUN_DIR / "objects"),
        "DATACOOP_WORKER_OBJECT_STORE": str(RUN_DIR / "objects"),
        "DATACOOP_GRANT_KEY_FILE": str(RUN_DIR / "keys" / "marketplace-grant-key.pem"),
        "DATACOOP_LOG_JSON": "true",
        "DATACOOP_DEV_SECRETS": "true",  # a local stack: the shared development tokens and a generated KEK
    })
    env.update(stack.chain_env)
    env.setdefault("DATACOOP_CONFIRMATIONS", "1")
    # a local stack shows changes soon, without a version a second; a value exported before `up` wins
    env.setdefault("DATACOOP_ANONYMIZER_DEBOUNCE_S", "1")
    env.setdefault("DATACOOP_ANONYMIZER_MIN_INTERVAL_S", "10")
    for name, svc in stack.services.items():
        env[f"DATACOOP_{name.upper()}_URL"] = svc.url
    return env


def spawn_service(entry: ServiceEntry, stack: Stack) -> RunningService:
    port = port_or_free(entry.default_port)
    log_path = RUN_DIR / "logs" / f"{entry.name}.log"
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    log_start = out.tell()  # where this run's lines begin (the file keeps earlier runs')
    proc = subprocess.Popen([sys.executable, "-m", entry.module], env=service_env(entry, stack, port),
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
                            preexec_fn=die_with_parent())  # a killed `up` takes its services along
    return RunningService(entry, port, proc, log_path, log_start)


def port_or_free(preferred: int) -> int:
    """`preferred` (a service's documented port) when nothing listens there, else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as a server binds: a port whose old connections linger in TIME_WAIT (a stack just stopped) is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def wait_ready(stack: Stack, timeout_s: float = 60.0, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Wait until every service of `stack` is ready; InfraError when one exits or `timeout_s` passes. Returns
    early once `should_stop()` (Ctrl-C, SIGTERM): a terminal's Ctrl-C ends the services too, which is then
    no failure, and a stop asked for is not kept waiting for the timeout."""
    deadline = time.monotonic() + timeout_s
    pending = dict(stack.services)
    while pending:
        if should_stop():
            return
        for what, proc in (("broker", stack.broker), ("chain", stack.chain)):
            if proc is not None and proc.proc.poll() is not None and not should_stop():  # they would wait for ever
                raise InfraError(f"the {what} exited with code {proc.proc.returncode} while the services started; "
                                 f"its log: {proc.log_path}")
        for name, svc in list(pending.items()):
            state = svc.state()
            if state == "ready":
                pending.pop(name)
            elif state.startswith("exited"):
                if should_stop():  # it ended on the same Ctrl-C that is stopping us
                    return
                with svc.log_path.open("rb") as log_file:
                    log_file.seek(svc.log_start)
                    tail = log_file.read().decode(errors="replace")[-1500:]
                lowered = tail.lower()
                taken = (f" Port {svc.port} was taken by another process after this stack chose it (another "
                         "stack?): run `datacoop up` again, or stop what listens there (`datacoop status`)."
                         if "address already in use" in lowered or "is taken by another process" in lowered else "")
                raise InfraError(f"service {name} {state} while starting.{taken} Its log ({svc.log_path}) "
                                 f"ends:\n{tail}")
        if pending and time.monotonic() > deadline and not should_stop():
            raise InfraError(f"not ready after {timeout_s:.0f} s: {', '.join(pending)}; see var/run/logs/")
        time.sleep(0.1)


def start_workers(stack: Stack, count: int) -> None:
    """GPU-provider processes (`datacoop worker`) on this machine, each with a fresh payout key."""
    if count <= 0 or "jobs" not in stack.services:
        return
    from services.worker.launch import spawn_workers

    env = {"DATACOOP_WORKER_OBJECT_STORE": str(RUN_DIR / "objects"), "DATACOOP_LOG_JSON": "true"}
    stack.workers = spawn_workers(stack.services["jobs"].url, count, RUN_DIR / "logs", env=env)
    stack.save()


def running_stack() -> dict[str, Any] | None:
    """What `datacoop up` wrote to var/run/stack.json (services' URLs, the chain, pids), or None when no
    stack is running (no file, or one left half-written)."""
    try:
        data = json.loads(STACK_FILE.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_stack_file() -> dict[str, Any]:
    """`running_stack()`, or InfraError saying to start one."""
    data = running_stack()
    if data is None:
        raise InfraError("no running stack (var/run/stack.json missing or unreadable); start one with `datacoop up`")
    return data


def _alive(pid: int) -> bool:
    """The process exists and has not exited (an exited child nobody has reaped yet still answers kill 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill 0 is all there is
    return state not in ("Z", "X")


def status_rows(described: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(component, address, pid, state) for a stack description (`Stack.describe()` or stack.json),
    checked now: a pid that is gone is "stopped" ("exited" for a worker), a service answering /readyz
    is "ready"."""
    rows = []
    for component, address, pid in _components(described):
        if not (isinstance(pid, int) and _alive(pid)):
            state = "exited" if component.startswith("worker") else "stopped"
        elif component.startswith("service"):
            state = _service_state(address, pid)
        else:
            state = "running"
        rows.append((component, address, str(pid), state))
    return rows


def redacted(described: dict[str, Any]) -> dict[str, Any]:
    """The description without private keys (the chain's `DATACOOP_*_KEY` entries), safe to print."""
    chain = described.get("chain")
    if not chain:
        return described
    hidden = {k: ("(hidden)" if k.endswith("_KEY") else v) for k, v in chain.items()}
    return {**described, "chain": hidden}
