"""The sandbox travel provider: issues one ticket per idempotency key and keeps its tickets in its
own SQLite file, as a remote provider keeps them on its side.

A ticket carries its fare (`fare_amount`, a decimal string, and `fare_currency`).

HTTP API (JSON):
  POST /bookings        header Idempotency-Key; body {traveler_name, origin_airport, destination_airport}
                        201 a new ticket, 200 the ticket already issued for that key (never a second one),
                        400 missing key, 422 invalid body or the key reused for another route,
                        503 injected transient failure (nothing was booked)
  POST /booking-batches body {"items": [{key, traveler_name, origin_airport, destination_airport}, ...]},
                        at most 500 items, all issued in one store transaction; 200 {"items": [{key,
                        outcome, ticket | error}]} in the order sent, where outcome is created,
                        replayed or rejected (error: invalid_item, idempotency_key_reused,
                        duplicate_key); 422 a body that is not a batch, 503 injected transient
                        failure of the whole batch (nothing was booked)
  GET  /bookings/{key}  200 the ticket, 404 {"error": "not_found"}
  POST /bookings/{key}/cancellation
                        cancels the ticket (contract v1.1 withdrawal); idempotent: 200 {key,
                        booking_id, cancelled_at} the first time and every time after, 404 no ticket
                        for the key, 409 {"error": "already_departed"} once its flight has left,
                        503 injected transient failure (nothing was cancelled)
  GET  /health          200

The traveller's name is required, as a real provider needs it on the ticket, but the sandbox
neither stores nor logs it. Faults (HOMEWARD_SANDBOX_TRAVEL_FAILURE_RATE) apply to the POSTs only.
A cancelled ticket stays in the store, with when it was cancelled (`GET` shows `cancelled_at`).
"""

import asyncio
import contextlib
import random
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.runtime.settings import revealed
from services.sandbox import server
from services.sandbox.settings import TravelSandboxSettings
from services.sandbox.store import SqliteStore

CARRIERS = ("XH", "HW", "RT")
FARE_RANGE = (180.0, 720.0)
"""One-way economy fares from a US hub to the program's destinations, roughly."""
FARE_CURRENCY = "USD"
TRAVELER_NAME_CHARS_MAX = 200
SQL = Path(__file__).parent / "sql" / "travel.sql"

logger = structlog.get_logger("homeward.sandbox.travel")


class BookingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    traveler_name: str = Field(min_length=1, max_length=TRAVELER_NAME_CHARS_MAX)
    origin_airport: str = Field(pattern=r"^[A-Z]{3}$")
    destination_airport: str = Field(pattern=r"^[A-Z]{3}$")


@dataclass(frozen=True)
class StoredTicket:
    key: str
    booking_id: str
    carrier: str
    flight_number: str
    origin_airport: str
    destination_airport: str
    scheduled_departure: str
    scheduled_arrival: str
    issued_at: str
    fare_amount: str | None = None
    """The ticket's price, a decimal string (a ticket of a store made before fares has none)."""
    fare_currency: str | None = None
    cancelled_at: str | None = None
    """When the ticket was cancelled (a withdrawal), if it was."""

    def public(self) -> dict[str, str | None]:
        return asdict(self)


