"""Contract v1.1 withdrawal and departure attestation, decided by arrival, against the real broker
and PostgreSQL: every rule, each refusal, a resent request, the out-of-order cases, and the race
between a withdrawal and the verification of one case (two arrival replicas, many cases)."""

import asyncio
import base64
import json
import os
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from contracts import attestation
from contracts.events import ArrivalAttested, CaseWithdrawn, WithdrawalRefused, WithdrawalRequested
from tests.conftest import Infra
from tests.integration.helpers import (
    ACCEPTED,
    BOOKED,
    DISBURSED,
    EVIDENCE,
    VERIFIED,
    Collector,
    accepted,
    booked,
    iso,
    now,
    partner_office,
    start_service,
    wait_for_row,
    wait_until_processed,
)
from tests.support import TEST_ATTESTATION_KEYS, ServiceRunner, envelope, eventually, outbound_and_dlq_topics

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("arrival")]

REQUESTED, WITHDRAWN, REFUSED = WithdrawalRequested.TOPIC, CaseWithdrawn.TOPIC, WithdrawalRefused.TOPIC
ATTESTED = ArrivalAttested.TOPIC
CASE_WAIT_SECONDS = 2
RACE_CASES = int(os.environ.get("HOMEWARD_TEST_RACE_CASES", "200"))
"""Cases whose withdrawal races their verification, across two arrival replicas (more: set the variable)."""


@pytest.fixture(scope="module")
def arrival(infra: Infra) -> Iterator[ServiceRunner]:
    yield from start_service(
        "arrival", infra, HOMEWARD_ARRIVAL_SWEEP_INTERVAL_MS="200",
        HOMEWARD_WITHDRAWAL_CASE_WAIT_SECONDS=str(CASE_WAIT_SECONDS),
    )  # fmt: skip


def collector(infra: Infra) -> Collector:
    return Collector(infra.kafka_bootstrap, outbound_and_dlq_topics())


def request(case_id: UUID, *, request_id: UUID | None = None) -> dict[str, Any]:
    return envelope(REQUESTED, {
        "request_id": str(request_id or uuid4()), "case_id": str(case_id), "requested_at": iso(now()),
        "channel": "participant_app", "reason": "changed_mind",
    }, source="participant-app")  # fmt: skip


async def open_case(
    kafka: Collector, infra: Infra, *, departs_in: timedelta | None, lands_after: timedelta = timedelta(hours=3)
) -> tuple[UUID, dict[str, Any]]:
    """A case arrival knows, booked on a flight leaving `departs_in` from now (None: not booked)."""
    case_id = uuid4()
    data = accepted(infra, case_id=case_id)
    await kafka.send(ACCEPTED, envelope(ACCEPTED, data, source="homeward/registration"), str(case_id))
    if departs_in is not None:
        departure = now() + departs_in
        flight = booked(case_id, flight_number="XH123", departure=departure, arrival=departure + lands_after)
        await kafka.send(BOOKED, envelope(BOOKED, flight, source="homeward/travel"), str(case_id))
    return case_id, data


async def known(database: asyncpg.Connection, case_id: UUID, *, booked_too: bool) -> None:
    for table in ("cases", "bookings") if booked_too else ("cases",):
        await wait_for_row(database, f"SELECT count(*) FROM arrival.{table} WHERE case_id = $1", case_id,
                           what=f"arrival.{table}")  # fmt: skip


async def answer(kafka: Collector, case_id: UUID, count: int = 1) -> list[dict[str, Any]]:
    def answers() -> list[dict[str, Any]] | None:
        found = kafka.events(WITHDRAWN, case_id=str(case_id)) + kafka.events(REFUSED, case_id=str(case_id))
        return found if len(found) >= count else None

    return await eventually(answers, what=f"{count} answer(s) to the withdrawal of {case_id}")


async def verify_by_office(kafka: Collector, case_id: UUID) -> dict[str, Any]:
    office = envelope(EVIDENCE, partner_office(case_id, observed_at=now()), source="partner-office")
    await kafka.send(EVIDENCE, office, str(case_id))
    return office


# The rules ---------------------------------------------------------------------------------------


