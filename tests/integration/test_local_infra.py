"""The local broker dies with the process that started it, even when that process is SIGKILLed (a killed
test run, benchmark or `datacoop up` must not leave brokers, chains, services or workers running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from infra.local import REPO_ROOT

STARTER = """
import sys, time
from infra.local import start_broker
broker = start_broker()
print(broker.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_broker_dies_with_the_process_that_started_it_even_on_sigkill() -> None:
    starter = subprocess.Popen([sys.executable, "-c", STARTER], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        broker_pid = int(starter.stdout.readline())
        assert _alive(broker_pid)
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(broker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(broker_pid), "the broker outlived the process that started it"
    finally:
        starter.kill()
