"""Topic name -> payload type, and the helpers that read and write envelopes by topic."""

from functools import cache
from typing import Any, Final
from uuid import UUID

from pydantic import BaseModel, TypeAdapter

from contracts import events
from contracts.envelope import Envelope

PAYLOAD_TYPES: Final[dict[str, Any]] = {
    events.RegistrationSubmitted.TOPIC: events.RegistrationSubmitted,
    events.RegistrationAccepted.TOPIC: events.RegistrationAccepted,
    events.RegistrationRejected.TOPIC: events.RegistrationRejected,
    events.TravelBooked.TOPIC: events.TravelBooked,
    events.TravelBookingFailed.TOPIC: events.TravelBookingFailed,
    events.EVIDENCE_TOPIC: events.ArrivalEvidence,
    events.ArrivalVerified.TOPIC: events.ArrivalVerified,
    events.ArrivalRejected.TOPIC: events.ArrivalRejected,
    events.StipendHeld.TOPIC: events.StipendHeld,
    events.StipendDisbursed.TOPIC: events.StipendDisbursed,
    events.StipendFailed.TOPIC: events.StipendFailed,
    events.WithdrawalRequested.TOPIC: events.WithdrawalRequested,
    events.CaseWithdrawn.TOPIC: events.CaseWithdrawn,
    events.WithdrawalRefused.TOPIC: events.WithdrawalRefused,
    events.ArrivalAttested.TOPIC: events.ArrivalAttested,
}
"""Every topic of the contract: v1 in the order of its topic table, then the v1.1 additions."""

INBOUND_TOPICS: Final = frozenset(
    {events.RegistrationSubmitted.TOPIC, events.EVIDENCE_TOPIC, events.WithdrawalRequested.TOPIC}
)

_KEYED_BY_APPLICATION: Final = frozenset({events.RegistrationSubmitted.TOPIC, events.RegistrationRejected.TOPIC})
TOPIC_KEYS: Final[dict[str, str]] = {
    topic: "application_id" if topic in _KEYED_BY_APPLICATION else "case_id" for topic in PAYLOAD_TYPES
}
"""The payload field whose value is the message key and the envelope `subject`."""

DLQ_SUFFIX: Final = ".dlq"


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


def all_topics() -> list[str]:
    """Every topic Homeward needs: the v1 topics and their dead-letter twins."""
    return [*PAYLOAD_TYPES, *(dlq_topic(topic) for topic in PAYLOAD_TYPES)]


@cache
def envelope_adapter(topic: str) -> TypeAdapter[Envelope[Any]]:
    payload_type: Any = PAYLOAD_TYPES[topic]
    adapter: TypeAdapter[Envelope[Any]] = TypeAdapter(Envelope[payload_type])
    return adapter


def topic_of(payload: BaseModel) -> str:
    topic = getattr(payload, "TOPIC", None)
    if topic is None:
        raise TypeError(f"{type(payload).__name__} declares no TOPIC")
    return str(topic)


def key_of(payload: BaseModel) -> str:
    value = getattr(payload, TOPIC_KEYS[topic_of(payload)])
    assert isinstance(value, UUID)
    return str(value)
