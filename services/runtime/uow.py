"""The unit of work a handler receives: one database transaction and the outbox it writes to.

The consumer opens one for a batch, records the inbox, runs the handlers of the
whole batch and commits once; handlers only read, write and `emit`. Workers use
one per pass. Nothing is published from inside a unit of work: the relay
publishes outbox rows after the commit.
"""

import contextlib
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from contracts.envelope import Envelope
from contracts.registry import dlq_topic
from services.runtime import crypto, tracing
from services.runtime.db import Connection
from services.runtime.messages import Undeliverable, build_envelope, encode


@dataclass(slots=True)
class OutboxRow:
    topic: str
    key: str
    value: bytes
    headers: dict[str, str]
    event_id: UUID | None
    dead_letter: bool = False
    sealed: bool = False


def dead_letter_binding(topic: str, key: str) -> str:
    """The associated data a sealed dead-letter copy is bound to: its topic and key, so a copy
    moved onto another row does not open."""
    return f"dead-letter:{topic}:{key}"


def case_lock_class(service: str) -> int:
    """The advisory-lock class of a service's case locks, the CRC-32 of its name as a signed int4.
    Advisory locks are the whole database's, not a schema's: with one class for every service,
    travel's batch closing a case waited on disbursement's batch paying it (itself waiting its turn
    at the ledger head), though the two share no row. Case locks use PostgreSQL's two-key form, so
    they never meet the single-key locks of the outbox relay and the migrations."""
    return _int4(zlib.crc32(f"{service}.cases".encode()))


def _int4(raw: int) -> int:
    return raw - (1 << 32) if raw >= 1 << 31 else raw


def case_lock_key(subject: UUID | str) -> int:
    """A case's advisory-lock key: the low 32 bits of its id (random in UUIDv4 and UUIDv7 alike),
    or the CRC-32 of a subject that is not a UUID, as a signed int4. Two cases that share a key
    only take turns."""
    return _int4(subject.int & 0xFFFF_FFFF if isinstance(subject, UUID) else zlib.crc32(subject.encode()))


@dataclass(frozen=True, slots=True)
class ServiceDatabase:
    """A service's database: its pool, and the units of work that write its outbox."""

    pool: asyncpg.Pool
    service: str
    runtime_queries: Any
    redrive_topics: frozenset[str] = frozenset()
    """Topics whose events open a case for re-driving (the service's `REDRIVE.opens_on`)."""
    dead_letter_key: crypto.Keyring | None = None
    """Seals dead-letter copies until the relay has published them (the service's data key);
    None in a service that holds no data key (arrival: its inbound topics carry no identity data)."""
    closing_topics: frozenset[str] = frozenset()
    """Topics whose events, emitted here, close their case for erasure here, in the same
    transaction (the service's `RETENTION.decides`)."""

    def unit(self) -> "UnitOfWork":
        """`async with database.unit() as uow:` a connection and its transaction, for one batch."""
        return UnitOfWork(self)


