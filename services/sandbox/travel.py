"""The sandbox travel provider: issues one ticket per idempotency key and keeps its tickets in its
own SQLite file, as a remote provider keeps them on its side.

HTTP API (JSON):
  POST /bookings        header Idempotency-Key; body {traveler_name, origin_airport, destination_airport}
                        201 a new ticket, 200 the ticket already issued for that key (never a second one),
                        400 missing key, 422 invalid body or the key reused for another route,
                        503 injected transient failure (nothing was booked)
  GET  /bookings/{key}  200 the ticket, 404 {"error": "not_found"}
  GET  /health          200

The traveller's name is required, as a real provider needs it on the ticket, but the sandbox
neither stores nor logs it. Faults (HOMEWARD_SANDBOX_TRAVEL_FAILURE_RATE) apply to POST only.
"""

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.sandbox import server
from services.sandbox.settings import TravelSandboxSettings
from services.sandbox.store import SqliteStore

CARRIERS = ("XH", "HW", "RT")
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

    def public(self) -> dict[str, str]:
        return asdict(self)


class TicketStore(SqliteStore):
    """The travel sandbox's tickets (see SqliteStore); never a traveller's name."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SQL)

    def issue(self, key: str, new_ticket: StoredTicket) -> tuple[StoredTicket, bool]:
        """The ticket for `key`: the one already issued (False), or `new_ticket` stored now (True)."""
        with self._transaction() as connection:
            row = self._queries.ticket(connection, key=key)
            if row is not None:
                return StoredTicket(*tuple(row)), False
            self._queries.insert_ticket(connection, **asdict(new_ticket))
            return new_ticket, True

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
                Route("/bookings/{key}", self.get_booking, methods=["GET"]),
            ],
            self.lifespan,
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

    async def get_booking(self, request: Request) -> JSONResponse:
        ticket = await asyncio.to_thread(self.store.get, request.path_params["key"])
        if ticket is None:
            return server.error(404, "not_found", "no booking with this Idempotency-Key")
        return JSONResponse(ticket.public())


async def serve(settings: TravelSandboxSettings, *, port: int, store_path: Path) -> None:
    """Runs the sandbox on `HOMEWARD_HTTP_HOST`:`port` (0: a free port) until SIGINT or SIGTERM."""
    await server.serve(TravelSandbox(settings, store_path).app(), name="travel", host=settings.http_host, port=port)
