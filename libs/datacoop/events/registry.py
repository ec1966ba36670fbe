"""The registry of event types: type name + version -> data model, and upcasters between versions.

An event type is a frozen pydantic model decorated with `@event("datacoop.<context>.<fact>", version,
topic=...)`. Old versions stay registered (their schemas stay published); an upcaster turns the data
of version N into version N+1, so a reader only ever sees the newest version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from datacoop.events.envelope import Envelope

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Event(BaseModel):
    """Base of every event's data model: small, immutable, no unknown fields, and no NaN or Infinity (JSON
    has none: the log would hold null where the writer applied the number)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    event_type: ClassVar[str] = ""
    event_version: ClassVar[int] = 0
    topic: ClassVar[str] = ""

    @classmethod
    def type_name(cls) -> str:
        return f"{cls.event_type}.v{cls.event_version}"


class UnknownEventType(LookupError):
    """A type string that this registry does not know (wrong name, or a newer version than ours)."""


class EventDataInvalid(ValueError):
    """The data of a known event type fails its model's validation."""


E = TypeVar("E", bound=type[Event])


@dataclass
class EventRegistry:
    models: dict[str, type[Event]] = field(default_factory=dict)
    upcasters: dict[str, Upcaster] = field(default_factory=dict)
    _latest: dict[str, type[Event]] = field(default_factory=dict, repr=False)
    _list_adapters: dict[str, TypeAdapter[list[Event]]] = field(default_factory=dict, repr=False)
    _typed: dict[str, type[Envelope] | None] = field(default_factory=dict, repr=False)

    def register(self, model: type[Event]) -> type[Event]:
        name = model.type_name()
        if name in self.models and self.models[name] is not model:
            raise ValueError(f"event type {name} is registered twice; bump the version for a new shape")
        self.models[name] = model
        self._latest.clear()
        self._typed.clear()
        return model

    def typed_envelope(self, type_name: str) -> type[Envelope] | None:
        """An Envelope whose `data` is `type_name`'s model, to validate an event's envelope and data in
        one pass over its JSON (a consumer's hot path); None for an unknown type or an old version,
        whose data must be upcast first. The instance's `data` is then the event, not a dict."""
        if type_name in self._typed:
            return self._typed[type_name]
        model = self.models.get(type_name)
        if model is None:  # not cached: the header is anyone's text, and the cache must not grow with it
            return None
        typed: type[Envelope] | None = None
        if self.latest(model.event_type) is model:
            typed = create_model(f"{model.__name__}Envelope", __base__=Envelope, data=(model, ...))
        self._typed[type_name] = typed
        return typed

    def register_upcaster(self, base: str, from_version: int, fn: Upcaster) -> None:
        """`fn` turns the data of `base`.v`from_version` into the data of version from_version+1."""
        self.upcasters[f"{base}.v{from_version}"] = fn

    def latest(self, base: str) -> type[Event]:
        cached = self._latest.get(base)
        if cached is not None:
            return cached
        versions = [m for m in self.models.values() if m.event_type == base]
        if not versions:
            raise UnknownEventType(f"no event type named {base}")
        newest = max(versions, key=lambda m: m.event_version)
        self._latest[base] = newest
        return newest

    def parse_type(self, type_name: str) -> tuple[str, int]:
        base, _, version = type_name.rpartition(".v")
        if not base or not version.isdigit():
            raise UnknownEventType(f"type {type_name!r} is not of the form datacoop.<context>.<fact>.v<N>")
        return base, int(version)

    def decode(self, type_name: str, data: dict[str, Any]) -> Event:
        """Validate `data` as `type_name`, upcasting it to the newest registered version."""
        if type_name not in self.models:
            raise UnknownEventType(f"unknown event type {type_name!r}; known: {', '.join(sorted(self.models))}")
        base, version = self.parse_type(type_name)
        target = self.latest(base)
        while version < target.event_version:
            step = self.upcasters.get(f"{base}.v{version}")
            if step is None:
                raise UnknownEventType(f"no upcaster from {base}.v{version} to v{version + 1}")
            try:
                data = step(dict(data))
            except Exception as exc:  # an upcaster's bug or data it did not expect: this event fails alone
                raise EventDataInvalid(f"{base}.v{version}: its upcaster to v{version + 1} failed "
                                       f"({type(exc).__name__}: {exc})") from exc
            version += 1
        model = self.models[f"{base}.v{version}"]
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise EventDataInvalid(f"{base}.v{version}: {_first_errors(exc)}") from exc

    def decode_many(self, type_name: str, datas: list[dict[str, Any]]) -> list[Event | Exception]:
        """`decode` for many events of one type: one validation call when all are current and valid;
        otherwise each is decoded alone so one bad event fails alone."""
        model = self.models.get(type_name)
        if model is not None and self.latest(model.event_type) is model:
            adapter = self._list_adapters.get(type_name)
            if adapter is None:
                adapter = self._list_adapters[type_name] = TypeAdapter(list[model])  # type: ignore[valid-type]
            try:
                return list(adapter.validate_python(datas))
            except ValidationError:
                pass
        out: list[Event | Exception] = []
        for data in datas:
            try:
                out.append(self.decode(type_name, data))
            except (UnknownEventType, EventDataInvalid) as exc:
                out.append(exc)
        return out

    def __iter__(self) -> Iterator[type[Event]]:
        return iter(sorted(self.models.values(), key=lambda m: m.type_name()))

    def topics(self) -> dict[str, list[type[Event]]]:
        by_topic: dict[str, list[type[Event]]] = {}
        for model in self:
            by_topic.setdefault(model.topic, []).append(model)
        return by_topic


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


REGISTRY = EventRegistry()


def event(event_type: str, version: int, *, topic: str,
          registry: EventRegistry | None = None) -> Callable[[E], E]:
    """Class decorator registering an event model under `event_type`.v`version` on `topic`."""

    def wrap(model: E) -> E:
        model.event_type = event_type
        model.event_version = version
        model.topic = topic
        (registry or REGISTRY).register(model)
        return model

    return wrap
