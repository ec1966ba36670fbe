"""Bootstrap of the anonymizer service: settings, store, bus, the builder, the app; `main()`.

The service reads the members and records topics (who may be in a version) and writes the datasets
topic (definitions, builds, versions). One builder task runs builds one at a time:
- on demand (POST /datasets/{id}/build);
- when a live version contains a member whose consent ended or who asked to be forgotten: a watcher of
  its own (it does not wait for a build in progress) supersedes every such version at once, then asks
  for a build; the version that build publishes is named their successor;
- when consents, erasures or records changed and `debounce_s` passed without another change, if the
  eligible record ids differ from those of the last build (fingerprint), so a restart or a replay
  builds nothing new by itself.
Unless forced, a build whose fingerprint is that of the newest version on offer publishes nothing (it
ends `unchanged`), and neither does one whose output is that version's (the same Parquet sha256 and the
same contributor weights, none of them departed; new records can give the same rows): it ends
`unchanged` after anonymizing, and its fingerprint joins that version's. The same rows are never on sale
twice, and unpaid orders for the version on offer stay payable. A forced build publishes even identical
output, and its detail says so. A published version supersedes every older
one still on offer ("replaced by version N"): new sales use the newest. Its contributors are checked
against eligibility once more in the same step as the append: a member who left during the build is
dropped and the rows anonymized again without them, so no fresh version holds them.
Build failures are reported in words that never quote a record's value (they reach the datasets topic
and the public build API); an unexpected error's message is withheld, its type and frames are logged.
Decryption goes through the vault's internal API, outside any DuckDB transaction; the CPU work runs
in a thread so the API keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import yaml
from fastapi import FastAPI

from datacoop import objectstore
from datacoop.bus.consumer import Delivery
from datacoop.events.datasets import (
    BuildStage,
    BuildTrigger,
    DatasetDefined,
    DatasetVersionPublished,
    VersionBuildFinished,
    VersionBuildProgressed,
    VersionBuildStarted,
)
from datacoop.events.envelope import derived_event_id
from datacoop.events.members import ConsentExpired, ConsentGranted, ConsentRevoked, ErasureRequested
from datacoop.events.records import KeysShredded, RecordsContributed
from datacoop.events.registry import Event
from datacoop.keys import write_secret
from datacoop.kit import ServiceRuntime, create_app, serve
from datacoop.kit.settings import DEV_OPERATOR_TOKEN, SettingRefused, dev_default_warned
from datacoop.topics import DATASETS, MEMBERS, RECORDS
from services.anonymizer import build as pipeline
from services.anonymizer import domain
from services.anonymizer.api import build_router
from services.anonymizer.definition import DATASETS_DIR, DefinitionError, ResolvedDefinition
from services.anonymizer.dp import DPError
from services.anonymizer.hierarchy import HierarchyError
from services.anonymizer.lattice import NoAnonymousNode
from services.anonymizer.mondrian import MondrianError
from services.anonymizer.privacy_checks import PrivacyViolation
from services.anonymizer.projection import SCHEMA_SQL, AnonymizerProjection
from services.anonymizer.settings import AnonymizerSettings
from services.consent.catalog import load_catalog
from services.vault.categories import load_schemas

log = logging.getLogger("datacoop.anonymizer")
_CHANGES = (ConsentGranted, ConsentRevoked, ConsentExpired, ErasureRequested, KeysShredded, RecordsContributed)
_DEPARTURES = (ConsentRevoked, ConsentExpired, ErasureRequested, KeysShredded)
# failures whose messages are written for this (they count values and never quote one) and may be shown
_WORDED = (HierarchyError, PrivacyViolation, NoAnonymousNode, MondrianError, DPError, DefinitionError,
           pipeline.BuildError)
DECRYPT_PAGE = 10_000
RETRY_AFTER_S = 30.0
KEEP_PROGRESS = 200


class NothingToBuild(Exception):
    """A build found no records it may use: an outcome to report in words, not an error's class name."""


class AppendFailed(RuntimeError):
    """Appending a finished build failed (the broker): not a build failure to report, the builder retries."""


class ContributorsLeft(Exception):
    """Members of a version about to be published are no longer eligible: it must not be published."""

    def __init__(self, members: set[str]) -> None:
        super().__init__(f"{len(members)} member(s) left during the build")
        self.members = members


