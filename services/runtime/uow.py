"""The unit of work a handler receives: one database transaction and the outbox it writes to.

The consumer opens the transaction, records the inbox, runs the handlers of a
whole batch and commits once; handlers only read, write and `emit`. Nothing is
published from inside a handler: the relay publishes outbox rows after commit.
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar
from uuid import UUID

from pydantic import BaseModel

from contracts.envelope import Envelope
from contracts.registry import dlq_topic
from services.runtime.db import Connection
from services.runtime.messages import Undeliverable, build_envelope, encode


@dataclass(slots=True)
class OutboxRow:
    topic: str
    key: str
    value: bytes
    headers: dict[str, str]
    event_id: UUID | None

    def as_params(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "key": self.key,
            "value": self.value,
            "headers": self.headers,
            "event_id": self.event_id,
        }


@dataclass(slots=True)
class UnitOfWork:
    connection: Connection
    service: str
    runtime_queries: Any
    pending: list[OutboxRow] = field(default_factory=list)

    redrive_topics: ClassVar[frozenset[str]] = frozenset()
    """Topics whose events open a case for re-driving; set once per process by the service that runs
    (each process runs one service), so handlers and workers need not pass it around."""

    def emit(self, payload: BaseModel, *, correlationid: UUID, causationid: UUID | None) -> Envelope[Any]:
        """Queues an event for the outbox; it is written when the unit of work flushes."""
        envelope = build_envelope(
            payload, source=f"homeward/{self.service}", correlationid=correlationid, causationid=causationid
        )
        self.pending.append(OutboxRow(envelope.type, envelope.subject, encode(envelope), {}, envelope.id))
        return envelope

    def dead_letter(self, bad: Undeliverable) -> None:
        key = bad.record.key.decode(errors="replace") if bad.record.key else ""
        row = OutboxRow(dlq_topic(bad.record.topic), key, bad.record.value, bad.dead_letter_headers(), None)
        self.pending.append(row)

    async def flush(self) -> None:
        if not self.pending:
            return
        await self.runtime_queries.append_outbox(self.connection, [row.as_params() for row in self.pending])
        opened = sorted({row.key for row in self.pending if row.topic in self.redrive_topics})
        if opened:
            await self.runtime_queries.open_cases(self.connection, keys=opened)
        self.pending.clear()
