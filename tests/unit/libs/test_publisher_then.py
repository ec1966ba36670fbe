"""The publisher's `then` callback, driven through its ack handler with stand-in acks (no broker needed:
the real-broker path of `then` is the writer's, tested in tests/integration/bus/test_writer.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from datacoop.bus import Publisher
from datacoop.bus.publisher import _Request


async def test_then_gets_each_requests_outcome_once_even_when_its_caller_gave_up() -> None:
    loop = asyncio.get_running_loop()
    outcomes: list[list[Any]] = [[], [], []]
    requests = [_Request("t", [], loop.create_future(), [None, None], 2, then=outcomes[n].append) for n in range(3)]
    requests[2].done.cancel()  # its caller stopped waiting: the callback must still hear of it

    class _Meta:
        offset = 40

    ok: asyncio.Future[Any] = loop.create_future()
    ok.set_result(_Meta())
    Publisher._acked(ok, [(requests[0], 0), (requests[0], 1), (requests[2], 0), (requests[2], 1)], partition=3)
    failed: asyncio.Future[Any] = loop.create_future()
    failed.set_exception(KafkaTimeoutError("no ack"))
    Publisher._acked(failed, [(requests[1], 0)], partition=0)
    Publisher._acked(ok, [(requests[1], 1)], partition=3)  # its other batch lands: no second answer
    assert outcomes[0] == [[(3, 40), (3, 41)]] and await requests[0].done == [(3, 40), (3, 41)]
    assert len(outcomes[1]) == 1 and isinstance(outcomes[1][0], KafkaTimeoutError)
    with pytest.raises(KafkaTimeoutError):
        await requests[1].done
    assert outcomes[2] == [[(3, 42), (3, 43)]]
