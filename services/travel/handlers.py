"""Travel: record a booking request per accepted case; a worker books due requests with retries.
A withdrawn case (contract v1.1) is never booked, and its ticket is cancelled by a second worker,
retried like booking."""

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import structlog
from pydantic import ValidationError

from contracts.envelope import Envelope
from contracts.events import CaseWithdrawn, RegistrationAccepted, TravelBooked, TravelBookingFailed
from services.runtime import casekeys, crypto, metrics, tracing
from services.runtime.db import fetch_all
from services.runtime.messages import now
from services.runtime.uow import ServiceDatabase, UnitOfWork
from services.travel import domain
from services.travel.adapters.provider import (
    PROVIDER_LEFT_BOOKING_OUT,
    TICKET_INVALID,
    TRAVELER_DATA_UNREADABLE,
    BookingItem,
    BookingOutcome,
    PermanentProviderError,
    ProviderError,
    Ticket,
    TransientProviderError,
    TravelProvider,
)

logger = structlog.get_logger("homeward.travel")
BOOKING_ERROR = "booking_error"
"""The reason of a booking that failed for a cause other than the provider's (a bug: see the logs)."""


class Deferred:
    """A request not attempted this pass (no attempt counted): it waits for its lease to end."""


@dataclass(frozen=True)
class Booked:
    """A ticket issued: its event, and the fare the provider reported (kept for the report only)."""

    event: TravelBooked
    fare_amount: Decimal | None = None
    fare_currency: str | None = None


DEFERRED = Deferred()


async def handle_accepted(
    events: list[Envelope[RegistrationAccepted]], uow: UnitOfWork, *, queries: Any, data_key: crypto.Keyring
) -> None:
    """A run of accepted cases: one booking request each, by one insert, keeping the traveler part
    of `sealed` (its ciphertext with the booking, its case key in `case_keys`); the worker books them."""
    parts = [casekeys.take(event.data.sealed, casekeys.TRAVELER) for event in events]
    await queries.request_bookings(
        uow.connection,
        case_ids=[event.data.case_id for event in events],
        correlationids=[event.correlationid for event in events],
        cause_event_ids=[event.id for event in events],
        origin_airports=[event.data.origin_airport for event in events],
        destination_airports=[event.data.destination_airport for event in events],
        sealed=[part.ciphertext for part in parts],
    )
    await casekeys.keep_case_keys(uow, [event.data.case_id for event in events], parts, data_key)
    for event in events:
        logger.debug("travel.booking_requested", case_id=event.data.case_id, correlationid=event.correlationid)


async def handle_withdrawn(events: list[Envelope[CaseWithdrawn]], uow: UnitOfWork, *, queries: Any) -> None:
    """A run of withdrawn cases: never booked from now on; a ticket they have is due for cancellation."""
    rows = await fetch_all(queries.withdraw(uow.connection, case_ids=sorted({event.data.case_id for event in events})))
    for row in rows:
        logger.info("travel.withdrawn", case_id=row["case_id"], cancel=row["cancel_state"] == "due")


@dataclass(frozen=True)
class RetryPolicy:
    attempts_max: int
    backoff_base_ms: int
    backoff_max_ms: int
    call_seconds_max: float
    """The longest one booking call can take (the provider's timeout times its tries)."""
    lease_margin_seconds: float