class UnitOfWork:
    """One transaction and the outbox rows it writes. Entering takes a connection and opens the
    transaction; leaving the block writes the queued rows and commits, or rolls it all back on an
    error: no call site can forget the flush, nor write the outbox outside the transaction."""

    __slots__ = ("_connection", "_exit", "database", "pending")

    def __init__(self, database: ServiceDatabase, connection: Connection | None = None) -> None:
        self.database = database
        self.pending: list[OutboxRow] = []
        # A connection given here is for handler tests that only read `pending`; the block sets it.
        self._connection = connection
        self._exit: contextlib.AsyncExitStack | None = None

    @property
    def connection(self) -> Connection:
        assert self._connection is not None, "use the unit of work as `async with database.unit() as uow`"
        return self._connection

    @property
    def runtime_queries(self) -> Any:
        return self.database.runtime_queries

    async def lock_cases(self, subjects: Iterable[UUID | str]) -> None:
        """Waits for, then holds until commit, the lock of each case (or application) named; see
        runtime.sql: lock_cases."""
        keys = list({case_lock_key(subject) for subject in subjects})
        lock_class = case_lock_class(self.database.service)
        await self.runtime_queries.lock_cases(self.connection, lock_class=lock_class, keys=keys)

    async def __aenter__(self) -> "UnitOfWork":
        stack = contextlib.AsyncExitStack()
        try:
            connection = await stack.enter_async_context(self.database.pool.acquire())
            await stack.enter_async_context(connection.transaction())
        except BaseException:
            await stack.aclose()
            raise
        self._connection, self._exit = connection, stack
        return self

    async def __aexit__(
        self, error_type: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self._exit is not None
        stack, self._exit = self._exit, None
        try:
            if error is None:
                await self._flush()
        except BaseException as failure:
            await stack.__aexit__(type(failure), failure, failure.__traceback__)
            raise
        else:
            await stack.__aexit__(error_type, error, traceback)
        finally:
            self._connection = None

    def emit(self, payload: BaseModel, *, correlationid: UUID, causationid: UUID | None) -> Envelope[Any]:
        """Queues an event for the outbox; it is written when the block ends."""
        service = self.database.service
        envelope = build_envelope(payload, source=f"homeward/{service}", correlationid=correlationid,
                                  causationid=causationid)  # fmt: skip
        headers = {}
        if tracing.enabled():  # the case's trace goes on with the event (services/runtime/tracing.py)
            headers[tracing.TRACEPARENT] = tracing.traceparent(service, correlationid, causationid, envelope.id)
        self.pending.append(OutboxRow(envelope.type, envelope.subject, encode(envelope), headers, envelope.id))
        return envelope

    def dead_letter(self, bad: Undeliverable) -> None:
        """Queues the record's copy for `<topic>.dlq`, bytes unchanged on the topic; in the outbox
        sealed under the service's data key, and deleted once published."""
        # PostgreSQL text holds no NUL: a key with one is kept with U+FFFD in its place.
        key = bad.record.key.decode(errors="replace").replace("\x00", "\ufffd") if bad.record.key else ""
        topic, value, sealing = dlq_topic(bad.record.topic), bad.record.value, self.database.dead_letter_key
        if sealing is not None:
            value = crypto.seal_bytes(sealing, value, bound_to=dead_letter_binding(topic, key)).encode()
        row = OutboxRow(
            topic, key, value, bad.dead_letter_headers(), None, dead_letter=True, sealed=sealing is not None
        )
        self.pending.append(row)

    async def _flush(self) -> None:
        if not self.pending:
            return
        rows = self.pending
        await self.runtime_queries.append_outbox(
            self.connection,
            topics=[row.topic for row in rows],
            keys=[row.key for row in rows],
            event_values=[row.value for row in rows],
            headers=[json.dumps(row.headers) for row in rows],
            event_ids=[row.event_id for row in rows],
            dead_letters=[row.dead_letter for row in rows],
            sealed=[row.sealed for row in rows],
        )
        opened = sorted({row.key for row in self.pending if row.topic in self.database.redrive_topics})
        if opened:
            await self.runtime_queries.open_cases(self.connection, keys=opened)
        closed: dict[UUID, str] = {}
        for row in self.pending:
            if row.topic in self.database.closing_topics and not row.dead_letter:
                closed.setdefault(UUID(row.key), row.topic)
        await self.close_for_erasure(closed)
        self.pending.clear()

    async def close_for_erasure(self, closed: dict[UUID, str]) -> None:
        """Notes cases closed (each with the topic that closed it) for erasure, by one insert;
        sorted, so that two transactions closing overlapping cases never deadlock."""
        if closed:
            ordered = sorted(closed)
            await self.runtime_queries.close_for_erasure(
                self.connection, case_ids=ordered, topics=[closed[case_id] for case_id in ordered]
            )
