"""schemas/ from the event registry: one JSON Schema per event type and version, and AsyncAPI 3.0.

    python -m datacoop.schemas write   # regenerate schemas/ (make schemas)
    python -m datacoop.schemas check   # exit 1 when schemas/ is stale or a change breaks compatibility

Compatibility rule: a published version's fields may gain optional fields, never lose or retype a
field and never gain a required one. Anything else needs a new version (and an upcaster).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from datacoop.events import REGISTRY, Envelope, EventRegistry
from datacoop.topics import TOPICS, dlq

ROOT = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_BASE = "https://datacoop.example/schemas"
_IGNORED_KEYS = {"title", "description", "default", "examples"}


def event_schema(model: type[Any]) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE}/events/{model.type_name()}.json",
        "x-event-type": model.type_name(),
        "x-topic": model.topic,
        **schema,
    }


def generate(registry: EventRegistry = REGISTRY) -> dict[str, str]:
    """Relative path -> file text for everything under schemas/."""
    files: dict[str, str] = {}
    for model in registry:
        files[f"events/{model.type_name()}.json"] = _dump_json(event_schema(model))
    envelope = Envelope.model_json_schema()
    envelope["$id"] = f"{SCHEMA_BASE}/envelope.json"
    files["envelope.json"] = _dump_json(envelope)
    files["asyncapi.yaml"] = yaml.safe_dump(asyncapi(registry), sort_keys=False, width=110)
    return files


def asyncapi(registry: EventRegistry) -> dict[str, Any]:
    by_topic = registry.topics()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for name, spec in TOPICS.items():
        cid = name.replace(".", "_")
        refs = {}
        for model in by_topic.get(name, []):
            mid = model.type_name().replace(".", "_")
            refs[mid] = {"$ref": f"#/components/messages/{mid}"}
            messages[mid] = {
                "name": model.type_name(),
                "title": model.__name__,
                "summary": (model.__doc__ or "").strip().split("\n")[0],
                "contentType": "application/cloudevents+json",
                "headers": {"type": "object", "properties": {
                    "ce_type": {"type": "string", "const": model.type_name()},
                    "ce_id": {"type": "string", "description": "the envelope id (UUIDv7 or derived UUIDv5)"}}},
                "payload": {"allOf": [{"$ref": "envelope.json"},
                                      {"properties": {"data": {"$ref": f"events/{model.type_name()}.json"}}}]},
                "bindings": {"kafka": {"key": {"type": "string", "description": spec.key}}},
            }
        channels[cid] = {
            "address": name,
            "description": f"{spec.description}. Writer: {spec.writer}. Key: {spec.key}. "
                           f"Partitions: {spec.partitions}. Dead letters: {dlq(name)}.",
            "messages": refs,
        }
        operations[f"publish_{cid}"] = {"action": "send", "channel": {"$ref": f"#/channels/{cid}"},
                                        "summary": f"written only by the {spec.writer} service"}
        operations[f"consume_{cid}"] = {"action": "receive", "channel": {"$ref": f"#/channels/{cid}"}}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "datacoop events", "version": "1.0.0",
                 "description": "Every datacoop topic, its key and its messages (CloudEvents 1.0, JSON). "
                                "Generated from libs/datacoop/events by `make schemas`; do not edit."},
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def _dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write(root: Path = ROOT, registry: EventRegistry = REGISTRY) -> list[str]:
    files = generate(registry)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    written = set(files)
    for stale in (root / "events").glob("*.json"):
        if f"events/{stale.name}" not in written:
            stale.unlink()
    return sorted(written)


def drift(root: Path = ROOT, registry: EventRegistry = REGISTRY) -> list[str]:
    """What differs between schemas/ on disk and what the models generate (empty: up to date)."""
    files = generate(registry)
    problems = []
    for rel, text in files.items():
        path = root / rel
        if not path.exists():
            problems.append(f"schemas/{rel} is missing")
        elif path.read_text() != text:
            problems.append(f"schemas/{rel} differs from what the models generate")
    on_disk = {f"events/{p.name}" for p in (root / "events").glob("*.json")} if (root / "events").exists() else set()
    problems += [f"schemas/{rel} has no model any more" for rel in sorted(on_disk - set(files))]
    return problems


def _normalise(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _normalise(v) for k, v in schema.items() if k not in _IGNORED_KEYS}
    if isinstance(schema, list):
        return [_normalise(v) for v in schema]
    return schema


def incompatibilities(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why `new` cannot replace the published `old` under the same type and version."""
    name = old.get("x-event-type", old.get("title", "event"))
    problems = []
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for field, spec in old_props.items():
        if field not in new_props:
            problems.append(f"{name}: field '{field}' was dropped; publish a new version with an upcaster")
        elif _normalise(spec) != _normalise(new_props[field]):
            problems.append(f"{name}: field '{field}' changed type; publish a new version with an upcaster")
    added_required = set(new.get("required", [])) - set(old.get("required", []))
    for field in sorted(added_required):
        problems.append(f"{name}: field '{field}' became required; old events lack it: add a default or a new version")
    if _normalise(old.get("$defs", {})) != _normalise(new.get("$defs", {})):
        problems.append(f"{name}: a nested type changed; publish a new version")
    return problems


def compatibility(root: Path = ROOT, registry: EventRegistry = REGISTRY) -> list[str]:
    """Compare every published schema in schemas/events with the model of the same type and version."""
    problems = []
    for path in sorted((root / "events").glob("*.json")):
        published = json.loads(path.read_text())
        type_name = published.get("x-event-type", path.stem)
        model = registry.models.get(type_name)
        if model is None:
            problems.append(f"{type_name}: published but no longer registered; keep old versions registered")
            continue
        problems += incompatibilities(published, event_schema(model))
    return problems


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "write":
        written = write()
        print(f"wrote {len(written)} files under {ROOT}")
        return 0
    if command == "check":
        problems = compatibility() + drift()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run `make schemas` after bumping versions as needed", file=sys.stderr)
        return 1 if problems else 0
    print(f"unknown command {command!r}; use 'write' or 'check'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
