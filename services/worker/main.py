"""`python -m services.worker.main` (or `datacoop worker`): one worker process.

BLAS thread counts are set to the cores offered before NumPy is imported, so several workers on
one machine don't each spawn a thread per core.

A worker that can't work (DATACOOP_WORKER_BACKEND=cupy without a CUDA device, a registration the
jobs service refuses: a worker id another provider owns, a bad key) exits with status 2 and one
line saying why, instead of taking jobs it would fail. So does a setting it can't use (a key file
missing or not a key, DATACOOP_WORKER_CORES=abc, a jobs URL that is not http(s)://...): one line
naming the flag or variable, status 2, no traceback. A jobs service that never answers its first
registration (a wrong --jobs-url, a service not running) ends it after DATACOOP_WORKER_START_WAIT_S
(120 s; 0 waits for ever) with status 3 and one line; once registered, it waits for a restarting
service for ever.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from urllib.parse import urlparse

START_WAIT_S = 120.0  # how long a worker's first registration waits for the jobs service (DATACOOP_WORKER_START_WAIT_S)
WORKER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # the jobs service's id shape


def default_worker_id(provider: str, hostname: str | None = None) -> str:
    """The worker id when none is given: the host name (up to 40 characters, outside the id's alphabet made
    `-`) and 12 hex digits of SHA-256 over the provider address (any case) and the host name. The same on
    every run of one machine with one key, so the provider's record (accepted results, marks, reputation)
    carries over and the registry doesn't fill with dead ids; another key or another machine gets
    another id. Two workers with one key on one machine would share it (the second's registration ends the
    first's leases): give each its own --worker-id."""
    host = hostname if hostname is not None else socket.gethostname()
    digest = hashlib.sha256(f"{provider.lower()}\n{host}".encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9._:-]', '-', host[:40]) or 'worker'}-{digest}"


class SettingInvalid(ValueError):
    """A flag or environment variable the worker can't use; the message names it and what to give."""


def _key(key_file: str | None) -> str:
    """The provider key from --key-file or DATACOOP_KEY, as 0x + 64 hex digits."""
    if key_file:
        try:
            raw = Path(key_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a text file"
            raise SettingInvalid(f"--key-file {key_file}: cannot read it ({reason}); give the file holding "
                                 "the provider's key (64 hex digits)") from None
        source = f"--key-file {key_file}"
    else:
        raw, source = os.environ.get("DATACOOP_KEY", "").strip(), "DATACOOP_KEY"
    if not raw:
        raise SettingInvalid("no provider key: pass --key-file FILE or set DATACOOP_KEY (64 hex digits)")
    key = raw.removeprefix("0x")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", key):
        raise SettingInvalid(f"{source} does not hold a provider key; it must be 64 hex digits "
                             "(optionally 0x-prefixed)")
    return "0x" + key


def _number(name: str, raw: str | None, kind: type[int] | type[float], least: float) -> int | float | None:
    """An environment variable as a number >= least (None when unset or empty)."""
    if raw is None or not raw.strip():
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value != value or value < least:
        what = "a whole number" if kind is int else "a number"
        raise SettingInvalid(f"{name}={raw!r} is not {what} >= {least:g}; fix it or unset it")
    return value


def check_settings(jobs_url: str, worker_id: str | None, cores: int | None) -> None:
    """SettingInvalid naming --jobs-url, --worker-id or --cores when the value can't work."""
    parsed = urlparse(jobs_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SettingInvalid(f"--jobs-url {jobs_url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8106")
    if worker_id is not None and not WORKER_ID.fullmatch(worker_id):
        raise SettingInvalid(f"--worker-id {worker_id!r} is not a valid worker id; use 1-64 letters, digits, "
                             "'.', '_', ':' or '-'")
    if cores is not None and cores < 1:
        raise SettingInvalid(f"--cores {cores} must be at least 1 (or leave it out to offer every core)")


def run(jobs_url: str, key: str, worker_id: str | None = None, cores: int | None = None,
        object_store: str | None = None, max_jobs: int | None = None) -> None:
    """Run one worker until SIGTERM/SIGINT; WorkerCannotStart (services.worker.worker) when it can't,
    saying which setting is wrong where one is."""
    from services.worker.worker import WorkerCannotStart

    try:
        check_settings(jobs_url, worker_id, cores)
        delay_s = _number("DATACOOP_WORKER_DELAY_S", os.environ.get("DATACOOP_WORKER_DELAY_S"), float, 0) or 0.0
        start_wait = _number("DATACOOP_WORKER_START_WAIT_S", os.environ.get("DATACOOP_WORKER_START_WAIT_S"), float, 0)
        start_wait_s = START_WAIT_S if start_wait is None else (float(start_wait) or None)  # 0: for ever
        from services.worker.analytics.disclosure import configured_min_group_size

        min_group_size = configured_min_group_size()
    except ValueError as exc:
        raise WorkerCannotStart(str(exc)) from None
    if cores:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(cores)
    from eth_account import Account

    from datacoop.kit.logs import configure
    from services.worker.client import WorkerSession
    from services.worker.worker import Worker

    configure("worker", os.environ.get("DATACOOP_LOG_LEVEL", "INFO"),
              os.environ.get("DATACOOP_LOG_JSON", "true").lower() == "true")
    for noisy in ("httpx", "httpcore"):  # a line per heartbeat and lease poll otherwise (~60 KB in 10 minutes)
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        worker_id = worker_id or default_worker_id(Account.from_key(key).address)
        session = WorkerSession(jobs_url, key, worker_id)
    except ValueError as exc:
        raise WorkerCannotStart(f"the provider key is not usable ({exc}); give 64 hex digits") from None
    worker = Worker(session, Path(object_store or os.environ.get("DATACOOP_WORKER_OBJECT_STORE", "var/objects")),
                    cores=cores, tamper_results=os.environ.get("DATACOOP_WORKER_TAMPER") == "1",
                    delay_s=delay_s, min_group_size=min_group_size, start_wait_s=start_wait_s)

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.stop(interrupt_poll=True)  # an idle worker stops now; one running a job finishes it first

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run_forever(max_jobs)
    logging.getLogger("datacoop.worker").info("worker %s stopped after %d job(s)", worker_id, worker.jobs_done)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="datacoop worker", description="Run analytics jobs for the cooperative.")
    parser.add_argument("--jobs-url", default=os.environ.get("DATACOOP_JOBS_URL", "http://127.0.0.1:8106"))
    parser.add_argument("--key-file", default=os.environ.get("DATACOOP_WORKER_KEY_FILE"),
                        help="the provider's payout key (hex); else DATACOOP_KEY")
    parser.add_argument("--worker-id", default=os.environ.get("DATACOOP_WORKER_ID"),
                        help="default: the host name and a hash of the provider address and host name, the same on "
                             "every run of this machine with this key")
    parser.add_argument("--cores", type=int, default=None, help="CPU threads to offer; else DATACOOP_WORKER_CORES")
    parser.add_argument("--object-store", default=None, help="folder relative locations are read from")
    args = parser.parse_args(argv)
    from services.worker.worker import JobsServiceUnreachable, WorkerCannotStart

    try:
        cores = args.cores if args.cores is not None else _number(  # 0: every core, as unset
            "DATACOOP_WORKER_CORES", os.environ.get("DATACOOP_WORKER_CORES"), int, 0) or None
        run(args.jobs_url, _key(args.key_file), args.worker_id, int(cores) if cores is not None else None,
            args.object_store)
    except (WorkerCannotStart, SettingInvalid) as exc:
        print(f"datacoop worker: cannot run: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3 if isinstance(exc, JobsServiceUnreachable) else 2) from None


if __name__ == "__main__":
    main()
