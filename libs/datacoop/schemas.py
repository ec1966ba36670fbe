"""schemas/ from the event registry: one JSON Schema per event type and version, and AsyncAPI 3.0.

    python -m datacoop.schemas write   # regenerate schemas/ (make schemas)
    python -m datacoop.schemas check   # exit 1 when schemas/ is stale or a change breaks compatibility

Compatibility rule: a published version's fields may gain optional fields and an enum may gain values
(every event already in the log still reads); a field is never lost or retyped and never becomes
required. Anything else needs a new version (and an upcaster).

A field's JSON Schema does not show every rule: a check written as a function (an AfterValidator such as
the EIP-55 checksum of WalletAddress, or UtcTime's) leaves it unchanged. So each schema also records, under
`x-field-checks`, the functions that check each field, and a published field may lose checks but not gain
one (an event already in the log could fail it and be dead-lettered on replay). A revision committed before
the checks were recorded has nothing to compare there. And what a model writes must be what it reads: its
schema in serialization mode must equal the one in validation mode (a field excluded from the output, or
written through a serializer as another type, breaks the log for every later reader).

"Published" means every shape of `schemas/events/<type>.vN.json` ever committed, read from git history,
besides the file on disk: `make schemas` (write) refuses to overwrite a published file with a shape
that breaks it, and the check compares each model with every committed revision of its file, so
neither regenerating nor hand-editing schemas/ lets a version change shape. The check needs a git
checkout (an export without .git fails it, saying so); a shallow clone checks the commits it holds.
"""

from __future__ import annotations

import json
import subprocess
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
        "x-field-checks": field_checks(model),
        **schema,
    }


_FUNCTION_SCHEMAS = {"function-after", "function-before", "function-wrap", "function-plain"}
_NOT_VALIDATION = {"serialization", "metadata", "function", "cls", "config"}  # subtrees that hold no validator
MODEL_CHECKS = "(model)"  # the key of a model's own validators (model_validator) in x-field-checks


def field_checks(model: type[Any]) -> dict[str, list[str]]:
    """Per field (and MODEL_CHECKS for the model's own), the functions that validate it, by module and
    qualified name, from pydantic's core schema (nested models and definitions followed); fields that have
    none are left out."""
    core: dict[str, Any] = model.__pydantic_core_schema__
    refs: dict[str, Any] = {}

    def index(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("ref"), str):
                refs[node["ref"]] = node
            for key, value in node.items():
                if key not in _NOT_VALIDATION:
                    index(value)
        elif isinstance(node, list):
            for value in node:
                index(value)

    def names(node: Any, seen: frozenset[str]) -> set[str]:
        found: set[str] = set()
        if isinstance(node, list):
            for value in node:
                found |= names(value, seen)
        elif isinstance(node, dict):
            if node.get("type") == "definition-ref":
                ref = node["schema_ref"]
                return set() if ref in seen or ref not in refs else names(refs[ref], seen | {ref})
            if node.get("type") in _FUNCTION_SCHEMAS:
                found.add(check_id(node["function"]["function"]))
            for key, value in node.items():
                if key not in _NOT_VALIDATION:
                    found |= names(value, seen)
        return found

    index(core)
    node, own = core, set()
    while node.get("type") != "model":  # definitions around it, or the model's own validators wrapping it
        if node.get("type") in _FUNCTION_SCHEMAS:
            own |= names({k: v for k, v in node.items() if k != "schema"}, frozenset())
        node = node["schema"]
    checks = {name: sorted(found) for name, field in node["schema"]["fields"].items()
              if (found := names(field, frozenset()))}
    if own:
        checks[MODEL_CHECKS] = sorted(own)
    return checks


def check_id(fn: Any) -> str:
    """How x-field-checks names a validating function: its `__datacoop_check__` when it has one (set it to keep
    a check's id across a rename or a move: the id, not the name, is what a published schema holds), else its
    module and qualified name. Closures made by one factory share a name: tightening one's arguments goes
    unseen, so a check that takes arguments should carry them in its id."""
    declared = getattr(fn, "__datacoop_check__", None)
    if isinstance(declared, str) and declared:
        return declared
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def written_as_read(model: type[Any]) -> list[str]:
    """Where `model` writes a field otherwise than it reads it (its schema in serialization mode against
    validation mode): an excluded field, or a serializer that changes the type."""
    name = model.type_name()
    read = model.model_json_schema(mode="validation")
    written = model.model_json_schema(mode="serialization")
    problems = []
    for field, spec in read.get("properties", {}).items():
        out = written.get("properties", {}).get(field)
        if out is None:
            problems.append(f"{name}: field '{field}' is read but never written (excluded from the output): every "
                            "event written from now on would lack it; remove the exclusion")
        elif _normalise(out) != _normalise(spec):
            problems.append(f"{name}: field '{field}' is written as {_normalise(out)} but read as {_normalise(spec)}: "
                            "what the log holds must read back and match schemas/; drop the serializer, or "
                            "publish a new version whose field has the written type")
    for field in written.get("properties", {}):
        if field not in read.get("properties", {}):
            problems.append(f"{name}: field '{field}' is written but not read (a computed field, or a serializer that "
                            "adds it): every event written would be refused on replay (unknown fields are "
                            "forbidden); make it a field, or drop it from the output")
    if _normalise(read.get("$defs", {})) != _normalise(written.get("$defs", {})):
        problems.append(f"{name}: a nested type is written otherwise than it is read; make its output match its "
                        "input")
    return problems


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


