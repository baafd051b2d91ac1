"""What the integration modules share: one service process per module, a collector that skips
the consumer-group join, builders of the events a service consumes, and reads of its tables."""

import asyncio
import json
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import psycopg
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
from services.disbursement import operations
from services.disbursement.adapters.provider import HttpPayoutProvider, Payout
from services.disbursement.app import queries
from services.runtime import casekeys, signing
from services.runtime.db import connect
from tests.conftest import Infra
from tests.support import (
    TEST_CHAIN,
    Kafka,
    ServiceRunner,
    envelope,
    eventually,
    evidence_headers,
    own_msisdn,
    register_test_signers_now,
)

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
    """Runs one service for the whole module; startup takes a couple of seconds (imports, the group join)."""
    # Logged in as its own role, as under `homeward up`; the session migrated every schema.
    runner = ServiceRunner(name, infra.service_env(name, **extra_env))
    runner.start()
    if name == "arrival":
        # Evidence must be signed (contract v1.1).
        register_test_signers_now(infra.database_url)
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
    headers = evidence_headers(topic, raw)
    return await kafka.producer.send_and_wait(topic, raw, key=key.encode(), partition=partition, headers=headers)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def now() -> datetime:
    return datetime.now(UTC)


# What the services consume ---------------------------------------------------------------


def sealed_for(infra: Infra, case_id: UUID, *, payout: dict[str, Any] | None = None, given_name: str = "Ana") -> str:
    """`sealed` as registration seals it: the traveler part for travel, the payout part for disbursement."""
    name = {"given_name": given_name, "family_name": "Reyes"}
    document = {"type": "passport", "number": "F1234567", "issuing_country": "HN", "expires_on": "2030-01-01"}
    contents = {
        casekeys.TRAVELER: {**name, "date_of_birth": "1991-03-14", "document": document},
        casekeys.PAYOUT: {**name, "payout": payout or MOBILE_MONEY},
    }
    readers = {casekeys.TRAVELER: infra.keyring("travel"), casekeys.PAYOUT: infra.keyring("disbursement")}
    return casekeys.seal_case(readers, contents, case_id=str(case_id))


def own_wallet() -> dict[str, Any]:
    """A mobile wallet no other case uses: a case paid to another identity's wallet is held for
    review (contract v1.1, `instrument_shared`)."""
    return {**MOBILE_MONEY, "msisdn": own_msisdn()}


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
        "sealed": sealed_for(infra, case_id, payout=payout or own_wallet()),
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
        f"SELECT count(*) FROM {service}.processed_events WHERE event_id = $1::uuid", event_id
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


async def until_waiting_on_a_lock(pool: asyncpg.Pool, what: str) -> None:
    """Until some session of this database waits for a heavyweight lock (a row or advisory lock)."""
    await eventually(
        lambda: pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ),
        what=what,
    )


# Disbursement: its ledger, the payout provider, signed callbacks ----------------------------

PROVIDER_TIMEOUT_SECONDS = 30.0
PROVIDER_ATTEMPTS_MAX = 3
PROVIDER_BACKOFF_SECONDS = 0.05


