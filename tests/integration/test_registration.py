"""Registration alone against the real broker and PostgreSQL: outcomes, duplicates, bad input, PII at rest."""

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from contracts.events import CaseWithdrawn
from services.runtime import casekeys, crypto
from tests.conftest import Infra
from tests.integration.helpers import (
    ACCEPTED,
    REJECTED,
    SUBMITTED,
    Collector,
    now,
    outbox_count,
    publish,
    start_service,
)
from tests.support import ServiceRunner, envelope, eventually, outbound_and_dlq_topics, submission

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("registration")]


@pytest.fixture(scope="module")
def registration(infra: Infra) -> Iterator[ServiceRunner]:
    yield from start_service("registration", infra)


def collector(infra: Infra) -> Collector:
    return Collector(infra.kafka_bootstrap, outbound_and_dlq_topics())


async def outcome(kafka: Collector, topic: str, application_id: str, count: int = 1) -> list[dict[str, Any]]:
    """Waits until `count` events of `topic` answered the application, and returns them."""
    return await eventually(
        lambda: (found := kafka.events(topic, application_id=application_id)) and len(found) >= count and found,
        what=f"{count} x {topic} for application {application_id}",
    )


async def test_valid_submission_opens_a_case_with_a_traceable_envelope(infra: Infra, database: asyncpg.Connection):
    data = submission(payout={"method": "bank_account", "bank_code": "BAC", "account_number": "1", "account_name": "A"})
    sent = envelope(SUBMITTED, data, source="participant-app")
    async with collector(infra) as kafka:
        await kafka.send(SUBMITTED, sent, data["application_id"])
        [event] = await outcome(kafka, ACCEPTED, data["application_id"])

    case_id = event["data"]["case_id"]
    assert event["specversion"] == "1.0"
    assert event["type"] == ACCEPTED
    assert event["source"] == "homeward/registration"
    assert event["subject"] == case_id
    assert event["correlationid"] == sent["correlationid"]
    assert event["causationid"] == sent["id"]
    assert event["id"] != sent["id"]
    assert event["datacontenttype"] == "application/json"
    payload = event["data"]
    assert payload["application_id"] == data["application_id"]
    assert re.fullmatch(r"[0-9a-f]{64}", payload["identity_key"])
    assert (payload["origin_airport"], payload["destination_country"], payload["destination_airport"]) == (
        "IAH",
        "HN",
        "TGU",
    )
    # One part per reader, each opened by that reader's key alone.
    traveler = casekeys.take(payload["sealed"], casekeys.TRAVELER)
    payout = casekeys.take(payload["sealed"], casekeys.PAYOUT)
    opened = casekeys.open_taken(infra.keyring("travel"), traveler, case_id=case_id, purpose=casekeys.TRAVELER)
    assert opened == {
        "given_name": "Ana",
        "family_name": "Reyes",
        "date_of_birth": "1991-03-14",
        "document": data["identity_document"],
    }
    opened = casekeys.open_taken(infra.keyring("disbursement"), payout, case_id=case_id, purpose=casekeys.PAYOUT)
    assert opened == {"given_name": "Ana", "family_name": "Reyes", "payout": data["payout"]}
    for keyring, part, purpose in (
        (infra.keyring("travel"), payout, casekeys.PAYOUT),
        (infra.keyring("disbursement"), traveler, casekeys.TRAVELER),
    ):
        with pytest.raises(crypto.UNSEAL_ERRORS):
            casekeys.open_taken(keyring, part, case_id=case_id, purpose=purpose)
    row = await database.fetchrow("SELECT * FROM registration.cases WHERE case_id = $1::uuid", case_id)
    assert str(row["application_id"]) == data["application_id"]
    assert row["identity_key"] == payload["identity_key"]
    # The consent the case was opened under, kept apart from the sealed data (which erasure removes).
    assert row["consent_version"] == data["consent"]["version"]
    assert row["consented_at"] == datetime.fromisoformat(data["submitted_at"])


def _years_ago(years: int) -> str:
    return (now() - timedelta(days=365 * years)).date().isoformat()