@dataclass
class BookingWorker:
    """Books due requests: claim them (a short transaction), ask the provider (no transaction open),
    then write every outcome with its outbox event in one transaction."""

    database: ServiceDatabase
    queries: Any
    provider: TravelProvider
    data_key: crypto.Keyring
    policy: RetryPolicy
    batch_size_max: int
    """Requests claimed per pass."""
    batch_items_max: int
    """Requests per provider batch call."""
    concurrency_max: int
    """Provider batch calls in flight at once."""
    rng: random.Random

    async def book_due(self) -> int:
        lease_id = uuid4()
        async with self.database.pool.acquire() as connection, connection.transaction():
            due = await fetch_all(
                self.queries.claim_due_bookings(
                    connection, limit=self.batch_size_max, lease_seconds=self.lease_seconds(), lease_id=lease_id
                )
            )
        if not due:
            return 0
        traced = [(request["case_id"], request["correlationid"], request["cause_event_id"]) for request in due]
        with tracing.work(self.database.service, "book flight", traced):
            outcomes, settled = await self._book_and_record(due, lease_id)
        # Committed: only now do the attempts count.
        booked = sum(isinstance(outcome, Booked) for outcome in outcomes)
        settled["booked"] += booked
        for settled_as, count in settled.items():
            metrics.BOOKINGS.labels(settled_as).inc(count)
        logger.info("booking.pass", claimed=len(due), booked=booked, not_booked=len(due) - booked)
        return len(due)

    async def _book_and_record(self, due: list[Any], lease_id: UUID) -> tuple[list[Any], Counter[str]]:
        """Asks the provider (no transaction open), then writes every outcome in one transaction."""
        outcomes = await self._attempt_all(due)
        tickets = [(request, outcome) for request, outcome in zip(due, outcomes, strict=True)
                   if isinstance(outcome, Booked)]  # fmt: skip
        settled: Counter[str] = Counter()
        async with self.database.unit() as uow:
            await self._record_tickets(uow, tickets, lease_id)
            for request, outcome in zip(due, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    with structlog.contextvars.bound_contextvars(
                        case_id=request["case_id"],
                        correlationid=request["correlationid"],
                        event_type=TravelBooked.TOPIC,
                    ):
                        settled[await self._record_failure(uow, request, outcome, lease_id)] += 1
        return outcomes, settled

    def lease_seconds(self) -> float:
        """Long enough for a whole pass: every wave of `concurrency_max` batch calls, each at its longest."""
        calls = -(-self.batch_size_max // self.batch_items_max)
        waves = -(-calls // self.concurrency_max)
        return self.policy.call_seconds_max * waves + self.policy.lease_margin_seconds

    async def _attempt_all(self, due: list[Any]) -> list[Booked | Exception | Deferred]:
        """Every due request's outcome, in order: the provider is asked in batches, a few at once."""
        items: list[BookingItem] = []
        unreadable: dict[str, Exception | Deferred] = {}
        for request in due:
            key = str(request["case_id"])
            try:
                traveler = casekeys.opened(self.data_key, request, purpose=casekeys.TRAVELER)
            except crypto.UnknownKey as missing:
                # A key this process was not given: its configuration to fix, never the case's
                # failure. The request stays pending, and comes back when its lease ends.
                logger.error("booking.data_key_missing", case_id=key, key_id=missing.key_id)
                unreadable[key] = DEFERRED
                continue
            except crypto.UNSEAL_ERRORS:
                # One unreadable case fails alone; it must not hold up the rest of the batch.
                unreadable[key] = PermanentProviderError(TRAVELER_DATA_UNREADABLE, "another data key, or erased")
                continue
            name = f"{traveler['given_name']} {traveler['family_name']}"
            items.append(BookingItem(key, name, request["origin_airport"], request["destination_airport"]))
        limiter = asyncio.Semaphore(self.concurrency_max)

        async def book(batch: list[BookingItem]) -> dict[str, BookingOutcome]:
            async with limiter:
                return await self.provider.book_batch(batch)

        answered: dict[str, BookingOutcome] = {}
        batches = [items[first : first + self.batch_items_max] for first in range(0, len(items), self.batch_items_max)]
        for outcomes in await asyncio.gather(*(book(batch) for batch in batches)):
            answered.update(outcomes)
        return [
            unreadable.get(str(request["case_id"]))
            or _outcome(request["case_id"], answered.get(str(request["case_id"])))
            for request in due
        ]

    async def _record_tickets(self, uow: UnitOfWork, tickets: list[tuple[Any, Booked]], lease_id: UUID) -> None:
        """Every ticket of the pass with one statement; each booked case's event goes out."""
        if not tickets:
            return
        marked = await fetch_all(
                self.queries.mark_booked(
                    uow.connection, lease_id=lease_id,
                    case_ids=[booked.event.case_id for _, booked in tickets],
                    booking_ids=[booked.event.booking_id for _, booked in tickets],
                    flight_numbers=[booked.event.flight_number for _, booked in tickets],
                    fare_amounts=[booked.fare_amount for _, booked in tickets],
                    fare_currencies=[booked.fare_currency for _, booked in tickets],
                )
        )  # fmt: skip
        booked = {row["case_id"] for row in marked}
        withdrawn = {row["case_id"] for row in marked if row["withdrawn"]}
        for case_id in withdrawn:  # withdrawn while its ticket was being issued: it is cancelled next
            logger.info("travel.booked_after_withdrawal", case_id=case_id)
        for request, issued in tickets:
            if issued.event.case_id in booked and issued.event.case_id not in withdrawn:
                uow.emit(issued.event, correlationid=request["correlationid"], causationid=request["cause_event_id"])
                logger.debug(
                    "travel.booked", case_id=issued.event.case_id, correlationid=request["correlationid"],
                    event_type=TravelBooked.TOPIC, attempts=request["attempts"] + 1,
                )  # fmt: skip

    async def _record_failure(self, uow: UnitOfWork, request: Any, outcome: Exception, lease_id: UUID) -> str:
        """A booking not made: failed for good, or tried again later (rare: one statement each).
        Says which (`failed`, `retry`), for /metrics."""
        case_id, attempts = request["case_id"], request["attempts"] + 1
        correlation = {"correlationid": request["correlationid"], "causationid": request["cause_event_id"]}
        held = {"case_id": case_id, "lease_id": lease_id}
        # The event's reason is a code; the detail (ids, statuses, field names) stays internal.
        reason = outcome.code if isinstance(outcome, ProviderError) else BOOKING_ERROR
        detail = str(outcome) if isinstance(outcome, ProviderError) else type(outcome).__name__
        permanent = isinstance(outcome, PermanentProviderError)
        if permanent or domain.gives_up(attempts, attempts_max=self.policy.attempts_max):
            if await self.queries.mark_failed(uow.connection, **held, error=detail):
                failed = TravelBookingFailed(case_id=case_id, reason=reason, attempts=attempts, failed_at=now())
                uow.emit(failed, **correlation)
                logger.warning("travel.booking_failed", attempts=attempts, reason=reason, detail=detail)
            return "failed"
        delay = domain.retry_delay_seconds(
            attempts, base_ms=self.policy.backoff_base_ms, max_ms=self.policy.backoff_max_ms, rng=self.rng
        )
        await self.queries.schedule_retry(uow.connection, **held, error=detail, delay_seconds=delay)
        logger.info("travel.booking_retry_scheduled", attempts=attempts, delay_seconds=round(delay, 3))
        return "retry"


def _outcome(case_id: Any, answered: BookingOutcome | None) -> Booked | Exception:
    if answered is None:
        return TransientProviderError(PROVIDER_LEFT_BOOKING_OUT)
    if isinstance(answered, Exception):
        return answered
    try:
        return Booked(_booked(case_id, answered), answered.fare_amount, answered.fare_currency)
    except ValidationError as error:
        # One odd ticket fails its own case (after its retries), never the rest of the pass.
        fields = ", ".join(".".join(map(str, problem["loc"])) for problem in error.errors(include_input=False))
        return TransientProviderError(TICKET_INVALID, f"does not fit travel.booked.v1: {fields}")


def _booked(case_id: Any, ticket: Ticket) -> TravelBooked:
    return TravelBooked(
        case_id=case_id,
        booking_id=ticket.booking_id,
        carrier=ticket.carrier,
        flight_number=ticket.flight_number,
        origin_airport=ticket.origin_airport,
        destination_airport=ticket.destination_airport,
        scheduled_departure=ticket.scheduled_departure,
        scheduled_arrival=ticket.scheduled_arrival,
        booked_at=now(),
    )


@dataclass
class CancellationWorker:
    """Cancels the tickets of withdrawn cases: claim them (a short transaction), ask the provider
    (no transaction open, a few at once), then record every outcome in one transaction. A failure
    the provider may get over is tried again with backoff, at most `policy.attempts_max` times."""

    database: ServiceDatabase
    queries: Any
    provider: TravelProvider
    policy: RetryPolicy
    batch_size_max: int
    concurrency_max: int
    rng: random.Random

    async def cancel_due(self) -> int:
        lease_id = uuid4()
        lease_seconds = self.policy.call_seconds_max * -(-self.batch_size_max // self.concurrency_max)
        async with self.database.pool.acquire() as connection, connection.transaction():
            due = await fetch_all(self.queries.claim_due_cancellations(
                connection, limit=self.batch_size_max, lease_seconds=lease_seconds + self.policy.lease_margin_seconds,
                lease_id=lease_id,
            ))  # fmt: skip
        if not due:
            return 0
        limiter = asyncio.Semaphore(self.concurrency_max)

        async def cancel(key: str) -> Exception | None:
            async with limiter:
                try:
                    await self.provider.cancel(idempotency_key=key)
                except ProviderError as error:
                    return error
                return None

        answers = await asyncio.gather(*(cancel(str(row["case_id"])) for row in due))
        states: list[str] = []
        delays: list[float] = []
        for row, error in zip(due, answers, strict=True):
            attempts = row["cancel_attempts"] + 1
            if error is None:
                states.append("cancelled")
            elif isinstance(error, PermanentProviderError) or domain.gives_up(
                attempts, attempts_max=self.policy.attempts_max
            ):
                states.append("failed")
                logger.error("travel.cancellation_failed", case_id=row["case_id"], attempts=attempts, detail=str(error))
            else:
                states.append("due")
            delays.append(domain.retry_delay_seconds(
                attempts, base_ms=self.policy.backoff_base_ms, max_ms=self.policy.backoff_max_ms, rng=self.rng
            ))  # fmt: skip
        async with self.database.pool.acquire() as connection:
            await self.queries.record_cancellations(
                connection,
                lease_id=lease_id,
                case_ids=[row["case_id"] for row in due],
                states=states,
                errors=[None if error is None else str(error) for error in answers],
                delays_seconds=delays,
            )
        counted = Counter(states)
        for state, count in counted.items():
            metrics.CANCELLATIONS.labels(state).inc(count)
        logger.info("cancellation.pass", claimed=len(due), **counted)
        return len(due)
