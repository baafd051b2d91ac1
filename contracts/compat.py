"""The compatibility guard: would a change to a topic's JSON Schema break a v1 producer or consumer?

The released v1 schemas are frozen in `contracts/schemas/released/`. `breaks(topic, released,
current)` names, topic and field, every change that would break someone who codes against the
released one:

- on any topic: a field removed (or renamed: removed, then added), a type changed;
- on an inbound topic (upstream apps produce, Homeward consumes): a new required field, a
  tightened limit (a shorter maximum, a longer minimum, a changed pattern or format, an enum
  value or a union variant removed, extra fields forbidden where they were allowed): a message
  valid yesterday would be refused today;
- on an outbound topic (Homeward produces, integrators consume): a required field made optional
  (a consumer reads it), an enum value or a union variant removed or added, a type widened or a
  format changed (a consumer meets values it never saw, or cannot parse them).

Widening on an inbound topic and adding optional fields anywhere stay compatible. No library
here compares JSON Schemas for compatibility in this sense (producers and consumers differ),
so it is written out by hand over the subset of JSON Schema pydantic emits: `$ref`, `anyOf`,
objects, arrays, enums and consts, string and number limits.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.registry import INBOUND_TOPICS

Schema = dict[str, Any]
TIGHTER_WHEN_LARGER = ("minLength", "minimum", "exclusiveMinimum", "minItems")
TIGHTER_WHEN_SMALLER = ("maxLength", "maximum", "exclusiveMaximum", "maxItems")
MUST_STAY = ("pattern", "format")
DEPTH_MAX = 32
"""Nesting followed: the contract's schemas are a few levels deep; a deeper one is refused."""


@dataclass(frozen=True)
class Break:
    topic: str
    field: str
    why: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.field or '(the message)'}: {self.why}"


RELEASED_DIR = Path(__file__).parent / "schemas" / "released"


def check_released(released_dir: Path = RELEASED_DIR) -> list[Break]:
    """Every break between the released schemas and the models as they are now; a released topic
    gone from the contract is a break of its own."""
    from contracts.export import schema_for
    from contracts.registry import PAYLOAD_TYPES

    found: list[Break] = []
    for path in sorted(released_dir.glob("*.json")):
        topic = path.name.removesuffix(".json")
        if topic not in PAYLOAD_TYPES:
            found.append(Break(topic, "", "the topic was removed"))
            continue
        found += breaks(topic, json.loads(path.read_text()), schema_for(topic))
    return found


def breaks(topic: str, released: Schema, current: Schema) -> list[Break]:
    """Every change from `released` to `current` that breaks a v1 producer or consumer of `topic`."""
    found: list[Break] = []
    _Compare(topic, topic in INBOUND_TOPICS, released, current, found).node(released, current, "", 0)
    return found


