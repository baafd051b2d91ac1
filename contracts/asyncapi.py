"""The contract as an AsyncAPI 3.0 document, generated from the pydantic models (through the same
JSON Schemas as `contracts/schemas/`), and a readable HTML view of it (`homeward contracts docs`).

Every topic is a channel with its message: the envelope and its payload, the Kafka key, and the
headers (the evidence's signature headers of contract v1.1, a dead letter's reason headers).
Homeward's side of each channel is an operation: it receives the inbound topics and sends the
rest. FastStream's own generator describes the subscribers an app declares; Homeward's services
route every topic through one batch consumer, so the document is built from the models instead.
"""

import html
from pathlib import Path
from typing import Any

import yaml

from contracts.export import schema_for
from contracts.registry import INBOUND_TOPICS, PAYLOAD_TYPES, TOPIC_KEYS, dlq_topic
from contracts.signing import SIGNATURE_CHARS, SIGNATURE_HEADER, SIGNER_HEADER, SIGNER_ID_CHARS_MAX

DOCUMENT = Path(__file__).parent / "asyncapi.yaml"
CONTRACT_VERSION = "1.1.0"
KAFKA_BINDING = "0.5.0"
SUMMARIES = {
    "registration.submitted.v1": "An application to the program, from the registration app (the only topic "
    "with personal data, sealed by Homeward on intake).",
    "registration.accepted.v1": "The application was accepted: a case is open, its personal data sealed for "
    "the services that need it.",
    "registration.rejected.v1": "The application was refused, with each reason's code and field.",
    "travel.booked.v1": "A flight was booked for the case.",
    "travel.booking_failed.v1": "No flight could be booked for the case; the reason is a code.",
    "arrival.evidence.v1": "Evidence that the traveller arrived: an app check-in, a carrier's record or a "
    "partner office's visit, signed by its registered signer (contract v1.1).",
    "arrival.verified.v1": "Arrival was verified under a rule, naming the evidence that proved it.",
    "arrival.rejected.v1": "Arrival could not be verified within the evidence window.",
    "stipend.held.v1": "The stipend is held: for want of budget (paid once the budget is topped up), or for "
    "review (contract v1.1: a payout instrument shared with another identity, or the program paused).",
    "stipend.disbursed.v1": "The stipend was paid, exactly once, by the payout provider.",
    "stipend.failed.v1": "The stipend could not be paid; the reason is a code.",
    "case.withdrawal_requested.v1": "The participant asks to leave the program (contract v1.1); resending the "
    "same request id is a safe retry.",
    "case.withdrawn.v1": "The case is closed at the participant's request: never booked or paid from now on, "
    "its ticket cancelled.",
    "case.withdrawal_refused.v1": "Too late to withdraw (the flight had left, or the stipend was paid), or no "
    "such case.",
    "arrival.attested.v1": "The signed record of a program departure: a compact JWS (EdDSA) of the case, "
    "identity key, destination, departure date, verification time and rule, one per verified case.",
}
DEAD_LETTER_HEADERS = {
    "x-error-code": "Why the record was refused: a code (invalid_json, invalid_payload, evidence_unauthenticated, …)",
    "x-error-detail": "The field, rule and reason, never a value",
    "x-original-topic": "The topic the record was sent to",
    "x-original-partition": "Its partition there",
    "x-original-offset": "Its offset there",
}


def _message_name(topic: str) -> str:
    return "".join(part.title() for part in topic.removesuffix(".v1").replace("_", ".").split(".")) + "V1"


def _key(topic: str) -> dict[str, Any]:
    field = TOPIC_KEYS[topic]
    return {"type": "string", "format": "uuid", "description": f"The {field.replace('_', ' ')} (`data.{field}`)"}


def _headers(topic: str) -> dict[str, Any] | None:
    if topic != "arrival.evidence.v1":
        return None
    return {
        "type": "object",
        "required": [SIGNER_HEADER, SIGNATURE_HEADER],
        "properties": {
            SIGNER_HEADER: {"type": "string", "minLength": 1, "maxLength": SIGNER_ID_CHARS_MAX,
                            "description": "The registered signer's id (`homeward signers add`)"},
            SIGNATURE_HEADER: {"type": "string", "minLength": SIGNATURE_CHARS, "maxLength": SIGNATURE_CHARS,
                               "pattern": "^[A-Za-z0-9_-]+$",
                               "description": "Ed25519 over the exact value bytes, base64url without padding"},
        },
    }  # fmt: skip