class OfferChanged(Exception):
    """The version a build's output was identical to is no longer the one on offer: publish after all."""


@dataclass(frozen=True)
class BuildEnded:
    """How a build that anonymized ended: `published` (`version` is new) or `unchanged` (its output is
    exactly `version`, on offer, which is kept); `detail` says why when there is more to say."""

    version: int
    outcome: Literal["published", "unchanged"]
    detail: str = ""


def unchanged_detail(version: int, sha256: str) -> str:
    return (f"version {version} already holds exactly what this build would publish (the same rows, sha256 "
            f"{sha256[:12]}…, and the same contributors); nothing published (build with force to publish it "
            "again as a new version)")


def forced_detail(same: int, version: int, sha256: str) -> str:
    return (f"forced: the same rows and contributors as version {same} (sha256 {sha256[:12]}…) published again "
            f"as version {version}, which supersedes it (unpaid orders for version {same} can no longer be paid)")


def failure_detail(exc: BaseException) -> str:
    """What a failed build says on the datasets topic and the public API: the service's own words, or for
    any other error only its type (its message may quote a decrypted value: a pyarrow or int() error)."""
    if isinstance(exc, NothingToBuild):
        return str(exc)
    if isinstance(exc, (*_WORDED, DecryptRefused)):
        return str(exc)  # the engine's own words (they name columns and counts, never values)
    if isinstance(exc, httpx.HTTPError):
        return f"the vault could not be reached ({type(exc).__name__}: {exc}); the build is tried again"
    return (f"{type(exc).__name__} while building (its message is withheld: it may quote a member's data); "
            "the anonymizer's log has where it was raised")


def utcnow() -> datetime:
    return datetime.now(UTC)


def load_master_secret(settings: AnonymizerSettings) -> bytes:
    if settings.anonymizer_pseudonym_key:
        return settings.anonymizer_pseudonym_key.encode()
    path = settings.data_dir / "anonymizer-pseudonym-key"
    if not settings.dev_secrets:
        raise SettingRefused("DATACOOP_ANONYMIZER_PSEUDONYM_KEY is unset: set it to a random secret (e.g. "
                             "`python -c 'import secrets; print(secrets.token_hex(32))'`) kept apart from the data "
                             "and never changed (pseudonyms derive from it), or set DATACOOP_DEV_SECRETS=true on a "
                             f"local development stack to have one generated into {path}")
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            write_secret(path, (os.urandom(32).hex() + "\n").encode())
        log.warning("DATACOOP_ANONYMIZER_PSEUDONYM_KEY is unset: generated a pseudonym secret into %s (local "
                    "development only; keep it beside, not inside, the projection)", path)
    return path.read_text().strip().encode()


def object_store_dir(settings: AnonymizerSettings) -> Path | str:
    """A local folder (Path), or an s3://bucket/prefix URL (str) written through datacoop.objectstore."""
    where = settings.anonymizer_object_store
    if not where:
        return settings.data_dir / "objects"
    if where.startswith("file://"):
        return Path(where.removeprefix("file://"))
    if objectstore.is_s3(where):
        objectstore.split_s3(where)  # a bucket is named, or this says so at start
        return where.rstrip("/")
    if "://" in where:
        raise ValueError(f"object store {where!r}: only a local folder, a file:// URL or an s3://bucket/prefix "
                         "URL is implemented")
    return Path(where)


class DecryptRefused(RuntimeError):
    """The vault refused the decrypt call (token, readiness, ...): the build fails and says why."""


@dataclass
class BuildRequest:
    dataset_id: str
    trigger: BuildTrigger
    build_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    force: bool = False  # build even when the newest version on offer holds exactly these inputs