@dataclass
class _Compare:
    topic: str
    inbound: bool
    old_root: Schema
    new_root: Schema
    found: list[Break]

    def say(self, field: str, why: str) -> None:
        self.found.append(Break(self.topic, field, why))

    def node(self, old: Schema, new: Schema, field: str, depth: int) -> None:
        if depth > DEPTH_MAX:
            raise ValueError(f"{self.topic}: {field}: nested deeper than {DEPTH_MAX} levels")
        old, new = _resolve(old, self.old_root), _resolve(new, self.new_root)
        old_variants, new_variants = _variants(old, self.old_root), _variants(new, self.new_root)
        if len(old_variants) > 1 or len(new_variants) > 1:
            self.union(old_variants, new_variants, field, depth)
            return
        self.types(old, new, field)
        self.values(old, new, field)
        if self.inbound:
            self.limits(old, new, field)
        elif old.get("format") != new.get("format") and "format" in old:
            self.say(field, f"format changed from {old['format']!r} to {new.get('format', 'none')!r}")
        if "properties" in old or "properties" in new:
            self.object(old, new, field, depth)
        if "items" in old and "items" in new:
            self.node(old["items"], new["items"], f"{field}[]", depth + 1)

    def union(self, old: list[Schema], new: list[Schema], field: str, depth: int) -> None:
        """Variants are matched by their title (a model's name) or their type; a released variant
        gone is a break both ways; a new one breaks consumers, who never saw it."""
        new_by_key = {_variant_key(variant): variant for variant in new}
        old_keys = {_variant_key(variant) for variant in old}
        for variant in old:
            key = _variant_key(variant)
            if key in new_by_key:
                self.node(variant, new_by_key[key], field, depth + 1)
            elif self.inbound or key != "null":  # a consumer is not hurt by never meeting null again
                self.say(field, f"the variant {key} was removed")
        if not self.inbound:
            for key in new_by_key.keys() - old_keys:
                self.say(field, f"a new variant {key} that v1 consumers do not know")

    def types(self, old: Schema, new: Schema, field: str) -> None:
        before, after = _types(old), _types(new)
        if before == after or (not before and not after):
            return
        if not before:  # it took any JSON value
            if self.inbound:
                self.say(field, f"was any value, now only {'|'.join(sorted(after))}")
            return
        if not after:
            if not self.inbound:
                self.say(field, f"was {'|'.join(sorted(before))}, now any value")
            return
        if self.inbound and before <= after:
            return  # widened: whatever producers sent is still accepted
        if not self.inbound and after <= before:
            return  # narrowed: consumers meet a subset of what they handled
        self.say(field, f"type changed from {'|'.join(sorted(before))} to {'|'.join(sorted(after))}")

    def values(self, old: Schema, new: Schema, field: str) -> None:
        before, after = _allowed(old), _allowed(new)
        if before is None:
            if after is not None and self.inbound:
                self.say(field, f"now limited to {sorted(after, key=repr)}: v1 producers send other values")
            return
        if after is None:
            if not self.inbound:
                self.say(field, "no longer limited to its released values (consumers meet new ones)")
            return
        for value in sorted(before - after, key=repr):
            self.say(field, f"the value {value!r} was removed")
        if not self.inbound:
            for value in sorted(after - before, key=repr):
                self.say(field, f"a new value {value!r} that v1 consumers do not know")

    def limits(self, old: Schema, new: Schema, field: str) -> None:
        for name in TIGHTER_WHEN_LARGER:
            if name in new and (name not in old or new[name] > old[name]):
                self.say(field, f"{name} tightened from {old.get(name, 'none')} to {new[name]}")
        for name in TIGHTER_WHEN_SMALLER:
            if name in new and (name not in old or new[name] < old[name]):
                self.say(field, f"{name} tightened from {old.get(name, 'none')} to {new[name]}")
        for name in MUST_STAY:
            if name in new and new.get(name) != old.get(name):
                self.say(field, f"{name} changed from {old.get(name, 'none')!r} to {new[name]!r}")

    def object(self, old: Schema, new: Schema, field: str, depth: int) -> None:
        old_fields, new_fields = old.get("properties", {}), new.get("properties", {})
        old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
        for name, schema in old_fields.items():
            path = f"{field}.{name}" if field else name
            if name not in new_fields:
                self.say(path, "removed (or renamed)")
                continue
            if not self.inbound and name in old_required and name not in new_required:
                self.say(path, "no longer required: v1 consumers read it")
            self.node(schema, new_fields[name], path, depth + 1)
        if self.inbound:
            for name in sorted(new_required - old_required):
                path = f"{field}.{name}" if field else name
                self.say(path, "newly required: v1 producers do not send it" if name not in old_fields
                         else "now required: v1 producers may leave it out")  # fmt: skip
            if old.get("additionalProperties", True) is not False and new.get("additionalProperties") is False:
                self.say(field, "extra fields are refused now")


def _resolve(schema: Schema, root: Schema) -> Schema:
    for _ in range(DEPTH_MAX):
        reference = schema.get("$ref")
        if reference is None:
            return schema
        name = reference.removeprefix("#/$defs/")
        schema = {**root["$defs"][name], **{k: v for k, v in schema.items() if k != "$ref"}}
    raise ValueError(f"$ref chain longer than {DEPTH_MAX}")


def _variants(schema: Schema, root: Schema) -> list[Schema]:
    """A union's branches (anyOf/oneOf), each resolved; `null` counts as a branch of its own."""
    branches = schema.get("anyOf") or schema.get("oneOf")
    if not branches:
        return [schema]
    return [_resolve(branch, root) for branch in branches]


def _variant_key(variant: Schema) -> str:
    if "title" in variant and variant.get("type") == "object":
        return str(variant["title"])
    return "|".join(sorted(_types(variant))) or "any"


JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}


def _types(schema: Schema) -> set[str]:
    """The JSON types a schema admits; a number admits integers too, so integer to number widens."""
    declared = schema.get("type")
    if declared is None and "const" in schema:
        declared = JSON_TYPES.get(type(schema["const"]), "string")
    named = {declared} if isinstance(declared, str) else set(declared or ())
    return named | ({"integer"} if "number" in named else set())


def _allowed(schema: Schema) -> set[Any] | None:
    if "enum" in schema:
        return set(schema["enum"])
    if "const" in schema:
        return {schema["const"]}
    return None
