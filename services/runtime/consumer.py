"""Applies a batch of records: inbox, handlers and outbox in one transaction.

Kafka offsets are committed by the subscriber only after this returns, so a crash
between the database commit and the offset commit redelivers the batch, and the
inbox turns the redelivery into a no-op.
"""

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

import structlog
from pydantic import BaseModel

from services.runtime import metrics, tracing
from services.runtime.db import TRANSIENT_ERRORS, fetch_all
from services.runtime.messages import ERROR_HANDLER, Decoded, Record, Undeliverable, decode
from services.runtime.uow import ServiceDatabase, UnitOfWork


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an admission check turned a well-formed record away: its dead letter's code and detail."""

    code: str
    detail: str


BatchHandler = Callable[[list[Any], UnitOfWork], Awaitable[None]]
InvalidHandler = Callable[[Undeliverable, UnitOfWork], Awaitable[None]]
AdmitHandler = Callable[[list[Decoded], UnitOfWork], Awaitable[list[Refusal | None]]]

logger = structlog.get_logger("homeward.consumer")


@dataclass(frozen=True)
class Route:
    """Who handles a topic: `batch` takes a whole run of consecutive valid events of the topic at
    once, in order; `on_invalid`, if given, answers bad input one record at a time."""

    batch: BatchHandler
    on_invalid: InvalidHandler | None = None
    admit: AdmitHandler | None = None
    """Checks the topic's well-formed records before anything else sees them (arrival: who signed
    the evidence), all at once; answers each with None (it goes on) or why it is refused."""


@dataclass(frozen=True)
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0

    def __add__(self, other: "BatchResult") -> "BatchResult":
        return BatchResult(
            self.applied + other.applied,
            self.duplicates + other.duplicates,
            self.dead_lettered + other.dead_lettered,
        )


@functools.cache
def _id_fields(payload: type[BaseModel]) -> tuple[bool, bool]:
    """Whether a payload type has a case_id and an application_id: looked up once per type, as
    pydantic answers a missing attribute slowly."""
    return "case_id" in payload.model_fields, "application_id" in payload.model_fields


def _named_ids(item: Decoded | Undeliverable) -> tuple[UUID | None, UUID | None]:
    """The case and the application a record names, where its payload (or what could be read of
    a bad record) has them: the one place that knows where a record says what it is about."""
    if isinstance(item, Decoded):
        data = item.envelope.data
        names_case, names_application = _id_fields(cast(type[BaseModel], type(data)))
        return (data.case_id if names_case else None), (data.application_id if names_application else None)
    return None, item.application_id


def _log_context(item: Decoded | Undeliverable) -> dict[str, Any]:
    correlationid = item.envelope.correlationid if isinstance(item, Decoded) else item.correlationid
    context: dict[str, Any] = {"event_type": item.record.topic, "correlationid": correlationid}
    case_id, application_id = _named_ids(item)
    if case_id is not None:
        context["case_id"] = case_id
    if application_id is not None:
        context["application_id"] = application_id
    return context


def _case_of(item: Decoded | Undeliverable) -> UUID | str:
    """What a record is about: its case (or application), as its log lines name it, else its Kafka key."""
    case_id, application_id = _named_ids(item)
    if subject := case_id or application_id:
        return subject
    return item.record.key.decode(errors="replace") if item.record.key else ""