INELIGIBLE = {
    "consent_missing": ({"consent__data_processing": False}, "consent.data_processing"),
    "ineligible_age": ({"person__date_of_birth": _years_ago(17)}, "person.date_of_birth"),
    "ineligible_destination": ({"destination__country": "US"}, "destination.country"),
    "document_expired": (
        {"identity_document__expires_on": (now() - timedelta(days=1)).date().isoformat()},
        "identity_document.expires_on",
    ),
}


@pytest.mark.parametrize("code", list(INELIGIBLE))
async def test_each_eligibility_rule_rejects_with_its_code(infra: Infra, database: asyncpg.Connection, code: str):
    overrides, field = INELIGIBLE[code]
    data = submission(**overrides)
    sent = envelope(SUBMITTED, data)
    async with collector(infra) as kafka:
        await kafka.send(SUBMITTED, sent, data["application_id"])
        [event] = await outcome(kafka, REJECTED, data["application_id"])

    assert event["type"] == REJECTED
    assert event["source"] == "homeward/registration"
    assert event["subject"] == data["application_id"]
    assert event["correlationid"] == sent["correlationid"]
    assert event["causationid"] == sent["id"]
    reasons = event["data"]["reasons"]
    assert [(reason["code"], reason["field"]) for reason in reasons] == [(code, field)]
    assert reasons[0]["message"]
    assert event["data"]["duplicate_of_case_id"] is None
    opened = await database.fetchval(
        "SELECT count(*) FROM registration.cases WHERE application_id = $1::uuid", data["application_id"]
    )
    assert opened == 0


async def test_same_document_written_differently_is_a_duplicate_of_the_first_case(infra: Infra):
    number = uuid4().hex[:8].upper()
    first = submission(identity_document__number=f"{number[0]} {number[1:4]}-{number[4:]}")
    second = submission(identity_document__number=number.lower())
    other_type = submission(identity_document__number=number, identity_document__type="national_id")
    other_country = submission(identity_document__number=number, identity_document__issuing_country="GT")
    async with collector(infra) as kafka:
        await kafka.send(SUBMITTED, envelope(SUBMITTED, first), first["application_id"])
        [opened] = await outcome(kafka, ACCEPTED, first["application_id"])
        for data in (second, other_type, other_country):
            await kafka.send(SUBMITTED, envelope(SUBMITTED, data), data["application_id"])
        [duplicate] = await outcome(kafka, REJECTED, second["application_id"])
        [by_type] = await outcome(kafka, ACCEPTED, other_type["application_id"])
        [by_country] = await outcome(kafka, ACCEPTED, other_country["application_id"])

    assert [reason["code"] for reason in duplicate["data"]["reasons"]] == ["duplicate_registration"]
    assert duplicate["data"]["duplicate_of_case_id"] == opened["data"]["case_id"]
    # Type and issuing country are part of the document's identity: these are other people.
    identity_keys = {event["data"]["identity_key"] for event in (opened, by_type, by_country)}
    assert len(identity_keys) == 3


async def test_the_same_envelope_delivered_again_has_exactly_one_outcome(infra: Infra, database: asyncpg.Connection):
    data = submission()
    sent = envelope(SUBMITTED, data)
    key = data["application_id"]
    async with collector(infra) as kafka:
        # Twice back to back (likely one batch), and once more after the outcome (a later transaction).
        where = await publish(kafka, SUBMITTED, sent, key)
        await publish(kafka, SUBMITTED, sent, key, partition=where.partition)
        [event] = await outcome(kafka, ACCEPTED, key)
        await publish(kafka, SUBMITTED, sent, key, partition=where.partition)
        # A marker behind the copies on the same partition: once it is answered, the copies were consumed.
        marker = submission()
        await publish(
            kafka, SUBMITTED, envelope(SUBMITTED, marker), marker["application_id"], partition=where.partition
        )
        await outcome(kafka, ACCEPTED, marker["application_id"])

        assert len(kafka.events(ACCEPTED, application_id=key)) == 1
    case_id = event["data"]["case_id"]
    assert await outbox_count(database, "registration", ACCEPTED, case_id) == 1
    assert await database.fetchval("SELECT count(*) FROM registration.cases WHERE application_id = $1::uuid", key) == 1