class AnonymizerService(ServiceRuntime[AnonymizerProjection]):
    def __init__(self, settings: AnonymizerSettings, clock: Callable[[], datetime] = utcnow,
                 http: httpx.AsyncClient | None = None) -> None:
        super().__init__("anonymizer", settings, lambda store: AnonymizerProjection(store.conn),
                         reads=[MEMBERS, RECORDS], writes=DATASETS, schema_sql=SCHEMA_SQL)
        self.config = settings
        self.clock = clock
        catalog = load_catalog()
        self.vocabulary = domain.Vocabulary(
            frozenset(catalog.purposes), frozenset(catalog.categories),
            {name: frozenset(f.name for f in s.fields) for name, s in load_schemas().items()})
        self.master_secret = load_master_secret(settings)
        self.store_dir = object_store_dir(settings)
        # DuckDB needs a local file: with an s3:// store the aggregates stay in <data_dir>/objects
        local_dir = settings.data_dir / "objects" if objectstore.is_s3(self.store_dir) else self.store_dir
        self.aggregates_db = Path(local_dir) / "aggregates.duckdb"
        self.operator_token = dev_default_warned(settings.anonymizer_operator_token, DEV_OPERATOR_TOKEN,
                                                 "DATACOOP_ANONYMIZER_OPERATOR_TOKEN", dev_secrets=settings.dev_secrets)
        self._http = http
        self.queue: list[BuildRequest] = []
        self.current: BuildRequest | None = None
        self.live_progress: dict[str, dict[str, Any]] = {}
        self._changed: dict[str, float] = {}  # dataset -> when its inputs last changed (monotonic)
        self._first_changed: dict[str, float] = {}  # dataset -> the first change not built yet
        self._build_started: dict[str, float] = {}  # dataset -> when its last build began (monotonic)
        self._retry: set[str] = set()  # datasets whose last build failed for a passing reason (vault down)
        self._all_changed_at: float | None = time.monotonic()
        self._wake = asyncio.Event()
        self._departed = asyncio.Event()  # a consent ended or an erasure arrived: look for versions to supersede
        self._resolved: dict[tuple[str, int], ResolvedDefinition] = {}
        self.definition_files: list[dict[str, Any]] | None = None  # what became of each file, once read at start
        self.runner.add_listener(self._on_applied)
        self.add_background(self.builder_forever)
        self.add_background(self.supersede_forever)

    def _on_applied(self, deliveries: list[Delivery]) -> None:
        if any(isinstance(d.event, _CHANGES) for d in deliveries):
            self._all_changed_at = time.monotonic()
        if any(isinstance(d.event, _DEPARTURES) for d in deliveries):
            self._departed.set()

    # -- definitions -----------------------------------------------------------------------------
    def resolved(self, dataset_id: str) -> ResolvedDefinition | None:
        """The dataset's newest definition in the log, checked as a replayed one: a definition accepted before
        every column needed a role still builds, its columns in no role published unchanged as before."""
        state = self.projection.definition(dataset_id)
        if state is None:
            return None
        key = (dataset_id, state.definition_version)
        if key not in self._resolved:
            self._resolved[key] = domain.check_definition(state.definition, self.vocabulary, replayed=True)
        return self._resolved[key]

    async def define(self, raw: dict[str, Any], source: str) -> tuple[ResolvedDefinition, bool]:
        """Check and append a definition; (resolved, whether it was new). DefinitionError / Refused."""
        resolved = domain.check_definition(raw, self.vocabulary)
        dataset_id = resolved.definition.name
        now = self.clock()

        def decide() -> list[Event]:
            return domain.decide_define(self.projection.definition(dataset_id), resolved, raw,
                                        "file" if source == "file" else "api", now)

        def id_for(ev: Event) -> str:
            assert isinstance(ev, DatasetDefined)
            return str(derived_event_id(f"{ev.dataset_id}:{ev.definition_version}", ev.type_name()))

        assert self.writer is not None
        deliveries = await self.writer.execute(dataset_id, decide, id_for=id_for)
        if deliveries:
            self._changed[dataset_id] = 0.0
            self._wake.set()
        return resolved, bool(deliveries)

    async def load_definition_files(self) -> None:
        """Define the datasets of the definition files (at start); what became of each file is kept for
        GET /definition-files (`datacoop dataset list` shows the refused ones), not only logged."""
        directory = Path(self.config.anonymizer_definitions_dir or DATASETS_DIR)
        read: list[dict[str, Any]] = []
        for path in sorted(directory.glob("*.yaml")):  # noqa: ASYNC240 - a few small files, once at start
            problems: list[str] = []
            try:
                raw = yaml.safe_load(path.read_text(encoding="utf-8"))
                _, new = await self.define(raw, "file")
                outcome = "defined" if new else "unchanged"
                if new:
                    log.info("defined dataset from %s", path)
            except DefinitionError as exc:
                outcome, problems = "refused", list(exc.problems)
            except domain.Refused as exc:
                outcome, problems = "refused", [exc.message]
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                outcome, problems = "unreadable", [f"cannot read it: {exc}"]
            if problems:
                log.warning("dataset definition %s is %s: %s", path, outcome, "; ".join(problems))
            read.append({"file": str(path), "outcome": outcome, "problems": problems})
        self.definition_files = read

    # -- requests --------------------------------------------------------------------------------
    def request_build(self, dataset_id: str, trigger: BuildTrigger = "on-demand", *,
                      force: bool = False) -> BuildRequest:
        for req in [self.current, *self.queue]:
            if req is not None and req.dataset_id == dataset_id and req is not self.current:
                req.force = req.force or force
                return req
        req = BuildRequest(dataset_id, trigger, force=force)
        self.queue.append(req)
        for old in list(self.live_progress)[:-KEEP_PROGRESS]:  # finished builds are in the projection
            del self.live_progress[old]
        self.live_progress[req.build_id] = {"build_id": req.build_id, "dataset_id": dataset_id, "stage": "queued",
                                            "done": 0, "total": 0, "outcome": None, "version": None}
        self._wake.set()
        return req

    def build_status(self, build_id: str) -> dict[str, Any] | None:
        live = self.live_progress.get(build_id)
        stored: dict[str, Any] | None = self.projection.build(build_id)
        if stored is not None and (live is None or stored["outcome"] is not None):
            return stored
        return live

    # -- the builder -----------------------------------------------------------------------------
    async def builder_forever(self) -> None:
        await self.runner.caught_up.wait()
        try:
            await self.load_definition_files()
        except Exception:
            log.exception("loading dataset definitions failed")
        while True:
            try:
                await self.builder_once()
            except Exception:
                log.exception("builder step failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.anonymizer_poll_s)
            self._wake.clear()

    async def builder_once(self) -> None:
        if not self.ready:
            return
        if self.queue:
            await self.run_build(self.queue.pop(0))
            return
        if self._all_changed_at is not None:
            for d in self.projection.definitions():
                self._changed[d["dataset_id"]] = max(self._changed.get(d["dataset_id"], 0.0), self._all_changed_at)
                self._first_changed.setdefault(d["dataset_id"], self._all_changed_at)
            self._all_changed_at = None
        now = time.monotonic()
        quiet, waited = now - self.config.anonymizer_debounce_s, now - self.config.anonymizer_max_wait_s
        for dataset_id, changed_at in list(self._changed.items()):
            if changed_at > quiet and self._first_changed.get(dataset_id, changed_at) > waited:
                continue  # changes still coming, and the first of them not waiting too long yet
            if now - self._build_started.get(dataset_id, -math.inf) < self.config.anonymizer_min_interval_s:
                continue  # built a short while ago: the version on sale stays a while (its unpaid orders)
            del self._changed[dataset_id]
            self._first_changed.pop(dataset_id, None)
            definition = self.projection.definition(dataset_id)
            if definition is None:
                continue
            _, records, fingerprint = self._inputs(dataset_id, definition.definition_version, self.clock())
            if self.unchanged_since(dataset_id, fingerprint) is not None:  # e.g. back to the inputs on sale
                self._retry.discard(dataset_id)
                continue
            if records and (dataset_id in self._retry
                            or fingerprint != self.projection.last_finished_inputs(dataset_id)):
                await self.run_build(BuildRequest(dataset_id, "change"))
                return

    # -- versions holding a member who left --------------------------------------------------------
    async def supersede_forever(self) -> None:
        """Apart from the builder, so a build in progress never keeps such a version on sale."""
        await self.runner.caught_up.wait()
        while True:
            self._departed.clear()
            try:
                await self.supersede_departed()
            except Exception:
                log.exception("superseding versions of members who left failed; retrying")
            with contextlib.suppress(TimeoutError):  # the poll also catches consents expiring by the clock
                await asyncio.wait_for(self._departed.wait(), self.config.anonymizer_poll_s)

    def _departures(self, dataset_id: str, now: datetime) -> tuple[dict[int, list[str]], set[str]]:
        """(live versions and their contributors, those contributors no longer eligible at `now`)."""
        d = next((x for x in self.projection.definitions() if x["dataset_id"] == dataset_id), None)
        if d is None:
            return {}, set()
        live = self.projection.live_contributors(dataset_id)
        members = {m for ms in live.values() for m in ms}
        return live, members - self.projection.eligible_members(d["purpose"], d["categories"], now)

    async def supersede_departed(self) -> list[str]:
        """Supersede, now, every live version that holds a member no longer eligible (revoked, expired,
        erased), then ask for a build; the datasets that had one."""
        if not self.ready:
            return []
        assert self.writer is not None
        done = []
        for d in self.projection.definitions():
            dataset_id = d["dataset_id"]
            if not self._departures(dataset_id, self.clock())[1]:
                continue

            def decide(dataset_id: str = dataset_id) -> list[Event]:  # under the dataset's lock: no duplicate
                now = self.clock()
                live, departed = self._departures(dataset_id, now)
                return domain.decide_supersede(dataset_id, live, departed, now)

            if await self.writer.execute(dataset_id, decide):
                log.info("superseded versions of %s holding members who left; building the next", dataset_id)
                self.request_build(dataset_id, "change")
                done.append(dataset_id)
        return done

    def unchanged_since(self, dataset_id: str, fingerprint: str | None = None) -> int | None:
        """The newest version on offer when it was built from exactly the inputs eligible now, or a build of
        them gave exactly it (so a build would publish the same rows again), else None."""
        live = self.projection.newest_live_inputs(dataset_id)
        if live is None:
            return None
        if fingerprint is None:
            definition = self.projection.definition(dataset_id)
            if definition is None:
                return None
            fingerprint = self._inputs(dataset_id, definition.definition_version, self.clock())[2]
        return live[0] if fingerprint in live[1] else None

    def _inputs(self, dataset_id: str, definition_version: int, now: datetime) -> tuple[list[str], int, str]:
        d = next(x for x in self.projection.definitions() if x["dataset_id"] == dataset_id)
        members, records, md5 = self.projection.inputs(d["purpose"], d["categories"], now)
        fingerprint = hashlib.sha256(f"{definition_version}|{records}|{md5}".encode()).hexdigest()
        return members, records, fingerprint

    async def _append(self, dataset_id: str, events: list[Event]) -> None:
        assert self.writer is not None
        await self.writer.execute(dataset_id, lambda: events)

    async def run_build(self, req: BuildRequest) -> None:
        """Build and publish the next version of `req.dataset_id`; any failure is a VersionBuildFinished.
        Whatever happens, live versions holding a member no longer eligible end superseded, and the new
        version holds no member who left before it was appended."""
        self.current = req
        live = self.live_progress.setdefault(req.build_id, {"build_id": req.build_id, "dataset_id": req.dataset_id})
        try:
            state = self.projection.definition(req.dataset_id)
            try:
                resolved = self.resolved(req.dataset_id)
            except DefinitionError as exc:  # e.g. a hierarchy file missing on this machine
                resolved, problem = None, "; ".join(exc.problems)
            else:
                problem = f"no dataset {req.dataset_id}"
            if resolved is None or state is None:
                live.update(stage="failed", outcome="failed", detail=problem)
                await self._finish(req, None, problem, started=False)
                return
            started = self.clock()
            members, records, fingerprint = self._inputs(req.dataset_id, state.definition_version, started)
            same = None if req.force else self.unchanged_since(req.dataset_id, fingerprint)
            if same is not None:  # the same rows again would be a second version of the same data on sale
                self._retry.discard(req.dataset_id)
                live.update(stage="done", outcome="unchanged", version=same,
                            detail=f"version {same} already holds exactly the records eligible now (or what they "
                                   "give: a build of them found the same rows); nothing built (build with force to "
                                   "publish it again, e.g. after changing the anonymizer's mode)")
                await self._finish(req, same, "", started=False)  # older versions still on offer: replaced by it
                return
            self._build_started[req.dataset_id] = time.monotonic()
            await self._append(req.dataset_id, [VersionBuildStarted(
                dataset_id=req.dataset_id, build_id=req.build_id, trigger=req.trigger,
                definition_version=state.definition_version, inputs_sha256=fingerprint, members=len(members),
                records=records, started_at=started)])
            live.update(stage="decrypting", done=0, total=records, outcome=None, version=None)
            try:
                ended = await self._build_and_publish(req, resolved, members, records)
            except AppendFailed:
                raise
            except Exception as exc:  # every failure of a build is reported, none stalls the builder
                detail = failure_detail(exc)
                if isinstance(exc, (*_WORDED, DecryptRefused, NothingToBuild, httpx.HTTPError)):  # expected: too
                    log.warning("build %s of %s failed: %s", req.build_id, req.dataset_id, detail)  # few rows, ...
                else:  # a bug: where it was raised (frames, not the message: it may quote a member's data)
                    log.warning("build %s of %s failed: %s\n%s", req.build_id, req.dataset_id, detail,
                                "".join(traceback.format_tb(exc.__traceback__)))
                if isinstance(exc, DecryptRefused | httpx.HTTPError):  # try again later, inputs unchanged or not
                    self._retry.add(req.dataset_id)
                    self._changed[req.dataset_id] = self._first_changed[req.dataset_id] = \
                        time.monotonic() + RETRY_AFTER_S
                    self._build_started.pop(req.dataset_id, None)  # a retry is not held back by the interval
                await self._finish(req, None, detail)
                live.update(stage="failed", outcome="failed", version=None, detail=detail)
            else:
                self._retry.discard(req.dataset_id)
                live.update(stage="done", outcome=ended.outcome, version=ended.version, detail=ended.detail)
        finally:
            self.current = None

    async def _build_and_publish(self, req: BuildRequest, resolved: ResolvedDefinition, members: list[str],
                                 records: int) -> BuildEnded:
        """Decrypt once; anonymize, write and publish. Members who left meanwhile are dropped and the rest
        anonymized again: checked before the files are written and once more in the same step as the
        append. Unless forced, output identical to the version on offer (`domain.identical_on_offer`) is
        neither written nor published: the build ends `unchanged`, naming that version. Files of a version
        that ends unpublished are removed."""
        d = resolved.definition
        if records == 0:
            raise NothingToBuild("no records of members with an active consent for "
                                 f"{d.purpose} and {sorted(set(d.data_categories))}; nothing to publish")
        rows = await self._decrypt(req, sorted(set(d.data_categories)), members, records)
        written: int | None = None
        try:
            while True:
                if not rows:
                    raise NothingToBuild("every member whose records were read left during the build; "
                                         "nothing to publish")
                version, built = await self._anonymize(req, resolved, rows)
                left = domain.departed(built.contributor_weights, self._eligible(req.dataset_id))
                if not left:
                    same = self._identical_on_offer(req.dataset_id, built)
                    # identical: the version on offer's own sha256 is the one these rows give under its key (no
                    # second Parquet write to say so)
                    as_offered = "" if same is None else str((self.projection.newest_offered(req.dataset_id)
                                                              or {}).get("sha256", ""))
                    try:
                        if same is not None and not req.force:
                            detail = unchanged_detail(same, as_offered)
                            with contextlib.suppress(OfferChanged):  # it went off sale meanwhile: publish
                                await self._append_end(req, same, detail, kept=built)
                                return BuildEnded(same, "unchanged", detail)
                            same = None
                        detail = "" if same is None else forced_detail(same, version, as_offered)
                        written = version
                        published = await self._write(req, resolved, version, built)
                        await self._append_end(req, version, detail, published=published)
                        written = None
                        return BuildEnded(version, "published", detail)
                    except ContributorsLeft as again:
                        left = again.members
                    except AppendFailed:  # the version may have landed: keep its files
                        written = None
                        raise
                log.info("build %s of %s: %d member(s) left during the build; anonymizing again without them",
                         req.build_id, req.dataset_id, len(left))
                rows = [r for r in rows if r["member"] not in left]
        finally:
            if written is not None:
                await asyncio.to_thread(self._discard, req.dataset_id, written)

    async def _append_end(self, req: BuildRequest, version: int, detail: str, *,
                          published: DatasetVersionPublished | None = None,
                          kept: pipeline.BuiltVersion | None = None) -> None:
        """`_finish` for a build that anonymized: ContributorsLeft and OfferChanged (nothing appended) pass,
        any other failure is the broker's (AppendFailed: the builder goes on, the events may have landed)."""
        try:
            await self._finish(req, version, detail, published=published, kept=kept)
        except (ContributorsLeft, OfferChanged):
            raise
        except Exception as exc:
            raise AppendFailed(f"appending the end of build {req.build_id} of {req.dataset_id} failed") from exc

    def _identical_on_offer(self, dataset_id: str, built: pipeline.BuiltVersion) -> int | None:
        return self._same_as_offered(dataset_id, built, self._eligible(dataset_id))

    def _same_as_offered(self, dataset_id: str, built: pipeline.BuiltVersion, eligible: set[str]) -> int | None:
        """The version on offer when `built` is exactly it again: compared as that version would hold these rows
        (under its own pseudonym key), since every version has pseudonyms of its own."""
        on_offer = self.projection.newest_offered(dataset_id)
        return domain.identical_on_offer(on_offer, self._sha_as(dataset_id, built, on_offer),
                                         built.contributor_weights, eligible)

    def _sha_as(self, dataset_id: str, built: pipeline.BuiltVersion, on_offer: dict[str, Any] | None) -> str:
        """sha256 of `built`'s Parquet with the pseudonyms of the version `on_offer` (its own when none)."""
        if on_offer is None or built.table is None:
            return built.sha256
        key = pipeline.version_key(self.master_secret, dataset_id, int(on_offer["version"]))
        return pipeline.parquet_under(built, key)[1]

    def _eligible(self, dataset_id: str) -> set[str]:
        d = next((x for x in self.projection.definitions() if x["dataset_id"] == dataset_id), None)
        return self.projection.eligible_members(d["purpose"], d["categories"], self.clock()) if d else set()

    def _discard(self, dataset_id: str, version: int) -> None:
        """Remove what a build wrote for a version it did not publish (it may hold rows of members who left)."""
        pipeline.discard_aggregates(self.aggregates_db, dataset_id, version)
        if objectstore.is_s3(self.store_dir):
            log.warning("%s holds an unpublished version of %s; delete it (no reader is pointed at it)",
                        objectstore.join(self.store_dir, dataset_id, f"v{version}.parquet"), dataset_id)
        else:
            pipeline.parquet_path(Path(self.store_dir), dataset_id, version).unlink(missing_ok=True)

    async def _finish(self, req: BuildRequest, version: int | None, detail: str, started: bool = True,
                      published: DatasetVersionPublished | None = None,
                      kept: pipeline.BuiltVersion | None = None) -> None:
        """One append: the new version (if any), the end of the build, and the versions it supersedes, so no
        reader sees the new version while an old one with a departed member is still on offer. Decided under
        the dataset's lock on the projection as it is then: ContributorsLeft (nothing appended) when a
        contributor of `published` or `kept` is no longer eligible. `kept`: the build's output is identical
        to `version`, on offer, which stays (the build ends `unchanged`, naming it); OfferChanged when it no
        longer is."""

        def decide() -> list[Event]:
            now = self.clock()
            definition = next((d for d in self.projection.definitions() if d["dataset_id"] == req.dataset_id), None)
            eligible = (self.projection.eligible_members(definition["purpose"], definition["categories"], now)
                        if definition is not None else set())
            built = published or kept
            if built is not None:
                left = domain.departed(built.contributor_weights, eligible)
                if left:
                    raise ContributorsLeft(left)
            if kept is not None and version != self._same_as_offered(req.dataset_id, kept, eligible):
                raise OfferChanged(f"version {version} of {req.dataset_id} is no longer on offer")
            events: list[Event] = [published] if published is not None else []
            if started:
                events.append(VersionBuildFinished(dataset_id=req.dataset_id, build_id=req.build_id,
                                                   outcome=("unchanged" if kept is not None else "published")
                                                   if version else "failed", version=version,
                                                   detail=detail[:2000], finished_at=now))
            if definition is not None:
                live = {v: ms for v, ms in self.projection.live_contributors(req.dataset_id).items() if v != version}
                ineligible = {m for ms in live.values() for m in ms} - eligible
                events += domain.decide_supersede(req.dataset_id, live, ineligible, now, superseded_by=version)
            if published is not None:
                events += domain.decide_successor(req.dataset_id, self.projection.versions(req.dataset_id),
                                                  published.version)
            return events

        assert self.writer is not None
        await self.writer.execute(req.dataset_id, decide)

    async def _progress(self, req: BuildRequest, stage: BuildStage, done: int, total: int) -> None:
        self.live_progress[req.build_id].update(stage=stage, done=done, total=total)
        await self._append(req.dataset_id, [VersionBuildProgressed(
            dataset_id=req.dataset_id, build_id=req.build_id, stage=stage,
            done=done, total=total, at=self.clock())])

    async def _anonymize(self, req: BuildRequest, resolved: ResolvedDefinition,
                         rows: list[dict[str, Any]]) -> tuple[int, pipeline.BuiltVersion]:
        """The next version number and the version built in memory (nothing written yet)."""
        await self._progress(req, "anonymizing", 0, len(rows))
        version = domain.next_version(self.projection.latest_version(req.dataset_id))
        key = pipeline.version_key(self.master_secret, req.dataset_id, version)
        mode = self.config.anonymizer_mode

        def work() -> pipeline.BuiltVersion:
            return pipeline.build_version(pipeline.rows_to_table(rows, resolved), resolved, key,
                                          np.random.default_rng(), mode)

        return version, await asyncio.to_thread(work)

    async def _write(self, req: BuildRequest, resolved: ResolvedDefinition, version: int,
                     built: pipeline.BuiltVersion) -> DatasetVersionPublished:
        """Write the Parquet and the DP aggregates; the event to publish (appended by `_finish`)."""

        def work() -> str:
            location = pipeline.write_parquet(self.store_dir, req.dataset_id, version, built.parquet)
            pipeline.write_aggregates(self.aggregates_db, req.dataset_id, version, built, resolved)
            return location

        location = await asyncio.to_thread(work)
        rows = built.report.rows_in
        await self._progress(req, "publishing", rows, rows)
        event = domain.published_event(req.dataset_id, version, resolved, location, built.sha256, built.report,
                                       built.columns, built.contributor_weights, built.achieved_k,
                                       built.achieved_l, self.clock())
        log.info("built %s v%d: %d rows, %d suppressed, %d over the per-member bound, k=%d members",
                 req.dataset_id, version, event.rows, event.suppressed_rows, built.rows_over_member_bound, event.k)
        return event

    async def _decrypt(self, req: BuildRequest, categories: list[str], members: list[str],
                       records: int) -> list[dict[str, Any]]:
        """Plaintext records of `members` through the vault; members erased meanwhile are left out."""
        http = self._http or httpx.AsyncClient(base_url=self.config.vault_url, timeout=120)
        headers = {"Authorization": f"Bearer {self.config.vault_service_token}"}
        rows: list[dict[str, Any]] = []
        last_report = time.monotonic()
        try:
            for category in categories:
                for start in range(0, len(members), DECRYPT_PAGE):
                    batch = members[start:start + DECRYPT_PAGE]
                    after = ""
                    while batch:
                        resp = await http.post("/internal/decrypt", headers=headers, json={
                            "category": category, "members": batch, "after": after, "limit": DECRYPT_PAGE})
                        if resp.status_code == 410:  # erased since we looked: leave them out, ask again
                            gone = set(resp.json().get("refused_members") or [])
                            if not gone:
                                raise DecryptRefused(f"vault: {resp.json().get('detail')}")
                            batch = [m for m in batch if m not in gone]
                            continue
                        if resp.status_code >= 400:
                            raise DecryptRefused(f"the vault refused to decrypt ({resp.status_code}): "
                                                 f"{resp.text[:300]}")
                        page = resp.json()
                        rows += page["records"]
                        if time.monotonic() - last_report > 0.5:
                            await self._progress(req, "decrypting", len(rows), records)
                            last_report = time.monotonic()
                        if not page["next_after"]:
                            break
                        after = page["next_after"]
        finally:
            if self._http is None:
                await http.aclose()
        await self._progress(req, "decrypting", len(rows), records)
        return rows


def build_app(settings: AnonymizerSettings | None = None, clock: Callable[[], datetime] = utcnow) -> FastAPI:
    settings = settings or AnonymizerSettings()
    service = AnonymizerService(settings, clock)
    app: FastAPI = create_app(service, [build_router(service)], title="datacoop anonymizer",
                              description="Dataset definitions, versions built from consented records, "
                                          "k-anonymous Parquet and DP aggregates.")
    return app


def main() -> None:
    serve("anonymizer", AnonymizerSettings, build_app)


if __name__ == "__main__":
    main()
