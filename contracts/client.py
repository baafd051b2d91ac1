"""A publisher helper for upstream apps: the records to send to Homeward, right by construction.

It builds the envelope (a new envelope id, the time, the subject, the correlation and causation
ids), chooses the Kafka key the contract names for the topic, and signs evidence as contract v1.1
asks. It sends nothing itself: hand each `Outgoing` to the Kafka client you already use.

    publisher = Publisher(source="partner-office-tgu", signer=Signer("office-tgu-2026", private_key))
    record = publisher.record(EVIDENCE_TOPIC, {"evidence_id": ..., "case_id": ..., ...},
                              correlationid=case_correlationid)
    await producer.send(record.topic, record.value, key=record.key, headers=record.headers)

A payload is checked against its topic's model before it is sent (`validate=False` skips that,
for a producer that builds thousands a second and is tested elsewhere). Homeward's own demo world
publishes through this helper, so it is exercised on every demo and benchmark run.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from contracts.events import EVIDENCE_TOPIC
from contracts.registry import INBOUND_TOPICS, TOPIC_KEYS, envelope_adapter
from contracts.signing import signature_headers

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class Signer:
    """An evidence signer: its registered id (`homeward signers add --id`) and its private key."""

    signer_id: str
    private_key: Ed25519PrivateKey = field(repr=False)


@dataclass(frozen=True)
class Outgoing:
    """One Kafka record, ready for any client: topic, key, value bytes and headers."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    envelope_id: UUID


@dataclass(frozen=True)
class Publisher:
    """Builds the records an upstream app sends: `source` names the app (the envelope's source)."""

    source: str
    signer: Signer | None = None

    def record(
        self,
        topic: str,
        payload: BaseModel | dict[str, Any],
        *,
        correlationid: UUID | None = None,
        causationid: UUID | None = None,
        envelope_id: UUID | None = None,
        time: datetime | None = None,
        validate: bool = True,
    ) -> Outgoing:
        """The record of one message to `topic` (an inbound topic: registration.submitted.v1 or
        arrival.evidence.v1). A new envelope id each call; pass the same application id to resend
        an application safely. Evidence needs the publisher's signer."""
        if topic not in INBOUND_TOPICS:
            raise ValueError(
                f"{topic} is not a topic upstream apps publish to; one of: {', '.join(sorted(INBOUND_TOPICS))}"
            )
        data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
        key = str(data[TOPIC_KEYS[topic]])
        envelope_id = envelope_id or uuid4()
        document: dict[str, Any] = {
            "specversion": SPEC_VERSION, "id": str(envelope_id), "type": topic, "source": self.source,
            "time": (time or datetime.now(UTC)).isoformat(), "subject": key,
            "correlationid": str(correlationid or uuid4()), "datacontenttype": CONTENT_TYPE, "data": data,
        }  # fmt: skip
        if causationid is not None:
            document["causationid"] = str(causationid)
        if validate:
            envelope_adapter(topic).validate_python(document)  # raises pydantic's ValidationError, field by field
        value = orjson.dumps(document)  # compact JSON; the signature covers these very bytes
        headers: list[tuple[str, bytes]] = []
        if topic == EVIDENCE_TOPIC:
            if self.signer is None:
                raise ValueError("evidence must be signed (contract v1.1): give the Publisher its Signer")
            headers = signature_headers(self.signer.signer_id, self.signer.private_key, value)
        return Outgoing(topic, key.encode(), value, headers, envelope_id)
