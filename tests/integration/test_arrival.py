"""Arrival alone against the real broker and PostgreSQL: the v1 verification policy, in any order."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from tests.conftest import Infra
from tests.integration.helpers import (
    ACCEPTED,
    ARRIVAL_REJECTED,
    BOOKED,
    EVIDENCE,
    VERIFIED,
    Collector,
    accepted,
    app_check_in,
    booked,
    carrier_record,
    now,
    outbox_count,
    partner_office,
    publish,
    start_service,
    wait_for_row,
    wait_until_processed,
)
from tests.support import ServiceRunner, envelope, eventually, outbound_and_dlq_topics

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("arrival")]


@pytest.fixture(scope="module")
def arrival(infra: Infra) -> Iterator[ServiceRunner]:
    # The default sweep runs every 10 s; a fast one lets the window test finish in well under a second.
    yield from start_service("arrival", infra, HOMEWARD_ARRIVAL_SWEEP_INTERVAL_MS="200")


def collector(infra: Infra) -> Collector:
    return Collector(infra.kafka_bootstrap, outbound_and_dlq_topics())


@dataclass
class Case:
    """One synthetic case: its id, booked flight and the envelopes that opened it."""

    case_id: UUID
    flight_number: str
    departure: datetime
    arrival: datetime
    accepted: dict[str, Any]
    booked: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.case_id)


def new_case(infra: Infra, *, arrival: datetime | None = None) -> Case:
    case_id = uuid4()
    landing = arrival or now() - timedelta(minutes=1)
    departure = landing - timedelta(hours=3)
    flight_number = f"XH{uuid4().int % 9000 + 100}"
    return Case(
        case_id,
        flight_number,
        departure,
        landing,
        envelope(ACCEPTED, accepted(infra, case_id=case_id), source="homeward/registration"),
        envelope(
            BOOKED,
            booked(case_id, flight_number=flight_number, departure=departure, arrival=landing),
            source="homeward/travel",
        ),
    )


async def open_case(kafka: Collector, database: asyncpg.Connection, case: Case) -> None:
    """Publishes the accepted and booked events and waits until arrival knows both."""
    await kafka.send(ACCEPTED, case.accepted, case.key)
    await kafka.send(BOOKED, case.booked, case.key)
    for table in ("cases", "bookings"):
        await wait_for_row(
            database, f"SELECT count(*) FROM arrival.{table} WHERE case_id = $1", case.case_id, what=f"arrival.{table}"
        )


async def send_evidence(kafka: Collector, data: dict[str, Any], **options: Any) -> dict[str, Any]:
    sent = envelope(EVIDENCE, data, **options)
    await kafka.send(EVIDENCE, sent, data["case_id"])
    return sent


async def verification(kafka: Collector, case: Case) -> dict[str, Any]:
    [event] = await eventually(lambda: kafka.events(VERIFIED, case_id=case.key), what=f"{VERIFIED} for {case.key}")
    return event


async def test_landed_flight_and_app_check_in_verify_the_arrival(infra: Infra, database: asyncpg.Connection):
    case = new_case(infra)
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        landed = carrier_record(case.case_id, observed_at=now(), flight_number=case.flight_number)
        checked_in = app_check_in(case.case_id, observed_at=now(), score=0.92)
        await send_evidence(kafka, landed, source="carrier")
        last = await send_evidence(kafka, checked_in, source="participant-app")
        event = await verification(kafka, case)

    assert event["type"] == VERIFIED
    assert event["source"] == "homeward/arrival"
    assert event["subject"] == case.key
    assert event["causationid"] == last["id"]
    assert event["data"]["rule"] == "carrier_and_app"
    assert event["data"]["evidence_ids"] == [landed["evidence_id"], checked_in["evidence_id"]]
    outcome = await database.fetchrow("SELECT outcome, rule FROM arrival.outcomes WHERE case_id = $1", case.case_id)
    assert tuple(outcome) == ("verified", "carrier_and_app")


async def test_verification_keeps_the_case_correlation_not_the_evidence_producers(infra: Infra, database):
    case = new_case(infra)
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        office = partner_office(case.case_id, observed_at=now())
        sent = await send_evidence(kafka, office, correlationid=uuid4(), source="partner-office")
        event = await verification(kafka, case)

    assert sent["correlationid"] != case.accepted["correlationid"]
    assert event["correlationid"] == case.accepted["correlationid"]
    assert event["data"]["rule"] == "partner_office"
    assert event["data"]["evidence_ids"] == [office["evidence_id"]]


async def test_evidence_before_the_case_and_booking_counts_once_they_arrive(infra: Infra, database):
    case = new_case(infra)
    office = partner_office(case.case_id, observed_at=now())
    async with collector(infra) as kafka:
        early = await send_evidence(kafka, office)
        await wait_until_processed(database, "arrival", early["id"])
        await kafka.send(BOOKED, case.booked, case.key)
        await wait_until_processed(database, "arrival", case.booked["id"])
        assert await outbox_count(database, "arrival", VERIFIED, case.key) == 0
        await kafka.send(ACCEPTED, case.accepted, case.key)
        event = await verification(kafka, case)

    assert event["data"]["rule"] == "partner_office"
    assert event["data"]["evidence_ids"] == [office["evidence_id"]]
    assert event["correlationid"] == case.accepted["correlationid"]
    assert event["causationid"] == case.accepted["id"]


async def test_duplicate_evidence_counts_once_and_verifies_once(infra: Infra, database: asyncpg.Connection):
    case = new_case(infra)
    checked_in = app_check_in(case.case_id, observed_at=now(), score=0.95)
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        sent = envelope(EVIDENCE, checked_in)
        where = await publish(kafka, EVIDENCE, sent, case.key)
        await publish(kafka, EVIDENCE, sent, case.key, partition=where.partition)
        resent = envelope(EVIDENCE, checked_in)  # same evidence id, new envelope id
        await publish(kafka, EVIDENCE, resent, case.key, partition=where.partition)
        await wait_until_processed(database, "arrival", resent["id"])
        assert await outbox_count(database, "arrival", VERIFIED, case.key) == 0  # an app check-in alone proves nothing

        landed = carrier_record(case.case_id, observed_at=now(), flight_number=case.flight_number)
        await send_evidence(kafka, landed)
        event = await verification(kafka, case)
        # Every copy again after the verdict, then a marker on the same partition.
        await publish(kafka, EVIDENCE, sent, case.key, partition=where.partition)
        await publish(kafka, EVIDENCE, envelope(EVIDENCE, landed), case.key, partition=where.partition)
        marker = envelope(EVIDENCE, partner_office(uuid4(), observed_at=now()))
        await publish(kafka, EVIDENCE, marker, marker["data"]["case_id"], partition=where.partition)
        await wait_until_processed(database, "arrival", marker["id"])

        assert len(kafka.events(VERIFIED, case_id=case.key)) == 1
    assert event["data"]["evidence_ids"] == [landed["evidence_id"], checked_in["evidence_id"]]
    assert await outbox_count(database, "arrival", VERIFIED, case.key) == 1
    stored = await database.fetchval(
        "SELECT count(*) FROM arrival.evidence WHERE evidence_id = $1::uuid", checked_in["evidence_id"]
    )
    assert stored == 1


def _insufficient(case: Case) -> dict[str, list[dict[str, Any]]]:
    """Evidence that must not verify the case, by why not."""
    at = now()
    landed = carrier_record(case.case_id, observed_at=at, flight_number=case.flight_number)
    return {
        "app_score_below_threshold": [app_check_in(case.case_id, observed_at=at, score=0.5), landed],
        "carrier_only_boarded": [
            app_check_in(case.case_id, observed_at=at, score=0.9),
            carrier_record(case.case_id, observed_at=at, flight_number=case.flight_number, status="boarded"),
        ],
        "carrier_landed_another_flight": [
            app_check_in(case.case_id, observed_at=at, score=0.9),
            carrier_record(case.case_id, observed_at=at, flight_number="RT9"),
        ],
        "office_did_not_check_document": [partner_office(case.case_id, observed_at=at, document_checked=False)],
        "office_in_wrong_country": [partner_office(case.case_id, observed_at=at, country="GT")],
        "evidence_in_wrong_country": [app_check_in(case.case_id, observed_at=at, score=0.9, country="GT"), landed],
        "office_before_departure": [partner_office(case.case_id, observed_at=case.departure - timedelta(hours=1))],
        "office_in_the_future": [partner_office(case.case_id, observed_at=at + timedelta(hours=1))],
    }


@pytest.mark.parametrize(
    "why",
    [
        "app_score_below_threshold",
        "carrier_only_boarded",
        "carrier_landed_another_flight",
        "office_did_not_check_document",
        "office_in_wrong_country",
        "evidence_in_wrong_country",
        "office_before_departure",
        "office_in_the_future",
    ],
)
async def test_insufficient_evidence_does_not_verify(infra: Infra, database: asyncpg.Connection, why: str):
    case = new_case(infra)
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        for data in _insufficient(case)[why]:
            await send_evidence(kafka, data)
        # Same case, same partition, so this is evaluated after the evidence above: had that
        # evidence sufficed, the verdict would already name it.
        office = partner_office(case.case_id, observed_at=now())
        await send_evidence(kafka, office)
        event = await verification(kafka, case)

    assert event["data"]["rule"] == "partner_office"
    assert event["data"]["evidence_ids"] == [office["evidence_id"]]


async def test_case_not_verified_within_the_window_is_rejected(infra: Infra, database: asyncpg.Connection):
    case = new_case(infra, arrival=now() - timedelta(days=40))
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        [event] = await eventually(
            lambda: kafka.events(ARRIVAL_REJECTED, case_id=case.key), what=f"{ARRIVAL_REJECTED} for {case.key}"
        )
        # Evidence from inside the old window, received late, no longer changes the outcome.
        late = await send_evidence(kafka, partner_office(case.case_id, observed_at=case.arrival + timedelta(days=1)))
        await wait_until_processed(database, "arrival", late["id"])

    assert event["source"] == "homeward/arrival"
    assert event["subject"] == case.key
    assert event["data"]["reason"] == "verification_window_expired"
    assert event["correlationid"] == case.accepted["correlationid"]
    assert event["causationid"] == case.booked["id"]
    outcome = await database.fetchval("SELECT outcome FROM arrival.outcomes WHERE case_id = $1", case.case_id)
    assert outcome == "rejected"
    assert await outbox_count(database, "arrival", VERIFIED, case.key) == 0
    assert await outbox_count(database, "arrival", ARRIVAL_REJECTED, case.key) == 1


@pytest.mark.parametrize(
    ("why", "error_code"),
    [("not_json", "invalid_json"), ("score_above_one", "invalid_payload"), ("unknown_source", "invalid_payload")],
)
async def test_bad_evidence_is_dead_lettered_unchanged_and_consumption_goes_on(
    infra: Infra, database: asyncpg.Connection, why: str, error_code: str
):
    case = new_case(infra)
    broken = app_check_in(case.case_id, observed_at=now(), score=0.9)
    if why == "score_above_one":
        broken["identity_match_score"] = 1.5
    elif why == "unknown_source":
        broken["source"] = "neighbour"
    raw = b"{not json " + case.key.encode() if why == "not_json" else json.dumps(envelope(EVIDENCE, broken)).encode()
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        where = await publish(kafka, EVIDENCE, raw, case.key)
        office = partner_office(case.case_id, observed_at=now())
        await publish(kafka, EVIDENCE, envelope(EVIDENCE, office), case.key, partition=where.partition)
        event = await verification(kafka, case)
        [headers] = await eventually(
            lambda: [headers for headers, value in kafka.dead_letters(EVIDENCE) if value == raw], what="the DLQ copy"
        )

    assert event["data"]["evidence_ids"] == [office["evidence_id"]]
    assert headers["x-error-code"] == error_code
    assert headers["x-error-detail"]
    assert headers["x-original-topic"] == EVIDENCE
    assert headers["x-original-partition"] == str(where.partition)
    assert headers["x-original-offset"] == str(where.offset)