async def test_resubmitted_application_gets_its_first_outcome_again(infra: Infra, database: asyncpg.Connection):
    data = submission()
    first = envelope(SUBMITTED, data)
    retry = envelope(SUBMITTED, data)  # a new envelope id and its own correlation id
    async with collector(infra) as kafka:
        await kafka.send(SUBMITTED, first, data["application_id"])
        await outcome(kafka, ACCEPTED, data["application_id"])
        await kafka.send(SUBMITTED, retry, data["application_id"])
        original, repeated = await outcome(kafka, ACCEPTED, data["application_id"], count=2)

    assert repeated["data"]["case_id"] == original["data"]["case_id"]
    assert repeated["data"]["identity_key"] == original["data"]["identity_key"]
    assert repeated["correlationid"] == first["correlationid"]
    assert repeated["causationid"] == retry["id"]
    opened = await database.fetchval(
        "SELECT count(*) FROM registration.cases WHERE application_id = $1::uuid", data["application_id"]
    )
    assert opened == 1


async def test_resubmission_of_a_rejected_application_repeats_the_rejection(infra: Infra):
    refused = submission(consent__data_processing=False)
    corrected = {**refused, "consent": {"data_processing": True, "version": "2025-05"}}
    async with collector(infra) as kafka:
        await kafka.send(SUBMITTED, envelope(SUBMITTED, refused), refused["application_id"])
        await outcome(kafka, REJECTED, refused["application_id"])
        await kafka.send(SUBMITTED, envelope(SUBMITTED, corrected), refused["application_id"])
        rejections = await outcome(kafka, REJECTED, refused["application_id"], count=2)

        assert kafka.events(ACCEPTED, application_id=refused["application_id"]) == []
    assert [[reason["code"] for reason in event["data"]["reasons"]] for event in rejections] == [
        ["consent_missing"]
    ] * 2


def _dead_letter_headers(kafka: Collector, raw: bytes) -> list[dict[str, str]]:
    return [headers for headers, value in kafka.dead_letters(SUBMITTED) if value == raw]


async def test_unparseable_bytes_are_dead_lettered_unchanged_and_consumption_goes_on(infra: Infra):
    raw = b"\xff\xfe not json " + uuid4().hex.encode()
    after = submission()
    async with collector(infra) as kafka:
        where = await publish(kafka, SUBMITTED, raw, str(uuid4()))
        await publish(kafka, SUBMITTED, envelope(SUBMITTED, after), after["application_id"], partition=where.partition)
        [headers] = await eventually(lambda: _dead_letter_headers(kafka, raw), what="the garbage on the DLQ")
        await outcome(kafka, ACCEPTED, after["application_id"])

    assert headers["x-error-code"] == "invalid_json"
    assert headers["x-error-detail"]
    assert headers["x-original-topic"] == SUBMITTED
    assert headers["x-original-partition"] == str(where.partition)
    assert headers["x-original-offset"] == str(where.offset)


def _type_mismatch(data: dict[str, Any]) -> dict[str, Any]:
    sent = envelope(SUBMITTED, data)
    sent["type"] = ACCEPTED
    return sent


def _unknown_field(data: dict[str, Any]) -> dict[str, Any]:
    data["person"]["middle_name"] = "Secretname"
    return envelope(SUBMITTED, data)


def _missing_specversion(data: dict[str, Any]) -> dict[str, Any]:
    sent = envelope(SUBMITTED, data)
    del sent["specversion"]
    return sent


BAD_BUT_ADDRESSABLE = {
    "missing_specversion": (_missing_specversion, "invalid_envelope", "specversion"),
    "type_mismatch": (_type_mismatch, "type_mismatch", "type"),
    "unknown_field": (_unknown_field, "invalid_payload", "person.middle_name"),
}


