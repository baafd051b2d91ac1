"""Travel alone against the real broker and PostgreSQL: an accepted case gets exactly one ticket."""

from collections.abc import Iterator
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from contracts.events import CaseWithdrawn
from tests.conftest import Infra
from tests.integration.helpers import (
    ACCEPTED,
    BOOKED,
    Collector,
    accepted,
    now,
    outbox_count,
    publish,
    start_service,
    wait_until_processed,
)
from tests.support import ServiceRunner, envelope, eventually, outbound_and_dlq_topics

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("travel")]
WITHDRAWN = CaseWithdrawn.TOPIC


@pytest.fixture(scope="module")
def travel(infra: Infra) -> Iterator[ServiceRunner]:
    yield from start_service("travel", infra)


def collector(infra: Infra) -> Collector:
    return Collector(infra.kafka_bootstrap, outbound_and_dlq_topics())


async def test_accepted_case_is_booked_with_a_consistent_ticket(infra: Infra, database: asyncpg.Connection):
    case_id = uuid4()
    sent = envelope(ACCEPTED, accepted(infra, case_id=case_id), source="homeward/registration")
    async with collector(infra) as kafka:
        await kafka.send(ACCEPTED, sent, str(case_id))
        [event] = await eventually(lambda: kafka.events(BOOKED, case_id=str(case_id)), what="travel.booked.v1")

    assert event["type"] == BOOKED
    assert event["source"] == "homeward/travel"
    assert event["subject"] == str(case_id)
    assert event["correlationid"] == sent["correlationid"]
    assert event["causationid"] == sent["id"]
    ticket = event["data"]
    assert ticket["booking_id"]
    assert ticket["carrier"]
    assert ticket["flight_number"].startswith(ticket["carrier"])
    assert (ticket["origin_airport"], ticket["destination_airport"]) == ("IAH", "TGU")
    departure = datetime.fromisoformat(ticket["scheduled_departure"])
    arrival = datetime.fromisoformat(ticket["scheduled_arrival"])
    assert departure.tzinfo is not None
    assert departure <= arrival
    row = await database.fetchrow("SELECT * FROM travel.bookings WHERE case_id = $1", case_id)
    assert (row["status"], row["attempts"], row["booking_id"]) == ("booked", 1, ticket["booking_id"])
    assert row["flight_number"] == ticket["flight_number"]


async def test_duplicate_accepted_events_book_once(infra: Infra, database: asyncpg.Connection):
    case_id = uuid4()
    data = accepted(infra, case_id=case_id)
    sent = envelope(ACCEPTED, data)
    redelivered = envelope(ACCEPTED, data, correlationid=uuid4())  # same case, a new envelope id
    async with collector(infra) as kafka:
        where = await publish(kafka, ACCEPTED, sent, str(case_id))
        await publish(kafka, ACCEPTED, sent, str(case_id), partition=where.partition)
        await eventually(lambda: kafka.events(BOOKED, case_id=str(case_id)), what="the first booking")
        await publish(kafka, ACCEPTED, sent, str(case_id), partition=where.partition)
        await publish(kafka, ACCEPTED, redelivered, str(case_id), partition=where.partition)
        await wait_until_processed(database, "travel", redelivered["id"])
        # The booking worker runs apart from the consumer: give it a later case to book, then count.
        marker_id = uuid4()
        marker = envelope(ACCEPTED, accepted(infra, case_id=marker_id))
        await publish(kafka, ACCEPTED, marker, str(marker_id), partition=where.partition)
        await eventually(lambda: kafka.events(BOOKED, case_id=str(marker_id)), what="the marker's booking")

        [event] = kafka.events(BOOKED, case_id=str(case_id))
    assert event["correlationid"] == sent["correlationid"]
    assert await outbox_count(database, "travel", BOOKED, str(case_id)) == 1
    assert await database.fetchval("SELECT count(*) FROM travel.bookings WHERE case_id = $1", case_id) == 1
    # The provider issued one ticket for the case, the one travel announced.
    async with httpx.AsyncClient(base_url=infra.travel_url) as provider:
        ticket = (await provider.get(f"/bookings/{case_id}")).json()
    assert ticket["booking_id"] == event["data"]["booking_id"]


async def test_travel_keeps_no_provider_table_and_no_names(database: asyncpg.Connection):
    tables = await database.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = 'travel'")
    assert "sandbox_tickets" not in {row["table_name"] for row in tables}


# Contract v1.1 withdrawal ------------------------------------------------------------------------


def withdrawn(case_id: UUID, *, booking_cancelled: bool) -> dict[str, Any]:
    return envelope(WITHDRAWN, {
        "case_id": str(case_id), "request_id": str(uuid4()), "booking_cancelled": booking_cancelled,
        "withdrawn_at": now().isoformat(),
    }, source="homeward/arrival")  # fmt: skip


async def cancellation(database: asyncpg.Connection, case_id: UUID) -> str | None:
    state: str | None = await database.fetchval("SELECT cancel_state FROM travel.bookings WHERE case_id = $1", case_id)
    return state if state in ("cancelled", "failed") else None


async def test_a_withdrawn_case_has_its_ticket_cancelled_once_at_the_provider(infra: Infra, database):
    case_id = uuid4()
    async with collector(infra) as kafka:
        await kafka.send(ACCEPTED, envelope(ACCEPTED, accepted(infra, case_id=case_id)), str(case_id))
        await eventually(lambda: kafka.events(BOOKED, case_id=str(case_id)), what="the booking")
        sent = withdrawn(case_id, booking_cancelled=True)
        await kafka.send(WITHDRAWN, sent, str(case_id))
        await kafka.send(WITHDRAWN, {**sent, "id": str(uuid4())}, str(case_id))  # told twice
        state = await eventually(lambda: cancellation(database, case_id), what="the cancellation")
    async with httpx.AsyncClient(base_url=infra.travel_url) as provider:
        ticket = (await provider.get(f"/bookings/{case_id}")).json()
    assert state == "cancelled" and ticket["cancelled_at"] is not None
    row = await database.fetchrow("SELECT cancel_attempts, withdrawn_at FROM travel.bookings WHERE case_id = $1",
                                  case_id)  # fmt: skip
    assert row["cancel_attempts"] == 1 and row["withdrawn_at"] is not None


async def test_a_case_withdrawn_before_its_booking_request_is_never_booked(infra: Infra, database):
    case_id = uuid4()
    async with collector(infra) as kafka:
        sent = withdrawn(case_id, booking_cancelled=False)
        await kafka.send(WITHDRAWN, sent, str(case_id))
        await wait_until_processed(database, "travel", sent["id"])
        opened = envelope(ACCEPTED, accepted(infra, case_id=case_id))
        await kafka.send(ACCEPTED, opened, str(case_id))
        await wait_until_processed(database, "travel", opened["id"])
        # A later case of the same partition is booked: the worker has passed over the withdrawn one.
        marker = uuid4()
        await kafka.send(ACCEPTED, envelope(ACCEPTED, accepted(infra, case_id=marker)), str(marker))
        await eventually(lambda: kafka.events(BOOKED, case_id=str(marker)), what="a later booking")
        assert kafka.events(BOOKED, case_id=str(case_id)) == []
    row = await database.fetchrow("SELECT status, withdrawn_at, attempts FROM travel.bookings WHERE case_id = $1",
                                  case_id)  # fmt: skip
    assert (row["status"], row["attempts"]) == ("pending", 0) and row["withdrawn_at"] is not None
    async with httpx.AsyncClient(base_url=infra.travel_url) as provider:
        assert (await provider.get(f"/bookings/{case_id}")).status_code == 404, "never asked of the provider"