class BatchConsumer:
    def __init__(
        self,
        *,
        database: ServiceDatabase,
        routes: dict[str, Route],
        retry_backoff_seconds: float,
        handler_attempts_max: int = 3,
        handler_backoff_seconds: float = 0.1,
    ) -> None:
        self.database = database
        self.routes = routes
        self.retry_backoff_seconds = retry_backoff_seconds
        self.handler_attempts_max = handler_attempts_max
        self.handler_backoff_seconds = handler_backoff_seconds

    async def consume(self, records: Sequence[Record]) -> BatchResult:
        """Applies the batch in one transaction; falls back to one record at a time if a handler fails."""
        items = [decode(record) for record in records]
        try:
            return await self._apply(items)
        except TRANSIENT_ERRORS:
            # Leave the offsets uncommitted: the subscriber rewinds and the batch comes back.
            logger.warning("consumer.transient_failure", batch_size=len(items), exc_info=True)
            await asyncio.sleep(self.retry_backoff_seconds)
            raise
        except Exception:
            logger.exception("consumer.batch_failed_isolating", batch_size=len(items))
        totals = BatchResult()
        for item in items:
            totals += await self._apply_alone(item)
        return totals

    async def _apply_alone(self, item: Decoded | Undeliverable) -> BatchResult:
        """Tries a record on its own a bounded number of times, with backoff, then dead-letters it
        so that the partition keeps moving."""
        error: Exception | None = None
        for attempt in range(1, self.handler_attempts_max + 1):
            try:
                return await self._apply([item])
            except TRANSIENT_ERRORS:
                await asyncio.sleep(self.retry_backoff_seconds)
                raise
            except Exception as failure:
                error = failure
                logger.warning(
                    "consumer.handler_failed", attempt=attempt, error=type(failure).__name__, **_log_context(item)
                )
                if attempt < self.handler_attempts_max:
                    await asyncio.sleep(self.handler_backoff_seconds * 2 ** (attempt - 1))
        logger.error(
            "consumer.poison_message", attempts=self.handler_attempts_max, exc_info=error, **_log_context(item)
        )
        detail = f"{type(error).__name__}: handler failed {self.handler_attempts_max} times"
        return await self._apply([Undeliverable(item.record, ERROR_HANDLER, detail)])

    async def _apply(self, items: Sequence[Decoded | Undeliverable]) -> BatchResult:
        """The batch in one transaction, inside its spans (services/runtime/tracing.py; no-ops when off)."""
        with tracing.batch(self.database.service, items):
            return await self._apply_in_transaction(items)

    async def _apply_in_transaction(self, items: Sequence[Decoded | Undeliverable]) -> BatchResult:
        started = time.monotonic()
        applied = duplicates = dead_lettered = 0
        outcomes: list[tuple[str, str, str | None]] = []  # topic, outcome, dead-letter code
        async with self.database.unit() as uow:
            await uow.lock_cases(_case_of(item) for item in items)
            items = await self._admitted(items, uow)
            claimed = await fetch_all(
                uow.runtime_queries.claim_events(uow.connection, event_ids=[item.inbox_key for item in items])
            )
            fresh = {row["event_id"] for row in claimed}
            run: list[Decoded] = []  # consecutive events for one batch handler, applied together
            for item in items:
                topic = item.record.topic
                if run and (topic != run[0].record.topic or not isinstance(item, Decoded)):
                    await self._apply_run(run, uow)
                    run = []
                if item.inbox_key not in fresh:
                    duplicates += 1
                    outcomes.append((topic, "duplicate", None))
                    logger.debug("event.duplicate_ignored", **_log_context(item))  # counted in /metrics
                    continue
                fresh.discard(item.inbox_key)  # a key twice in one batch is applied once
                if isinstance(item, Decoded):
                    applied += 1
                    outcomes.append((topic, "applied", None))
                    run.append(item)
                else:
                    with structlog.contextvars.bound_contextvars(**_log_context(item)):
                        await self._reject(item, uow)
                    dead_lettered += 1
                    outcomes.append((topic, "dead_lettered", item.code))
            if run:
                await self._apply_run(run, uow)
        # Committed: only now does the batch count.
        elapsed = time.monotonic() - started
        metrics.BATCH_SECONDS.observe(elapsed)
        # One line per batch; each event's own line (with its case fields) is at DEBUG.
        logger.info(
            "consumer.batch", events=len(items), applied=applied, duplicates=duplicates,
            dead_lettered=dead_lettered, topics=sorted({item.record.topic for item in items}),
            seconds=round(elapsed, 4),
        )  # fmt: skip
        # Counted per label set, not per event: a label lookup costs more than the increment.
        for (topic, outcome, code), count in Counter(outcomes).items():
            metrics.EVENTS.labels(topic, outcome).inc(count)
            if code is not None:
                metrics.DEAD_LETTERS.labels(topic, code).inc(count)
        return BatchResult(applied, duplicates, dead_lettered)

    async def _admitted(
        self, items: Sequence[Decoded | Undeliverable], uow: UnitOfWork
    ) -> Sequence[Decoded | Undeliverable]:
        """Runs each topic's admission check over its well-formed records, before the inbox sees
        them: a refused record is dead-lettered under its offsets, so it cannot claim the event id
        that a genuine copy may still bring."""
        checked: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            route = self.routes.get(item.record.topic)
            if isinstance(item, Decoded) and route is not None and route.admit is not None:
                checked.setdefault(item.record.topic, []).append(index)
        if not checked:
            return items
        admitted = list(items)
        for topic, indexes in checked.items():
            admit = cast(AdmitHandler, self.routes[topic].admit)
            decoded = [cast(Decoded, items[index]) for index in indexes]
            refusals = await admit(decoded, uow)
            for index, item, refused in zip(indexes, decoded, refusals, strict=True):
                if refused is not None:
                    admitted[index] = Undeliverable(
                        item.record, refused.code, refused.detail,
                        correlationid=item.envelope.correlationid, event_id=item.envelope.id,
                    )  # fmt: skip
        return admitted

    async def _apply_run(self, run: list[Decoded], uow: UnitOfWork) -> None:
        """A run of one topic's events to its handler; the handler logs each with its ids."""
        topic = run[0].record.topic
        with structlog.contextvars.bound_contextvars(event_type=topic):
            await self.routes[topic].batch([item.envelope for item in run], uow)

    async def _reject(self, bad: Undeliverable, uow: UnitOfWork) -> None:
        # The detail names fields, rules and reasons, never a value (messages._describe).
        logger.warning("event.dead_lettered", error_code=bad.code, field=bad.field, detail=bad.detail)
        uow.dead_letter(bad)
        route = self.routes.get(bad.record.topic)
        if route is not None and route.on_invalid is not None and bad.code != ERROR_HANDLER:
            await route.on_invalid(bad, uow)