class TicketStore(SqliteStore):
    """The travel sandbox's tickets (see SqliteStore); never a traveller's name."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SQL)
        with self._lock:  # a script commits on its own: no transaction around it
            if "fare_amount" not in {row["name"] for row in self._queries.ticket_columns(self._connection)}:
                self._queries.add_fares(self._connection)
            if not list(self._queries.cancellation_columns(self._connection)):
                self._queries.add_cancellations(self._connection)

    def issue(self, key: str, new_ticket: StoredTicket) -> tuple[StoredTicket, bool]:
        """The ticket for `key`: the one already issued (False), or `new_ticket` stored now (True)."""
        assert new_ticket.key == key
        with self._transaction() as connection:
            return self._issue(connection, new_ticket)

    def issue_batch(self, tickets: list[StoredTicket]) -> list[tuple[StoredTicket, bool]]:
        """`issue` for every ticket (each under its own key), in one transaction."""
        with self._transaction() as connection:
            return [self._issue(connection, ticket) for ticket in tickets]

    def _issue(self, connection: Any, new_ticket: StoredTicket) -> tuple[StoredTicket, bool]:
        row = self._queries.ticket(connection, key=new_ticket.key)
        if row is not None:
            return StoredTicket(*tuple(row)), False
        self._queries.insert_ticket(connection, **asdict(new_ticket))
        return new_ticket, True

    def cancel(self, key: str, at: str) -> StoredTicket | None:
        """Cancels the ticket of `key` once (again: the same time); None where there is no ticket."""
        with self._transaction() as connection:
            row = self._queries.ticket(connection, key=key)
            if row is None:
                return None
            self._queries.cancel(connection, key=key, cancelled_at=at)
            return StoredTicket(*tuple(self._queries.ticket(connection, key=key)))

    def get(self, key: str) -> StoredTicket | None:
        with self._lock:
            row = self._queries.ticket(self._connection, key=key)
        return None if row is None else StoredTicket(*tuple(row))


class TravelSandbox:
    def __init__(self, settings: TravelSandboxSettings, store_path: Path, rng: random.Random | None = None) -> None:
        self.store_path = store_path
        self.failure_rate = settings.sandbox_travel_failure_rate
        self.departure_delay = timedelta(seconds=settings.sandbox_flight_departure_delay_seconds)
        self.flight_duration = timedelta(seconds=settings.sandbox_flight_duration_seconds)
        self.random = rng or random.Random()
        self.token = revealed(settings.sandbox_travel_token)
        self._store: TicketStore | None = None

    @property
    def store(self) -> TicketStore:
        assert self._store is not None, "the store opens in the app's lifespan"
        return self._store

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        self._store = await asyncio.to_thread(TicketStore, self.store_path)
        try:
            yield
        finally:
            self.store.close()

    def app(self) -> Starlette:
        return server.application(
            [
                Route("/bookings", self.book, methods=["POST"]),
                Route("/booking-batches", self.book_batch, methods=["POST"]),
                Route("/bookings/{key}", self.get_booking, methods=["GET"]),
                Route("/bookings/{key}/cancellation", self.cancel_booking, methods=["POST"]),
            ],
            self.lifespan,
            token=self.token,
        )

    def _new_ticket(self, key: str, booking: BookingRequest) -> StoredTicket:
        carrier = self.random.choice(CARRIERS)
        now = datetime.now(UTC)
        departure = now + self.departure_delay
        return StoredTicket(
            key=key,
            booking_id=f"SBX-{secrets.token_hex(6).upper()}",
            carrier=carrier,
            flight_number=f"{carrier}{self.random.randint(100, 9999)}",
            origin_airport=booking.origin_airport,
            destination_airport=booking.destination_airport,
            scheduled_departure=departure.isoformat(),
            scheduled_arrival=(departure + self.flight_duration).isoformat(),
            issued_at=now.isoformat(),
            fare_amount=f"{self.random.uniform(*FARE_RANGE):.2f}",
            fare_currency=FARE_CURRENCY,
        )

    async def book(self, request: Request) -> JSONResponse:
        parsed = await server.keyed_request(request, BookingRequest)
        if isinstance(parsed, JSONResponse):
            return parsed
        key, booking = parsed
        if self.random.random() < self.failure_rate:
            logger.info("booking.fault_injected", key=key, fault="error")
            return server.injected_unavailable("nothing was booked")
        ticket, created = await asyncio.to_thread(self.store.issue, key, self._new_ticket(key, booking))
        if (ticket.origin_airport, ticket.destination_airport) != (booking.origin_airport, booking.destination_airport):
            logger.warning("booking.idempotency_key_reused", key=key, booking_id=ticket.booking_id)
            return server.error(422, "idempotency_key_reused", "this Idempotency-Key was used for another route")
        logger.info("booking.issued" if created else "booking.replayed", key=key, booking_id=ticket.booking_id)
        return JSONResponse(ticket.public(), status_code=201 if created else 200)

    async def book_batch(self, request: Request) -> JSONResponse:
        batch = await server.parsed_body(request, server.Batch, bytes_max=server.BATCH_BODY_BYTES_MAX)
        if isinstance(batch, JSONResponse):
            return batch
        if self.random.random() < self.failure_rate:
            keys = [item.get("key") for item in batch.items]
            logger.info("booking.fault_injected", items=len(keys), keys=keys, fault="error")
            return server.injected_unavailable("nothing in the batch was booked")
        items, answers = server.batch_items(batch, BookingRequest)
        issued = await asyncio.to_thread(
            self.store.issue_batch, [self._new_ticket(item.key, item.body) for item in items]
        )
        for item, (ticket, created) in zip(items, issued, strict=True):
            route = (item.body.origin_airport, item.body.destination_airport)
            if (ticket.origin_airport, ticket.destination_airport) != route:
                logger.warning("booking.idempotency_key_reused", key=item.key, booking_id=ticket.booking_id)
                answers[item.index] = server.rejected(
                    item.key, "idempotency_key_reused", "this key was used for another route"
                )
                continue
            answers[item.index] = server.answered(item.key, created, "ticket", ticket.public())
        logger.info("booking.batch", items=len(answers), **Counter(answer["outcome"] for answer in answers))
        return JSONResponse({"items": answers})

    async def get_booking(self, request: Request) -> JSONResponse:
        key = request.path_params["key"]
        ticket = await asyncio.to_thread(self.store.get, key)
        if ticket is None:
            return server.error(404, "not_found", "no booking with this Idempotency-Key")
        return JSONResponse(ticket.public())

    async def cancel_booking(self, request: Request) -> JSONResponse:
        """Cancels a ticket before its flight leaves; asking again answers the same."""
        key = request.path_params["key"]
        if self.random.random() < self.failure_rate:
            logger.info("cancellation.fault_injected", key=key, fault="error")
            return server.injected_unavailable("nothing was cancelled")
        ticket = await asyncio.to_thread(self.store.get, key)
        if ticket is None:
            return server.error(404, "not_found", "no booking with this Idempotency-Key")
        now = datetime.now(UTC)
        if ticket.cancelled_at is None and datetime.fromisoformat(ticket.scheduled_departure) <= now:
            return server.error(409, "already_departed", "the flight has left; the ticket can no longer be cancelled")
        cancelled = await asyncio.to_thread(self.store.cancel, key, now.isoformat())
        assert cancelled is not None  # tickets are never deleted
        logger.info("booking.cancelled", key=key, booking_id=cancelled.booking_id)
        return JSONResponse({"key": key, "booking_id": cancelled.booking_id, "cancelled_at": cancelled.cancelled_at})


async def serve(settings: TravelSandboxSettings, *, port: int, store_path: Path) -> None:
    """Runs the sandbox on `HOMEWARD_HTTP_HOST`:`port` (0: a free port) until SIGINT or SIGTERM."""
    app = TravelSandbox(settings, store_path).app()
    await server.serve(app, name="travel", host=settings.http_host, port=port, tls=settings)
