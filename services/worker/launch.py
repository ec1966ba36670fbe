"""Start worker processes on this machine (what `datacoop up` and the demo do): each with its own
provider key, one BLAS thread, and a log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from eth_account import Account

from infra.local import die_with_parent

REPO_ROOT = Path(__file__).resolve().parents[2]


def spawn_worker(jobs_url: str, worker_id: str, log_path: Path, key: str | None = None, cores: int = 1,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """One `python -m services.worker.main` process; `key` defaults to a fresh provider key."""
    full = {**os.environ, "DATACOOP_KEY": key or Account.create().key.hex(), "DATACOOP_WORKER_CORES": str(cores),
            **(env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115  (the child owns it)
    return subprocess.Popen([sys.executable, "-m", "services.worker.main", "--jobs-url", jobs_url,
                             "--worker-id", worker_id], env=full, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent())  # gone with whoever started it


def spawn_workers(jobs_url: str, count: int, log_dir: Path, env: dict[str, str] | None = None,
                  prefix: str = "worker") -> list[subprocess.Popen[bytes]]:
    return [spawn_worker(jobs_url, f"{prefix}-{i + 1}", log_dir / f"{prefix}-{i + 1}.log", env=env)
            for i in range(count)]
