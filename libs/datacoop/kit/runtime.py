"""Wires one service: its DuckDB store, the publisher, the consumer runner over the topics it reads
(and the topic it writes, so a rebuilt projection includes its own events) and its writer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Generic, TypeVar

from datacoop.bus.admin import ensure_topics, standard_topics
from datacoop.bus.consumer import ConsumerRunner, Projection
from datacoop.bus.publisher import Publisher
from datacoop.command import Writer
from datacoop.kit.settings import ServiceSettings, SettingRefused
from datacoop.store import ProjectionStore
from datacoop.topics import qualified

log = logging.getLogger("datacoop.runtime")

P = TypeVar("P", bound=Projection)
# CPython's defaults are (700, 10, 10). A young collection scans every live young container, ~0.4 us
# each: 2,000 commands in flight hold ~90k of them, so at 50k each burst paid one or two 20-30 ms
# collections over objects that reference counting frees moments later (measured on the grants
# benchmark: 10-12% of its time). At 200k a burst of that size finishes before the collector looks.
GC_THRESHOLDS = (200_000, 20, 20)


class ServiceRuntime(Generic[P]):
    """`make_projection` gets the store, so the projection can answer queries on the same connection."""

    def __init__(self, name: str, settings: ServiceSettings, make_projection: Callable[[ProjectionStore], P], *,
                 reads: Iterable[str] = (), writes: str | None = None, schema_sql: str = "") -> None:
        if writes and settings.group_id:
            raise SettingRefused(
                f"DATACOOP_GROUP_ID: the {name} service writes {writes} and decides each command on its projection, "
                "which in consumer-group mode holds only the partitions assigned to this instance (a command for "
                "another partition's subject would be decided on stale state); run it as one instance and unset "
                "DATACOOP_GROUP_ID (group mode is for consumers that write nothing)")
        self.name = name
        self.settings = settings
        self._background: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._warmed = False
        prefix = settings.topic_prefix
        self.write_topic = qualified(prefix, writes) if writes else None
        topics = [qualified(prefix, t) for t in reads]
        if self.write_topic and self.write_topic not in topics:
            topics.append(self.write_topic)
        self.store = ProjectionStore(settings.data_dir / f"{name}.duckdb", schema_sql)
        projection = self.projection = make_projection(self.store)
        self.publisher = Publisher(settings.bootstrap, client_id=f"datacoop-{name}")
        self.runner = ConsumerRunner(
            bootstrap=settings.bootstrap, store=self.store, projection=projection, topics=topics,
            consumer_name=name, dlq_publisher=self.publisher, group_id=settings.group_id,
            writes_topics=frozenset())
        self.writers: list[Writer] = []
        self.writer = self.add_writer(writes) if writes else None

    def add_writer(self, topic: str) -> Writer:
        """A writer for one more topic this service is the single writer of: its events are read back
        (a rebuilt projection includes them), its seq cache follows what the consumer applies, and it
        is warmed with the others."""
        qualified_topic = qualified(self.settings.topic_prefix, topic)
        if qualified_topic not in self.runner.topics:
            self.runner.topics.append(qualified_topic)
        self.runner.writes_topics = self.runner.writes_topics | {qualified_topic}
        writer = Writer(store=self.store, publisher=self.publisher, projection=self.projection,
                        topic=qualified_topic, source=f"datacoop/{self.name}", reader=self.runner)
        self.runner.add_listener(writer.observe)
        self.writers.append(writer)
        return writer

    def add_background(self, loop_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A coroutine started once the consumer runs (a sweeper, a chain watcher), cancelled at stop."""
        self._background.append(loop_fn)

    @property
    def ready(self) -> bool:
        """Caught up with the log and caches warmed, and still reading it: commands may run. Not while the
        consumer's last batch failed (`runner.failing` says why; it retries) or after its task ended, nor (group
        mode) while partitions a rebalance handed over are read up to their end."""
        behind = self.runner.group_id is not None and not self.runner.caught_up.is_set()  # after a rebalance
        return self._warmed and not self.runner.ended and self.runner.failing is None and not behind

    async def _warm_when_caught_up(self) -> None:
        await self.runner.caught_up.wait()
        async with self.store.lock:
            for writer in self.writers:
                writer.warm()
            warm = getattr(self.projection, "warm", None)
            if callable(warm):
                warm()
        # What exists now (settings, caches loaded while catching up) lives as long as the process:
        # move it out of the collector's sight, so later collections scan only what came after; and
        # collect young objects less often (a command allocates hundreds of short-lived objects, most
        # freed by reference counting before a collection would look at them).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self._warmed = True

    async def start(self) -> None:
        await ensure_topics(self.settings.bootstrap, standard_topics(self.settings.topic_prefix),
                            replication=self.settings.topic_replication)
        await self.publisher.start()
        await self.runner.start()
        self.runner.run_in_background()
        self._tasks = [asyncio.create_task(self._warm_when_caught_up()),
                       *[asyncio.create_task(fn()) for fn in self._background]]
        log.info("%s started; reading %s", self.name, ", ".join(self.runner.topics))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self.runner.stop()
        finally:
            try:
                await self.publisher.stop()
                for writer in self.writers:  # acks handed over while the publisher stopped: applied first
                    await writer.drain()
            finally:
                self.store.close()
        log.info("%s stopped", self.name)
