"""Refusals: the one exception type every service raises when its rules say no.

Pure (no web framework): a domain module raises `Refused(kind, message)`; the service kit turns any
`DomainError` into RFC 9457 problem+json with the status of its kind. Subclasses name their service
(`ConsentRefused`, …) and may give a kind a more specific problem slug.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from aiokafka.errors import KafkaTimeoutError

RefusalKind = Literal["unauthorized", "stale", "payment_required", "forbidden", "not_found", "conflict", "gone",
                      "unprocessable"]

STATUS: dict[str, int] = {"unauthorized": 401, "stale": 401, "payment_required": 402, "forbidden": 403,
                          "not_found": 404, "conflict": 409, "gone": 410, "unprocessable": 422}


class DomainError(Exception):
    """A refused request. `slug` becomes the problem type; `detail` says what is wrong and what to do."""

    status = 400
    slug = "bad-request"

    def __init__(self, detail: str, *, status: int | None = None, slug: str | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if slug is not None:
            self.slug = slug
        self.extra = extra


class Refused(DomainError):
    """A command the rules refuse: `kind` decides the HTTP status, `message` says what to do."""

    slugs: ClassVar[dict[str, str]] = {}

    def __init__(self, kind: RefusalKind, message: str, **extra: Any) -> None:
        super().__init__(message, status=STATUS[kind], slug=self.slugs.get(kind, kind.replace("_", "-")), **extra)
        self.kind = kind
        self.message = message


class EarlierWriteUnsettled(KafkaTimeoutError):  # type: ignore[misc]
    """A command not written at all: its subject's previous write was not confirmed, and the log could not be read
    far enough to learn whether it landed (see `Writer`). A 503 like any event-log error, worded apart: unlike a
    write the broker did not confirm, nothing of this request can be in the log."""


class EventLogSilent(DomainError):
    """The broker has answered none of this service's fetches for a while (`ConsumerRunner.broker_silence`): a
    command is refused before anything is written, rather than waiting out the producer's 40 s timeout."""

    status, slug = 503, "event-log-unavailable"


class AnotherInstance(DomainError):
    """A second live instance of this service writes its topics (`ConsumerRunner.other_writer`): two deciders
    would each accept what only one may (a nonce, a seq), so commands are refused until one is stopped."""

    status, slug = 503, "another-instance"