def _rehomed(schema: Any) -> Any:
    """A topic's JSON Schema as an AsyncAPI schema: `$defs` references point into components.schemas."""
    if isinstance(schema, dict):
        return {
            key: _rehomed_value(key, value) for key, value in schema.items() if key not in ("$defs", "$schema", "$id")
        }
    if isinstance(schema, list):
        return [_rehomed(item) for item in schema]
    return schema


def _rehomed_value(key: str, value: Any) -> Any:
    if key == "$ref":
        return value.replace("#/$defs/", "#/components/schemas/")
    if key == "discriminator" and isinstance(value, dict):
        return value["propertyName"]  # AsyncAPI names the property; OpenAPI's mapping is implied by the consts
    return _rehomed(value)


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every v1 topic and its dead-letter topic."""
    schemas: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in PAYLOAD_TYPES:
        exported = schema_for(topic)
        for name, definition in exported.get("$defs", {}).items():
            rehomed = _rehomed(definition)
            if schemas.setdefault(name, rehomed) != rehomed:
                raise ValueError(f"two models named {name} differ: rename one")
        envelope = f"{_message_name(topic)}Envelope"
        schemas[envelope] = _rehomed(exported)
        name = _message_name(topic)
        message: dict[str, Any] = {
            "name": name, "title": topic, "summary": SUMMARIES[topic], "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{envelope}"},
            "bindings": {"kafka": {"key": _key(topic), "bindingVersion": KAFKA_BINDING}},
        }  # fmt: skip
        if (headers := _headers(topic)) is not None:
            message["headers"] = headers
        messages[name] = message
        letters = f"{name}DeadLetter"
        messages[letters] = {
            "name": letters, "title": dlq_topic(topic), "contentType": "application/octet-stream",
            "summary": f"A record of {topic} Homeward refused, its bytes unchanged, with the reason headers.",
            "payload": {"type": "string", "description": "The refused record's value, byte for byte"},
            "headers": {"type": "object", "required": list(DEAD_LETTER_HEADERS),
                        "properties": {header: {"type": "string", "description": why}
                                       for header, why in DEAD_LETTER_HEADERS.items()}},
            "bindings": {"kafka": {"key": _key(topic), "bindingVersion": KAFKA_BINDING}},
        }  # fmt: skip
        for channel_topic, message_name in ((topic, name), (dlq_topic(topic), letters)):
            channels[channel_topic] = {
                "address": channel_topic,
                "messages": {message_name: {"$ref": f"#/components/messages/{message_name}"}},
                "bindings": {"kafka": {"topic": channel_topic, "bindingVersion": KAFKA_BINDING}},
            }
        inbound = topic in INBOUND_TOPICS
        operations[f"{'receive' if inbound else 'send'}{name}"] = {
            "action": "receive" if inbound else "send",
            "summary": ("Upstream apps publish; Homeward consumes." if inbound
                        else "Homeward publishes; integrators consume."),
            "channel": {"$ref": f"#/channels/{topic}"},
            "messages": [{"$ref": f"#/channels/{topic}/messages/{name}"}],
        }  # fmt: skip
        operations[f"send{letters}"] = {
            "action": "send", "summary": "Homeward dead-letters what it cannot take, and says why.",
            "channel": {"$ref": f"#/channels/{dlq_topic(topic)}"},
            "messages": [{"$ref": f"#/channels/{dlq_topic(topic)}/messages/{letters}"}],
        }  # fmt: skip
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Homeward events",
            "version": CONTRACT_VERSION,
            "description": "The event contract of Homeward, the back office of a voluntary-return program: "
            "v1 with the version 1.1 additions. Every message is a JSON envelope (id, time, subject, "
            "correlation and causation ids) around its topic's payload; consumers deduplicate by envelope id.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "Apache Kafka in production; the embedded broker of `homeward up` locally",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def render() -> str:
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)


def export(path: Path = DOCUMENT) -> Path:
    path.write_text(render(), encoding="utf-8")
    return path


# The readable view --------------------------------------------------------------------------------


def _fields(schema: dict[str, Any], schemas: dict[str, Any], prefix: str, depth: int = 0) -> list[tuple[str, ...]]:
    """(field, type, required, rules) rows for a schema, nested objects flattened into dotted paths."""
    if depth > 8:
        return []
    rows: list[tuple[str, ...]] = []
    required = set(schema.get("required", ()))
    for name, field in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        resolved = _resolve(field, schemas)
        variants = [_resolve(branch, schemas) for branch in resolved.get("oneOf", resolved.get("anyOf", []))]
        kind = resolved.get("type") or " | ".join(str(v.get("title") or v.get("type", "?")) for v in variants) or "any"
        rules = [f"{key} {resolved[key]}" for key in ("const", "enum", "format", "pattern", "minLength", "maxLength",
                                                      "minimum", "maximum") if key in resolved]  # fmt: skip
        rows.append((path, str(kind), "yes" if name in required else "", ", ".join(rules)))
        if "properties" in resolved:
            rows += _fields(resolved, schemas, f"{path}.", depth + 1)
        for variant in variants:
            if "properties" in variant:
                rows += _fields(variant, schemas, f"{path} ({variant.get('title')}).", depth + 1)
    return rows


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    reference = schema.get("$ref")
    if reference and reference.startswith("#/components/schemas/"):
        resolved: dict[str, Any] = schemas[reference.rsplit("/", 1)[1]]
        return resolved
    return schema


def html_view(spec: dict[str, Any] | None = None) -> str:
    """One self-contained page: each channel with its summary, key, headers and payload fields."""
    spec = spec or document()
    schemas = spec["components"]["schemas"]
    sections = []
    for topic, channel in spec["channels"].items():
        (reference,) = [ref["$ref"] for ref in channel["messages"].values()]
        message = spec["components"]["messages"][reference.rsplit("/", 1)[1]]
        direction = "inbound: upstream apps publish" if topic in INBOUND_TOPICS else (
            "dead letters" if topic.endswith(".dlq") else "outbound: Homeward publishes")  # fmt: skip
        rows = _fields(_resolve(message["payload"], schemas), schemas, "") if "$ref" in message["payload"] else []
        headers = _fields(message.get("headers", {}), schemas, "")
        key = message["bindings"]["kafka"]["key"]["description"]
        named = ", ".join(f"<code>{header}</code>" for header in message.get("headers", {}).get("properties", {}))
        table = "".join(f"<tr><td><code>{html.escape(f)}</code></td><td>{html.escape(t)}</td><td>{r}</td>"
                        f"<td>{html.escape(rules)}</td></tr>" for f, t, r, rules in rows + headers)  # fmt: skip
        sections.append(
            f'<section id="{html.escape(topic)}"><h2>{html.escape(topic)}</h2><p class="dir">{direction}</p>'
            f"<p>{html.escape(message.get('summary', ''))}</p><p>Key: {html.escape(key)}."
            f"{' Headers: ' + named + '.' if named else ''}</p>"
            f"<table><tr><th>field</th><th>type</th><th>required</th><th>rules</th></tr>{table}</table></section>"
        )
    index = "".join(f'<li><a href="#{html.escape(topic)}">{html.escape(topic)}</a></li>' for topic in spec["channels"])
    title = html.escape(f"{spec['info']['title']} {spec['info']['version']}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:2rem;max-width:70rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #cbd5e0;padding:.2rem .5rem;text-align:left;vertical-align:top}}.dir{{color:#4a5568}}
code{{font-size:13px}}</style></head><body>
<h1>{title}</h1>
<p>{html.escape(spec["info"]["description"])}</p>
<p>AsyncAPI {spec["asyncapi"]}: <code>contracts/asyncapi.yaml</code>.</p>
<ul>{index}</ul>{"".join(sections)}</body></html>
"""