async def test_a_request_before_any_booking_withdraws_and_later_evidence_never_counts(infra: Infra, database):
    async with collector(infra) as kafka:
        case_id, _ = await open_case(kafka, infra, departs_in=None)
        await known(database, case_id, booked_too=False)
        sent = request(case_id)
        await kafka.send(REQUESTED, sent, str(case_id))
        [withdrawn] = await answer(kafka, case_id)
        # Booked later all the same, then evidence that would verify it: nothing counts any more.
        departure = now() - timedelta(hours=1)
        flight = booked(case_id, flight_number="XH123", departure=departure, arrival=departure + timedelta(minutes=30))
        await kafka.send(BOOKED, envelope(BOOKED, flight, source="homeward/travel"), str(case_id))
        office = await verify_by_office(kafka, case_id)
        await wait_until_processed(database, "arrival", office["id"])

        assert kafka.events(VERIFIED, case_id=str(case_id)) == []
        assert kafka.events(ATTESTED, case_id=str(case_id)) == []
    assert withdrawn["type"] == WITHDRAWN and withdrawn["causationid"] == sent["id"]
    assert withdrawn["data"]["request_id"] == sent["data"]["request_id"]
    assert withdrawn["data"]["booking_cancelled"] is False
    assert await database.fetchval("SELECT outcome FROM arrival.outcomes WHERE case_id = $1", case_id) == "withdrawn"


async def test_a_request_before_departure_withdraws_a_booked_case(infra: Infra, database):
    async with collector(infra) as kafka:
        case_id, _ = await open_case(kafka, infra, departs_in=timedelta(days=2))
        await known(database, case_id, booked_too=True)
        await kafka.send(REQUESTED, request(case_id), str(case_id))
        [withdrawn] = await answer(kafka, case_id)
    assert withdrawn["type"] == WITHDRAWN and withdrawn["data"]["booking_cancelled"] is True


async def test_a_request_after_departure_is_refused_and_the_case_goes_on(infra: Infra, database):
    async with collector(infra) as kafka:
        case_id, _ = await open_case(kafka, infra, departs_in=-timedelta(hours=2))
        await known(database, case_id, booked_too=True)
        await kafka.send(REQUESTED, request(case_id), str(case_id))
        [refused] = await answer(kafka, case_id)
        await verify_by_office(kafka, case_id)
        await eventually(lambda: kafka.events(VERIFIED, case_id=str(case_id)), what="the verification")
    assert refused["type"] == REFUSED and refused["data"]["reason"] == "already_departed"


async def test_after_verification_already_departed_and_after_payment_already_paid(infra: Infra, database):
    async with collector(infra) as kafka:
        case_id, _ = await open_case(kafka, infra, departs_in=-timedelta(hours=2))
        await known(database, case_id, booked_too=True)
        await verify_by_office(kafka, case_id)
        await eventually(lambda: kafka.events(VERIFIED, case_id=str(case_id)), what="the verification")
        await kafka.send(REQUESTED, request(case_id), str(case_id))
        [first] = await answer(kafka, case_id)
        paid = envelope(DISBURSED, {
            "case_id": str(case_id), "payment_id": str(uuid4()), "amount": "1000.00", "currency": "USD",
            "method": "mobile_money", "provider_ref": "sandbox-1", "disbursed_at": iso(now()),
        }, source="homeward/disbursement")  # fmt: skip
        await kafka.send(DISBURSED, paid, str(case_id))
        await wait_until_processed(database, "arrival", paid["id"])
        await kafka.send(REQUESTED, request(case_id), str(case_id))
        answers = await answer(kafka, case_id, count=2)
    assert first["data"]["reason"] == "already_departed"
    assert [event["data"]["reason"] for event in answers] == ["already_departed", "already_paid"]


async def test_an_unknown_case_is_refused_after_waiting_for_it(infra: Infra, database):
    case_id = uuid4()
    async with collector(infra) as kafka:
        await kafka.send(REQUESTED, request(case_id), str(case_id))
        [refused] = await answer(kafka, case_id)
    assert refused["type"] == REFUSED and refused["data"]["reason"] == "unknown_case"