class IncompatibleChange(ValueError):
    """`make schemas` would replace a published schema with one that breaks it; `problems` say which."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def write(root: Path = ROOT, registry: EventRegistry = REGISTRY) -> list[str]:
    """Regenerate schemas/ from the models; IncompatibleChange, with nothing written, when a model breaks the
    schema on disk or any committed revision of it (see the module's compatibility rule)."""
    problems = compatibility(root, registry)
    if problems:
        raise IncompatibleChange(problems)
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


def _reads(old: Any, new: Any) -> bool:
    """Whether a value valid under the normalised schema `old` is valid under `new`, judged by shape: equal,
    or the same but for enums that gained values."""
    if isinstance(old, dict) and isinstance(new, dict):
        if set(old) != set(new):
            return False
        for key, value in old.items():
            if key == "enum" and isinstance(value, list) and isinstance(new[key], list):
                if not all(v in new[key] for v in value):
                    return False
            elif not _reads(value, new[key]):
                return False
        return True
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_reads(a, b) for a, b in zip(old, new, strict=True))
    return bool(old == new)


def incompatibilities(old: dict[str, Any], new: dict[str, Any], where: str = "") -> list[str]:
    """Why `new` cannot replace the published `old` under the same type and version (`where`: which
    published revision `old` is, for the message)."""
    name = old.get("x-event-type", old.get("title", "event"))
    since = f" since {where}" if where else ""
    problems = []
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for field, spec in old_props.items():
        if field not in new_props:
            problems.append(f"{name}: field '{field}' was dropped{since}; publish a new version with an upcaster")
        elif not _reads(_normalise(spec), _normalise(new_props[field])):
            problems.append(f"{name}: field '{field}' changed type{since}; publish a new version with an upcaster")
    added_required = set(new.get("required", [])) - set(old.get("required", []))
    for field in sorted(added_required):
        problems.append(f"{name}: field '{field}' became required{since}; old events lack it: add a default or a "
                        "new version")
    if not _reads(_normalise(old.get("$defs", {})), _normalise(new.get("$defs", {}))):
        problems.append(f"{name}: a nested type changed{since}; publish a new version")
    if "x-field-checks" in old:  # recorded: a field may lose checks, never gain one
        old_checks, new_checks = old["x-field-checks"], new.get("x-field-checks", {})
        for field in sorted(set(new_checks) & (set(old_props) | {MODEL_CHECKS})):
            gained = sorted(set(new_checks[field]) - set(old_checks.get(field, [])))
            if gained:
                what = "the model" if field == MODEL_CHECKS else f"field '{field}'"
                problems.append(f"{name}: {what} gained the check(s) {', '.join(gained)}{since}: an event already in "
                                "the log may fail it and be dead-lettered on replay; publish a new version with the "
                                "check (and an upcaster), or keep this version's checks")
    return problems


def published_revisions(root: Path = ROOT) -> list[tuple[str, str, dict[str, Any]]]:
    """(commit, file name, schema) for every committed revision of every file under `root`/events, newest
    commit first, from git (a shallow clone gives the commits it holds). HistoryUnavailable when `root` is
    not in a git checkout."""
    def git(*args: str, stdin: bytes | None = None) -> bytes:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], input=stdin, capture_output=True, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) \
                else str(exc)
            raise HistoryUnavailable(f"cannot read the history of {root} from git ({detail}); the compatibility "
                                     "check compares the models with every committed schema: run it in a clone "
                                     "of the repository") from None
        return done.stdout

    revisions: list[tuple[str, str]] = []
    commit = ""
    for line in git("log", "--format=C %H", "--name-only", "--relative", "--", "events").decode().splitlines():
        if line.startswith("C "):
            commit = line[2:]
        elif line.strip().endswith(".json"):
            revisions.append((commit, line.strip()))
    if not revisions:
        return []
    out = git("cat-file", "--batch", stdin="".join(f"{c}:./{rel}\n" for c, rel in revisions).encode())
    found: list[tuple[str, str, dict[str, Any]]] = []
    at = 0
    for commit, rel in revisions:
        end = out.index(b"\n", at)
        header = out[at:end].split()
        if header[-1] == b"missing":  # the commit deleted it
            at = end + 1
            continue
        size = int(header[2])
        found.append((commit, Path(rel).name, json.loads(out[end + 1:end + 1 + size])))
        at = end + 1 + size + 1
    return found


class HistoryUnavailable(RuntimeError):
    """git cannot give the committed revisions of schemas/ (not a checkout, a shallow clone, no git)."""


def compatibility(root: Path = ROOT, registry: EventRegistry = REGISTRY) -> list[str]:
    """Compare every published schema (each file in schemas/events, and every revision of it in git history)
    with the model of the same type and version."""
    problems: list[str] = []
    published = [("", path.name, json.loads(path.read_text())) for path in sorted((root / "events").glob("*.json"))]
    try:
        published += published_revisions(root)
    except HistoryUnavailable as exc:
        problems.append(str(exc))
    for each in registry:
        problems += written_as_read(each)
    gone: set[str] = set()
    for commit, file_name, schema in published:
        type_name = schema.get("x-event-type", file_name.removesuffix(".json"))
        model = registry.models.get(type_name)
        if model is None:
            if type_name not in gone:
                gone.add(type_name)
                problems.append(f"{type_name}: published but no longer registered; keep old versions registered")
            continue
        where = f"schemas/events/{file_name} at {commit[:10]}" if commit else ""
        for problem in incompatibilities(schema, event_schema(model), where):
            if problem not in problems:
                problems.append(problem)
    return problems


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "write":
        try:
            written = write()
        except IncompatibleChange as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            print("nothing written: a published type and version keeps its shape; register the changed event as a "
                  "new version (with an upcaster from the old one) and run `make schemas` again", file=sys.stderr)
            return 1
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
