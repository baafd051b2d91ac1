"""What the integration modules share: one service process per module, a collector that skips
the consumer-group join, builders of the events a service consumes, and reads of its tables."""

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from aiokafka.structs import RecordMetadata

from contracts.events import (
    EVIDENCE_TOPIC,
    ArrivalRejected,
    ArrivalVerified,
    RegistrationAccepted,
    RegistrationRejected,
    RegistrationSubmitted,
    StipendDisbursed,
    StipendFailed,
    StipendHeld,
    TravelBooked,
    TravelBookingFailed,
)
from services.runtime import crypto
from tests.conftest import Infra
from tests.support import Kafka, ServiceRunner, eventually

SUBMITTED = RegistrationSubmitted.TOPIC
ACCEPTED = RegistrationAccepted.TOPIC
REJECTED = RegistrationRejected.TOPIC
BOOKED = TravelBooked.TOPIC
BOOKING_FAILED = TravelBookingFailed.TOPIC
EVIDENCE = EVIDENCE_TOPIC
VERIFIED = ArrivalVerified.TOPIC
ARRIVAL_REJECTED = ArrivalRejected.TOPIC
HELD = StipendHeld.TOPIC
DISBURSED = StipendDisbursed.TOPIC
STIPEND_FAILED = StipendFailed.TOPIC

DESTINATION_COUNTRY = "HN"
MOBILE_MONEY = {"method": "mobile_money", "msisdn": "+50499887766", "provider": "tigo"}
BANK_ACCOUNT = {"method": "bank_account", "bank_code": "BAC", "account_number": "200012345", "account_name": "A Reyes"}


def start_service(name: str, infra: Infra, **extra_env: str) -> Iterator[ServiceRunner]:
    """Runs one service for the whole module; startup is slow (the tansu group join)."""
    runner = ServiceRunner(name, infra.env(**extra_env))
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


def logged_errors(runner: ServiceRunner) -> list[str]:
    """The service's error lines as "event: last line of the exception", to explain a timeout."""
    errors = []
    for line in runner.lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") == "error":
            exception = str(entry.get("exception", "")).strip().splitlines() or [""]
            errors.append(f"{entry.get('event')}: {exception[-1]}")
    return errors


Collector = Kafka
"""Kept as a name for the integration tier; `tests.support.Kafka` already reads without a group."""


async def publish(
    kafka: Kafka, topic: str, value: bytes | dict[str, Any], key: str, *, partition: int | None = None
) -> RecordMetadata:
    """Like `Kafka.send`, but says where the record landed (and can choose the partition)."""
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return await kafka.producer.send_and_wait(topic, raw, key=key.encode(), partition=partition)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def now() -> datetime:
    return datetime.now(UTC)


# What the services consume ---------------------------------------------------------------


def sealed_for(infra: Infra, case_id: UUID, *, payout: dict[str, Any] | None = None, given_name: str = "Ana") -> str:
    traveler = {
        "given_name": given_name,
        "family_name": "Reyes",
        "date_of_birth": "1991-03-14",
        "document": {"type": "passport", "number": "F1234567", "issuing_country": "HN", "expires_on": "2030-01-01"},
        "payout": payout or MOBILE_MONEY,
    }
    return crypto.seal(bytes.fromhex(infra.data_key), traveler, bound_to=str(case_id))


def accepted(
    infra: Infra,
    *,
    case_id: UUID | None = None,
    identity_key: str | None = None,
    payout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A registration.accepted.v1 payload as registration would emit it."""
    case_id = case_id or uuid4()
    return {
        "case_id": str(case_id),
        "application_id": str(uuid4()),
        "identity_key": identity_key or secrets.token_hex(32),
        "origin_airport": "IAH",
        "destination_country": DESTINATION_COUNTRY,
        "destination_airport": "TGU",
        "sealed": sealed_for(infra, case_id, payout=payout),
        "accepted_at": iso(now()),
    }


def booked(case_id: UUID, *, flight_number: str, departure: datetime, arrival: datetime) -> dict[str, Any]:
    return {
        "case_id": str(case_id),
        "booking_id": f"TEST-{uuid4().hex[:10].upper()}",
        "carrier": flight_number[:2],
        "flight_number": flight_number,
        "origin_airport": "IAH",
        "destination_airport": "TGU",
        "scheduled_departure": iso(departure),
        "scheduled_arrival": iso(arrival),
        "booked_at": iso(now()),
    }


def _evidence(case_id: UUID, source: str, observed_at: datetime, country: str, **fields: Any) -> dict[str, Any]:
    return {
        "evidence_id": str(uuid4()),
        "case_id": str(case_id),
        "source": source,
        "observed_at": iso(observed_at),
        "country": country,
        **fields,
    }


def app_check_in(
    case_id: UUID, *, observed_at: datetime, score: float, country: str = DESTINATION_COUNTRY
) -> dict[str, Any]:
    return _evidence(
        case_id, "participant_app", observed_at, country, identity_match_score=score, latitude=14.07, longitude=-87.19
    )


def carrier_record(
    case_id: UUID,
    *,
    observed_at: datetime,
    flight_number: str,
    status: str = "landed",
    country: str = DESTINATION_COUNTRY,
) -> dict[str, Any]:
    return _evidence(case_id, "carrier", observed_at, country, flight_number=flight_number, status=status)


def partner_office(
    case_id: UUID, *, observed_at: datetime, country: str = DESTINATION_COUNTRY, document_checked: bool = True
) -> dict[str, Any]:
    return _evidence(
        case_id,
        "partner_office",
        observed_at,
        country,
        office_code="TGU-01",
        officer_id="officer-7",
        document_checked=document_checked,
    )


def verified(case_id: UUID, *, evidence_ids: list[str] | None = None) -> dict[str, Any]:
    return {
        "case_id": str(case_id),
        "evidence_ids": evidence_ids or [str(uuid4())],
        "rule": "partner_office",
        "verified_at": iso(now()),
    }


# What the services wrote -------------------------------------------------------------------


async def processed(database: asyncpg.Connection, service: str, event_id: str) -> bool:
    """Whether the service's inbox holds the event, i.e. its transaction committed."""
    found = await database.fetchval(
        f"SELECT count(*) FROM {service}.processed_events WHERE consumer = $1 AND event_id = $2", service, event_id
    )
    return bool(found)


async def wait_until_processed(database: asyncpg.Connection, service: str, event_id: str) -> None:
    await eventually(lambda: processed(database, service, event_id), what=f"{service} to process event {event_id}")


async def outbox_count(database: asyncpg.Connection, service: str, topic: str, key: str) -> int:
    """How many events of `topic` the service ever committed for `key`: the source of truth for "exactly once"."""
    count: int = await database.fetchval(
        f"SELECT count(*) FROM {service}.outbox WHERE topic = $1 AND key = $2", topic, key
    )
    return count


async def wait_for_row(database: asyncpg.Connection, sql: str, *args: Any, what: str) -> None:
    await eventually(lambda: database.fetchval(sql, *args), what=what)