async def test_a_request_before_its_case_is_known_waits_for_it(infra: Infra, database):
    case_id = uuid4()
    async with collector(infra) as kafka:
        sent = request(case_id)
        await kafka.send(REQUESTED, sent, str(case_id))
        await wait_until_processed(database, "arrival", sent["id"])
        opened = envelope(ACCEPTED, accepted(infra, case_id=case_id), source="homeward/registration")
        await kafka.send(ACCEPTED, opened, str(case_id))
        [withdrawn] = await answer(kafka, case_id)
    assert withdrawn["type"] == WITHDRAWN, "decided once the case was known, within the wait"
    assert withdrawn["correlationid"] == opened["correlationid"], "the case's correlation, not the request's"


async def test_a_resent_request_is_answered_as_the_first_and_decided_once(infra: Infra, database):
    async with collector(infra) as kafka:
        case_id, _ = await open_case(kafka, infra, departs_in=timedelta(days=1))
        await known(database, case_id, booked_too=True)
        sent = request(case_id)
        again = {**sent, "id": str(uuid4())}  # the same request id in a new envelope
        await kafka.send(REQUESTED, sent, str(case_id))
        await answer(kafka, case_id)
        await kafka.send(REQUESTED, sent, str(case_id))  # the same envelope: a duplicate, dropped
        await kafka.send(REQUESTED, again, str(case_id))
        answers = await answer(kafka, case_id, count=2)
        await wait_until_processed(database, "arrival", again["id"])
    assert [event["type"] for event in answers] == [WITHDRAWN, WITHDRAWN]
    assert {event["data"]["request_id"] for event in answers} == {sent["data"]["request_id"]}
    assert {event["data"]["withdrawn_at"] for event in answers} == {answers[0]["data"]["withdrawn_at"]}
    rows = await database.fetchval("SELECT count(*) FROM arrival.withdrawal_requests WHERE case_id = $1", case_id)
    assert rows == 1


async def test_a_malformed_request_is_dead_lettered(infra: Infra, database):
    case_id = uuid4()
    bad = request(case_id)
    bad["data"]["reason"] = "bored"
    raw = json.dumps(bad).encode()
    async with collector(infra) as kafka:
        await kafka.send(REQUESTED, raw, str(case_id))
        [(headers, _)] = await eventually(
            lambda: [letter for letter in kafka.dead_letters(REQUESTED) if letter[1] == raw], what="the dead letter"
        )
    assert headers["x-error-code"] == "invalid_payload" and "reason" in headers["x-error-detail"]


# Departure attestation ---------------------------------------------------------------------------


async def test_a_verified_case_gets_one_attestation_that_verifies_offline(infra: Infra, database):
    async with collector(infra) as kafka:
        departure = now() - timedelta(hours=2)
        case_id, data = await open_case(kafka, infra, departs_in=departure - now())
        await known(database, case_id, booked_too=True)
        office = await verify_by_office(kafka, case_id)
        await kafka.send(EVIDENCE, {**office, "id": str(uuid4())}, str(case_id))  # the same evidence again
        [verified] = await eventually(lambda: kafka.events(VERIFIED, case_id=str(case_id)), what="verified")
        [attested] = await eventually(lambda: kafka.events(ATTESTED, case_id=str(case_id)), what="attested")
    claims = attestation.verify(attested["data"]["attestation"], attestation.public_key_set(TEST_ATTESTATION_KEYS))
    assert attested["causationid"] == verified["id"]
    assert attested["data"]["key_id"] == attestation.Signer(TEST_ATTESTATION_KEYS).key_id
    assert claims.case_id == case_id and claims.identity_key == data["identity_key"]
    assert claims.destination_country == data["destination_country"] and claims.rule == "partner_office"
    assert claims.departed_on == departure.date()
    token = attested["data"]["attestation"]
    payload = base64.urlsafe_b64decode(token.split(".")[1] + "==").decode()
    assert set(json.loads(payload)) == {"case_id", "identity_key", "destination_country", "departed_on",
                                        "verified_at", "rule"}  # fmt: skip
    for personal in ("Ana", "Reyes", "F1234567", "+504"):
        assert personal not in payload
    assert await database.fetchval("SELECT count(*) FROM arrival.attestations WHERE case_id = $1", case_id) == 1


