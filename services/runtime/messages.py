"""Reading records off Kafka into envelopes, or into a coded reason why not; writing envelopes."""

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ValidationError

from contracts.envelope import Envelope, RawEnvelope
from contracts.events import EVIDENCE_TOPIC
from contracts.registry import PAYLOAD_TYPES, envelope_adapter, key_of, topic_of
from services.runtime.ids import new_id

ERROR_INVALID_JSON = "invalid_json"
ERROR_INVALID_ENVELOPE = "invalid_envelope"
ERROR_TYPE_MISMATCH = "type_mismatch"
ERROR_INVALID_PAYLOAD = "invalid_payload"
ERROR_UNKNOWN_TOPIC = "unknown_topic"
ERROR_HANDLER = "handler_error"

DETAIL_CHARS_MAX = 500
KEPT_HEADERS = ("x-signer", "x-signature")
"""Headers of the original a dead-letter copy carries, so that `dlq replay` can send them again."""
FIELD_PART_CHARS_MAX = 100
FIELD_PATH_CHARS_MAX = 300
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# Discriminated unions put the chosen tag into error locations; a field path leaves it out.
_PAYOUT_TAGS = frozenset({"mobile_money", "bank_account"})
_EVIDENCE_TAGS = frozenset({"participant_app", "carrier", "partner_office"})
# Pydantic messages of these error types quote the input; they are replaced by fixed wording.
_MESSAGES_QUOTING_INPUT = {
    "union_tag_invalid": "unknown variant",
    "uuid_parsing": "Input should be a valid UUID",
    "uuid_type": "Input should be a valid UUID",
}


@dataclass(frozen=True, slots=True)
class Record:
    """The parts of a Kafka record Homeward reads; bytes exactly as they arrived."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    # When the broker wrote the record, where the topic has it stamp the time
    # (`message.timestamp.type=LogAppendTime`); None where the producer chose the timestamp.
    appended_at: datetime | None = None

    def header(self, name: str) -> bytes | None:
        """The last value of a header, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


