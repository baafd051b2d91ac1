"""The travel-provider boundary, and a sandbox provider that behaves like a remote one."""

import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import asyncpg

from services.runtime.db import load_queries

SANDBOX_SQL = Path(__file__).parent / "sandbox_sql.sql"
SANDBOX_CARRIERS = ("XH", "HW", "RT")


class TransientProviderError(Exception):
    """The provider could not answer now; the same request may succeed later."""


class PermanentProviderError(Exception):
    """The provider refused the request; retrying will not help."""


@dataclass(frozen=True)
class Ticket:
    booking_id: str
    carrier: str
    flight_number: str
    origin_airport: str
    destination_airport: str
    scheduled_departure: datetime
    scheduled_arrival: datetime


class TravelProvider(Protocol):
    async def book(
        self, *, idempotency_key: str, traveler_name: str, origin_airport: str, destination_airport: str
    ) -> Ticket:
        """Issues one ticket per idempotency key; asking again returns the same ticket."""
        ...


class SandboxTravelProvider:
    """Keeps its tickets in its own table, as a remote provider keeps them on its side.

    It fails transiently at `failure_rate` before recording anything, like a provider
    that timed out before doing the work.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        failure_rate: float,
        departure_delay: timedelta,
        flight_duration: timedelta,
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self.failure_rate = failure_rate
        self.departure_delay = departure_delay
        self.flight_duration = flight_duration
        self.rng = rng or random.Random()
        self.queries = load_queries(SANDBOX_SQL)

    async def book(
        self, *, idempotency_key: str, traveler_name: str, origin_airport: str, destination_airport: str
    ) -> Ticket:
        if self.rng.random() < self.failure_rate:
            raise TransientProviderError("sandbox provider: injected transient failure")
        carrier = self.rng.choice(SANDBOX_CARRIERS)
        departure = datetime.now(UTC) + self.departure_delay
        async with self.pool.acquire() as connection:
            row = await self.queries.issue_ticket(
                connection,
                idempotency_key=idempotency_key,
                booking_id=f"SBX-{secrets.token_hex(6).upper()}",
                carrier=carrier,
                flight_number=f"{carrier}{self.rng.randint(100, 9999)}",
                origin_airport=origin_airport,
                destination_airport=destination_airport,
                scheduled_departure=departure,
                scheduled_arrival=departure + self.flight_duration,
            )
        return Ticket(
            booking_id=row["booking_id"],
            carrier=row["carrier"],
            flight_number=row["flight_number"],
            origin_airport=row["origin_airport"],
            destination_airport=row["destination_airport"],
            scheduled_departure=row["scheduled_departure"],
            scheduled_arrival=row["scheduled_arrival"],
        )