# The race --------------------------------------------------------------------------------------


async def test_withdrawal_racing_verification_never_both(infra: Infra, database):
    """Each case gets, at the same moment, the evidence that verifies it and a withdrawal; a second
    arrival replica shares the partitions, so the two land in different processes. Exactly one
    outcome holds per case: verified (attested, the withdrawal refused) or withdrawn (never
    verified, never attested)."""
    second = ServiceRunner("arrival", infra.service_env("arrival", HOMEWARD_WITHDRAWAL_CASE_WAIT_SECONDS="60"))
    second.start()
    try:
        async with collector(infra) as kafka:
            # Flights leaving in two minutes: the withdrawal is in time, and evidence observed a minute
            # and a half after departure already counts (it is within the policy's five minutes ahead).
            departs_in = timedelta(minutes=2)
            cases = [await open_case(kafka, infra, departs_in=departs_in, lands_after=timedelta(minutes=1))
                     for _ in range(RACE_CASES)]  # fmt: skip
            for case_id, _ in cases:
                await known(database, case_id, booked_too=True)
            seen = now() + departs_in + timedelta(seconds=90)
            office = [partner_office(case_id, observed_at=seen) for case_id, _ in cases]
            sends = []
            for position, ((case_id, _), evidence) in enumerate(zip(cases, office, strict=True)):
                pair = [kafka.send(EVIDENCE, envelope(EVIDENCE, evidence, source="partner-office"), str(case_id)),
                        kafka.send(REQUESTED, request(case_id), str(case_id))]  # fmt: skip
                sends += pair if position % 2 else pair[::-1]  # either one sent first, in turn
            await asyncio.gather(*sends)
            for case_id, _ in cases:
                await answer(kafka, case_id)
            outcomes = {row["case_id"]: row["outcome"] for row in await database.fetch(
                "SELECT case_id, outcome FROM arrival.outcomes WHERE case_id = ANY($1)", [c for c, _ in cases]
            )}  # fmt: skip
            # What arrival wrote is the whole story: a withdrawn case has no verification nor
            # attestation in its outbox (they would be in the verdict's own transaction).
            withdrawn_cases = [case_id for case_id, outcome in outcomes.items() if outcome == "withdrawn"]
            emitted = await database.fetchval(
                "SELECT count(*) FROM arrival.outbox WHERE key = ANY($1) AND topic = ANY($2)",
                [str(case_id) for case_id in withdrawn_cases],
                [VERIFIED, ATTESTED],
            )
            kept = await database.fetchval(
                "SELECT count(*) FROM arrival.attestations WHERE case_id = ANY($1)", withdrawn_cases
            )
            assert (emitted, kept) == (0, 0)
            for case_id, outcome in outcomes.items():  # a verdict's two events are on the broker too
                if outcome == "verified":
                    await eventually(
                        lambda key=str(case_id): (
                            kafka.events(VERIFIED, case_id=key) and kafka.events(ATTESTED, case_id=key)
                        ),
                        what=f"the verification and attestation of {case_id}",
                    )
            for case_id, _ in cases:
                key = str(case_id)
                verified, attested = kafka.events(VERIFIED, case_id=key), kafka.events(ATTESTED, case_id=key)
                withdrawn, refused = kafka.events(WITHDRAWN, case_id=key), kafka.events(REFUSED, case_id=key)
                if outcomes[case_id] == "withdrawn":
                    assert (len(withdrawn), verified, attested, refused) == (1, [], [], []), key
                else:
                    assert outcomes[case_id] == "verified", key
                    assert (len(verified), len(attested), withdrawn) == (1, 1, []), key
                    assert [event["data"]["reason"] for event in refused] == ["already_departed"], key
    finally:
        second.stop()
    counted = Counter(outcomes.values())
    assert set(counted) <= {"verified", "withdrawn"} and counted.total() == RACE_CASES
    print(f"race of {RACE_CASES} cases: {dict(counted)}")  # shown with -s: how the races fell