@pytest.mark.parametrize("case", list(BAD_BUT_ADDRESSABLE))
async def test_invalid_submission_with_readable_application_id_is_dead_lettered_and_rejected(infra: Infra, case: str):
    build, error_code, field = BAD_BUT_ADDRESSABLE[case]
    data = submission()
    sent = build(data)
    raw = json.dumps(sent).encode()
    after = submission()
    async with collector(infra) as kafka:
        where = await publish(kafka, SUBMITTED, raw, data["application_id"])
        await publish(kafka, SUBMITTED, envelope(SUBMITTED, after), after["application_id"], partition=where.partition)
        [headers] = await eventually(lambda: _dead_letter_headers(kafka, raw), what="the bad submission on the DLQ")
        [rejected] = await outcome(kafka, REJECTED, data["application_id"])
        await outcome(kafka, ACCEPTED, after["application_id"])

    assert headers["x-error-code"] == error_code
    assert headers["x-original-topic"] == SUBMITTED
    assert headers["x-original-partition"] == str(where.partition)
    assert headers["x-original-offset"] == str(where.offset)
    assert rejected["correlationid"] == sent["correlationid"]
    assert rejected["causationid"] == sent["id"]
    [reason] = rejected["data"]["reasons"]
    assert reason["code"] == "invalid_payload"
    assert reason["field"] == field
    # Error texts name fields and rules, never the values sent in them.
    for text in (headers["x-error-detail"], reason["message"]):
        assert "Secretname" not in text
        assert data["identity_document"]["number"] not in text


async def test_no_plaintext_personal_data_at_rest_or_in_the_log(
    infra: Infra, database: asyncpg.Connection, registration: ServiceRunner
):
    given_name = f"Given{uuid4().hex[:10]}"
    number = uuid4().hex[:10].upper()
    data = submission(person__given_name=given_name, identity_document__number=f"{number[:5]} {number[5:]}")
    async with collector(infra) as kafka:
        await kafka.send(SUBMITTED, envelope(SUBMITTED, data), data["application_id"])
        [event] = await outcome(kafka, ACCEPTED, data["application_id"])

    stored = await database.fetchval(
        "SELECT c::text || a::text FROM registration.cases c JOIN registration.applications a USING (application_id) "
        "WHERE c.case_id = $1::uuid",
        event["data"]["case_id"],
    )
    assert stored is not None
    for secret in (given_name, number, data["identity_document"]["number"]):
        assert secret.lower() not in stored.lower()
        assert not any(secret in line for line in registration.lines)


async def test_a_withdrawn_case_frees_its_identity_for_a_new_application(infra: Infra, database):
    """Contract v1.1: `duplicate_registration` is about open or paid cases; a withdrawn one does not
    block its identity."""
    number = uuid4().hex[:8].upper()
    first, while_open, after = (submission(identity_document__number=number) for _ in range(3))
    async with collector(infra) as kafka:
        await kafka.send(SUBMITTED, envelope(SUBMITTED, first), first["application_id"])
        [opened] = await outcome(kafka, ACCEPTED, first["application_id"])
        await kafka.send(SUBMITTED, envelope(SUBMITTED, while_open), while_open["application_id"])
        [duplicate] = await outcome(kafka, REJECTED, while_open["application_id"])
        case_id = opened["data"]["case_id"]
        withdrawn = envelope(CaseWithdrawn.TOPIC, {
            "case_id": case_id, "request_id": str(uuid4()), "booking_cancelled": False,
            "withdrawn_at": now().isoformat(),
        }, source="homeward/arrival")  # fmt: skip
        await kafka.send(CaseWithdrawn.TOPIC, withdrawn, case_id)
        await kafka.send(CaseWithdrawn.TOPIC, {**withdrawn, "id": str(uuid4())}, case_id)  # told twice
        await eventually(
            lambda: database.fetchval("SELECT withdrawn_at FROM registration.cases WHERE case_id = $1::uuid", case_id),
            what="the case marked withdrawn",
        )
        await kafka.send(SUBMITTED, envelope(SUBMITTED, after), after["application_id"])
        [reopened] = await outcome(kafka, ACCEPTED, after["application_id"])

    assert duplicate["data"]["duplicate_of_case_id"] == case_id
    assert reopened["data"]["identity_key"] == opened["data"]["identity_key"]
    assert reopened["data"]["case_id"] != case_id
    claim = await database.fetchval("SELECT case_id FROM registration.identity_claims WHERE identity_key = $1",
                                    opened["data"]["identity_key"])  # fmt: skip
    assert str(claim) == reopened["data"]["case_id"]
