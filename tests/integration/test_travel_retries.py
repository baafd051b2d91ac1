"""Travel against a provider that always fails: it retries with backoff, then gives up once.

A module of its own because the process needs other settings and shares the consumer group
"homeward-travel" with test_travel.py: module teardown stops that process before this one starts.
Joining the group again takes tansu about 18 s, hence `slow`. The unreadable-case test comes last:
until the bug it shows is fixed, that case stalls the booking worker for good.
"""

import json
from collections.abc import Iterator
from uuid import uuid4

import asyncpg
import httpx
import pytest

from tests.conftest import Infra
from tests.integration.helpers import (
    ACCEPTED,
    BOOKED,
    BOOKING_FAILED,
    Collector,
    accepted,
    logged_errors,
    outbox_count,
    sealed_for,
    start_service,
)
from tests.support import ServiceRunner, TravelSandbox, envelope, eventually, outbound_and_dlq_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("failing_travel")]

ATTEMPTS_MAX = 3
OUTCOME_WAIT_SECONDS = 20.0


@pytest.fixture(scope="module")
def failing_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TravelSandbox]:
    """A travel provider that answers every booking 503 and books nothing."""
    provider = TravelSandbox(tmp_path_factory.mktemp("failing-travel") / "travel.sqlite3",
                             HOMEWARD_SANDBOX_TRAVEL_FAILURE_RATE="1.0")  # fmt: skip
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def failing_travel(infra: Infra, failing_provider: TravelSandbox) -> Iterator[ServiceRunner]:
    yield from start_service(
        "travel",
        infra,
        HOMEWARD_TRAVEL_PROVIDER_URL=failing_provider.url,
        HOMEWARD_TRAVEL_PROVIDER_ATTEMPTS_MAX="1",
        HOMEWARD_BOOKING_ATTEMPTS_MAX=str(ATTEMPTS_MAX),
        HOMEWARD_BOOKING_BACKOFF_BASE_MS="10",
        HOMEWARD_BOOKING_BACKOFF_MAX_MS="50",
    )


async def test_booking_gives_up_after_the_configured_attempts(
    infra: Infra, database: asyncpg.Connection, failing_provider: TravelSandbox
):
    case_id = uuid4()
    sent = envelope(ACCEPTED, accepted(infra, case_id=case_id))
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        await kafka.send(ACCEPTED, sent, str(case_id))
        [event] = await eventually(
            lambda: kafka.events(BOOKING_FAILED, case_id=str(case_id)), what="travel.booking_failed.v1"
        )
        assert kafka.events(BOOKED, case_id=str(case_id)) == []

    assert event["source"] == "homeward/travel"
    assert event["subject"] == str(case_id)
    assert event["correlationid"] == sent["correlationid"]
    assert event["causationid"] == sent["id"]
    assert event["data"]["attempts"] == ATTEMPTS_MAX
    assert event["data"]["reason"] == "provider_failed"  # a code (the provider answered 503), never exception text
    row = await database.fetchrow("SELECT status, attempts FROM travel.bookings WHERE case_id = $1", case_id)
    assert (row["status"], row["attempts"]) == ("failed", ATTEMPTS_MAX)
    assert await outbox_count(database, "travel", BOOKING_FAILED, str(case_id)) == 1
    assert await outbox_count(database, "travel", BOOKED, str(case_id)) == 0
    assert ["booking.fault_injected"] * ATTEMPTS_MAX == [
        entry["event"]
        for entry in (json.loads(line) for line in failing_provider.lines if line.startswith("{"))
        if str(case_id) in (entry.get("keys") or [entry.get("key")])
    ]
    async with httpx.AsyncClient(base_url=failing_provider.url) as provider:
        assert (await provider.get(f"/bookings/{case_id}")).status_code == 404


async def test_a_case_whose_sealed_data_cannot_be_opened_does_not_stop_other_bookings(
    infra: Infra, failing_travel: ServiceRunner
):
    # Sealed for another case: authentic ciphertext that does not open under this case id.
    broken, healthy = uuid4(), uuid4()
    unreadable = {**accepted(infra, case_id=broken), "sealed": sealed_for(infra, uuid4())}
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        await kafka.send(ACCEPTED, envelope(ACCEPTED, unreadable), str(broken))
        await kafka.send(ACCEPTED, envelope(ACCEPTED, accepted(infra, case_id=healthy)), str(healthy))
        try:
            await eventually(
                lambda: kafka.events(BOOKING_FAILED, case_id=str(healthy)),
                timeout=OUTCOME_WAIT_SECONDS,
                what=f"{BOOKING_FAILED} for the healthy case",
            )
        except AssertionError as timeout:
            raise AssertionError(f"{timeout}; service errors: {logged_errors(failing_travel)[-2:]}") from None
        # The unreadable case cannot be booked either; it should fail alone, and say so.
        await eventually(
            lambda: kafka.events(BOOKING_FAILED, case_id=str(broken)),
            timeout=OUTCOME_WAIT_SECONDS,
            what=f"{BOOKING_FAILED} for the unreadable case",
        )