@dataclass(frozen=True, slots=True)
class Decoded:
    record: Record
    envelope: Envelope[Any]

    @property
    def inbox_key(self) -> UUID:
        return self.envelope.id


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A record that cannot be handled, with what the dead-letter headers and a rejection need."""

    record: Record
    code: str
    detail: str
    field: str | None = None
    application_id: UUID | None = None
    correlationid: UUID | None = None
    event_id: UUID | None = None

    @property
    def inbox_key(self) -> UUID:
        # Offsets name a bad record even when it has no readable id: the inbox key is the MD5 of
        # `topic:partition:offset` read as a UUID, as migration 0004 converted the older keys.
        where = f"{self.record.topic}:{self.record.partition}:{self.record.offset}"
        return UUID(hashlib.md5(where.encode(), usedforsecurity=False).hexdigest())

    def dead_letter_headers(self) -> dict[str, str]:
        """The reason headers, and the record's own headers that a replay needs to pass again
        (the evidence's signature: a replayed copy is checked like the original)."""
        kept = {}
        for name in KEPT_HEADERS:
            value = self.record.header(name)
            with contextlib.suppress(UnicodeDecodeError):
                text = value.decode() if value is not None else ""
                if text and text.isprintable():
                    kept[name] = text
        return {
            **kept,
            "x-error-code": self.code,
            "x-error-detail": self.detail[:DETAIL_CHARS_MAX],
            "x-original-topic": self.record.topic,
            "x-original-partition": str(self.record.partition),
            "x-original-offset": str(self.record.offset),
        }


def _field_path(location: tuple[int | str, ...], *, within_data: bool, topic: str) -> str | None:
    """A dotted path; payload errors are named relative to `data`, as the producer wrote them."""
    parts = [str(part) for part in location]
    if within_data and parts[:1] == ["data"]:
        parts = parts[1:]
        if topic == EVIDENCE_TOPIC and parts[:1] and parts[0] in _EVIDENCE_TAGS:
            parts = parts[1:]
        if parts[:1] == ["payout"] and len(parts) > 1 and parts[1] in _PAYOUT_TAGS:
            del parts[1]
    joined = ".".join(_printable(part)[:FIELD_PART_CHARS_MAX] for part in parts)
    return joined[:FIELD_PATH_CHARS_MAX] or None


def _printable(text: str) -> str:
    """Field names come from the producer: control characters (PostgreSQL's jsonb refuses U+0000)
    and lone surrogates are replaced, so a hostile name cannot break the record of its rejection."""
    return _UNPRINTABLE.sub("?", text)


def _describe(error: ValidationError, *, topic: str, within_data: bool = False) -> tuple[str, str | None]:
    """A message naming fields and rules, never the offending values (they may be PII)."""
    problems = error.errors(include_url=False, include_input=False, include_context=False)
    paths = [_field_path(tuple(problem["loc"]), within_data=within_data, topic=topic) for problem in problems]
    messages = [_MESSAGES_QUOTING_INPUT.get(problem["type"], problem["msg"]) for problem in problems]
    described = [f"{path or '<root>'}: {message}" for path, message in zip(paths, messages, strict=True)]
    return "; ".join(described)[:DETAIL_CHARS_MAX], paths[0] if paths else None


def _readable_uuid(container: object, field: str) -> UUID | None:
    if not isinstance(container, dict):
        return None
    try:
        return UUID(str(container.get(field)))
    except ValueError:
        return None


def decode(record: Record) -> Decoded | Undeliverable:
    """Validates the bytes of one record against the contract of its topic."""
    if record.topic not in PAYLOAD_TYPES:
        return Undeliverable(record, ERROR_UNKNOWN_TOPIC, f"no v1 contract for topic {record.topic}")
    try:
        # The common case, parsed and validated once straight from the bytes.
        envelope = envelope_adapter(record.topic).validate_json(record.value)
    except ValidationError:
        return _undeliverable(record)
    if envelope.type != record.topic:
        return _undeliverable(record)
    return Decoded(record, envelope)


def _undeliverable(record: Record) -> Decoded | Undeliverable:
    """The slow path, only for a record the contract refused: which rule it broke, and what ids can
    still be read from it for the dead letter's headers."""
    try:
        # Strict UTF-8 first: json.loads on bytes would let encoded surrogates through.
        document = json.loads(record.value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        return Undeliverable(record, ERROR_INVALID_JSON, f"value is not UTF-8 JSON: {type(error).__name__}")
    data = document.get("data") if isinstance(document, dict) else None
    hints = {
        "application_id": _readable_uuid(data, "application_id"),
        "correlationid": _readable_uuid(document, "correlationid"),
        "event_id": _readable_uuid(document, "id"),
    }
    try:
        raw = RawEnvelope.model_validate(document)
    except ValidationError as error:
        detail, field = _describe(error, topic=record.topic)
        return Undeliverable(record, ERROR_INVALID_ENVELOPE, detail, field, **hints)
    if raw.type != record.topic:
        detail = f"envelope type does not match topic {record.topic}"
        return Undeliverable(record, ERROR_TYPE_MISMATCH, detail, "type", **hints)
    try:
        envelope = envelope_adapter(record.topic).validate_python(document)
    except ValidationError as error:
        detail, field = _describe(error, topic=record.topic, within_data=True)
        return Undeliverable(record, ERROR_INVALID_PAYLOAD, detail, field, **hints)
    return Decoded(record, envelope)


def now() -> datetime:
    return datetime.now(UTC)


def build_envelope(payload: BaseModel, *, source: str, correlationid: UUID, causationid: UUID | None) -> Envelope[Any]:
    key = key_of(payload)
    return Envelope[Any](
        specversion="1.0",
        id=new_id(),
        type=topic_of(payload),
        source=source,
        time=now(),
        subject=key,
        correlationid=correlationid,
        causationid=causationid,
        datacontenttype="application/json",
        data=payload,
    )


def encode(envelope: Envelope[Any]) -> bytes:
    return envelope.model_dump_json().encode()