def new_database(infra: Infra, prefix: str) -> str:
    """A fresh, empty database on the session's server; a service migrates it on its first start."""
    name = f"{prefix}_{uuid4().hex[:8]}"
    with psycopg.connect(infra.database_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return infra.database_url.rsplit("/", 1)[0] + f"/{name}"


@asynccontextmanager
async def ledger_connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection that sees disbursement's schema, as `homeward ledger` opens it."""
    connection = await connect(database_url, schema="disbursement")
    try:
        yield connection
    finally:
        await connection.close()


def payout_provider(url: str) -> HttpPayoutProvider:
    return HttpPayoutProvider(
        url,
        timeout_seconds=PROVIDER_TIMEOUT_SECONDS,
        attempts_max=PROVIDER_ATTEMPTS_MAX,
        backoff_initial_seconds=PROVIDER_BACKOFF_SECONDS,
    )


async def provider_payouts(url: str) -> list[Payout]:
    """Every payout the provider ever made, from its own list (GET /payouts)."""
    provider = payout_provider(url)
    try:
        return await provider.list_payouts()
    finally:
        await provider.close()


async def provider_payout(url: str, key: str) -> dict[str, Any] | None:
    """GET /payouts/{key}: the provider's record of one payout, or None."""
    async with httpx.AsyncClient(base_url=url, timeout=PROVIDER_TIMEOUT_SECONDS) as client:
        response = await client.get(f"/payouts/{key}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


async def ledger_breaches(database_url: str, payouts_url: str) -> list[str]:
    """`operations.verify` against the provider's list: an empty list means the ledger is sound."""
    # The provider's list first, then one snapshot of the ledger: a stipend is posted only after the
    # provider has answered, so everything posted in the snapshot is already in the list, and the
    # balances and the journal are read at the same instant while the service keeps paying.
    payouts = await provider_payouts(payouts_url)
    async with ledger_connection(database_url) as connection, snapshot(connection):
        return await operations.verify(connection, queries(TEST_CHAIN), payouts)


async def reconciliation(database_url: str, payouts_url: str) -> operations.Reconciliation:
    payouts = await provider_payouts(payouts_url)
    async with ledger_connection(database_url) as connection, snapshot(connection):
        return await operations.reconcile(connection, queries(), payouts)


def snapshot(connection: asyncpg.Connection) -> Any:
    return connection.transaction(isolation="repeatable_read", readonly=True)


async def account(connection: asyncpg.Connection, code: str) -> operations.Balance:
    [found] = [balance for balance in await operations.balances(connection, queries()) if balance.code == code]
    return found


async def send_pair(kafka: Kafka, infra: Infra, case_id: UUID, **accepted_fields: Any) -> dict[str, Any]:
    """Publishes registration.accepted then arrival.verified for a case; returns the verified envelope."""
    proven = envelope(VERIFIED, verified(case_id))
    await kafka.send(ACCEPTED, envelope(ACCEPTED, accepted(infra, case_id=case_id, **accepted_fields)), str(case_id))
    await kafka.send(VERIFIED, proven, str(case_id))
    return proven


def signed_headers(secret: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """The headers the payout provider signs a callback with (HMAC-SHA256 over `ts.` + body)."""
    moment = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        signing.TIMESTAMP_HEADER: str(moment),
        signing.SIGNATURE_HEADER: signing.sign(secret.encode(), moment, body),
    }


class Outcomes:
    """What disbursement said about a set of cases, read incrementally from a collector: cheap to poll
    while thousands of events arrive (Kafka.events parses everything it holds on every call)."""

    TOPICS = (DISBURSED, STIPEND_FAILED, HELD)

    def __init__(self, kafka: Kafka, cases: Iterable[UUID]) -> None:
        self.kafka = kafka
        self.cases = {str(case_id) for case_id in cases}
        self.seen: dict[str, dict[str, list[dict[str, Any]]]] = {topic: defaultdict(list) for topic in self.TOPICS}
        self._read = 0

    def refresh(self) -> "Outcomes":
        received = self.kafka.received
        for topic, _, value in received[self._read : len(received)]:
            if topic in self.seen:
                document = json.loads(value)
                case_id = str(document["data"].get("case_id"))
                if case_id in self.cases:
                    self.seen[topic][case_id].append(document)
        self._read = len(received)
        return self

    def decided(self) -> int:
        """Cases that were either paid or failed."""
        self.refresh()
        return len(set(self.seen[DISBURSED]) | set(self.seen[STIPEND_FAILED]))

    def of(self, topic: str) -> dict[str, list[dict[str, Any]]]:
        return self.refresh().seen[topic]


async def publish_all(kafka: Kafka, messages: list[tuple[str, dict[str, Any], str]]) -> None:
    """Publishes many records at once and waits for every acknowledgement; each key keeps its order."""
    raws = [(topic, json.dumps(value).encode(), key) for topic, value, key in messages]
    sent = [
        await kafka.producer.send(topic, raw, key=key.encode(), headers=evidence_headers(topic, raw))
        for topic, raw, key in raws
    ]
    await asyncio.gather(*sent)


def pair(infra: Infra, case_id: UUID, **accepted_fields: Any) -> list[tuple[str, dict[str, Any], str]]:
    """The accepted and verified records of one case, for `publish_all`."""
    return [
        (ACCEPTED, envelope(ACCEPTED, accepted(infra, case_id=case_id, **accepted_fields)), str(case_id)),
        (VERIFIED, envelope(VERIFIED, verified(case_id)), str(case_id)),
    ]
