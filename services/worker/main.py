"""`python -m services.worker.main` (or `datacoop worker`): one worker process.

BLAS thread counts are set to the cores offered before NumPy is imported, so several workers on
one machine don't each spawn a thread per core.

A worker that can't work (DATACOOP_WORKER_BACKEND=cupy without a CUDA device, a registration the
jobs service refuses: a worker id another provider owns, a bad key) exits with status 2 and one
line saying why, instead of taking jobs it would fail.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import uuid
from pathlib import Path
from types import FrameType


def _key(key_file: str | None) -> str:
    raw = Path(key_file).read_text().strip() if key_file else os.environ.get("DATACOOP_KEY", "")
    if not raw:
        raise SystemExit("no provider key: pass --key-file FILE or set DATACOOP_KEY (64 hex digits)")
    return raw if raw.startswith("0x") else "0x" + raw


def run(jobs_url: str, key: str, worker_id: str | None = None, cores: int | None = None,
        object_store: str | None = None, max_jobs: int | None = None) -> None:
    """Run one worker until SIGTERM/SIGINT; WorkerCannotStart (services.worker.worker) when it can't."""
    if cores:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(cores)
    from datacoop.kit.logs import configure
    from services.worker.client import WorkerSession
    from services.worker.worker import Worker

    configure("worker", os.environ.get("DATACOOP_LOG_LEVEL", "INFO"),
              os.environ.get("DATACOOP_LOG_JSON", "true").lower() == "true")
    for noisy in ("httpx", "httpcore"):  # a line per heartbeat and lease poll otherwise (~60 KB in 10 minutes)
        logging.getLogger(noisy).setLevel(logging.WARNING)
    worker_id = worker_id or f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:8]}"
    session = WorkerSession(jobs_url, key, worker_id)
    worker = Worker(session, Path(object_store or os.environ.get("DATACOOP_WORKER_OBJECT_STORE", "var/objects")),
                    cores=cores, tamper_results=os.environ.get("DATACOOP_WORKER_TAMPER") == "1",
                    delay_s=float(os.environ.get("DATACOOP_WORKER_DELAY_S", "0")))

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
    parser.add_argument("--worker-id", default=os.environ.get("DATACOOP_WORKER_ID"))
    parser.add_argument("--cores", type=int, default=int(os.environ.get("DATACOOP_WORKER_CORES", "0")) or None)
    parser.add_argument("--object-store", default=None, help="folder relative locations are read from")
    args = parser.parse_args(argv)
    from services.worker.worker import WorkerCannotStart

    try:
        run(args.jobs_url, _key(args.key_file), args.worker_id, args.cores, args.object_store)
    except WorkerCannotStart as exc:
        print(f"datacoop worker: cannot run: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
