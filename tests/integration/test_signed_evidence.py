"""Signed evidence (contract v1.1) against the real broker and PostgreSQL: arrival counts evidence
only when a registered, unrevoked signer for its source (and office) signed its exact bytes;
everything else is dead-lettered as `evidence_unauthenticated` and never counts.

Each refused piece is a checked partner-office record, which alone would verify its case: so a
refusal that leaked would show as a verification (or as a stored evidence row)."""

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts.signing import SIGNATURE_HEADER, SIGNER_HEADER, public_key_pem, sign, signature_headers
from services.arrival.adapters import signers
from services.runtime.db import connect
from tests.conftest import Infra
from tests.integration.helpers import EVIDENCE, VERIFIED, Collector, now, outbox_count, partner_office, start_service
from tests.integration.test_arrival import collector, new_case, open_case, verification
from tests.support import TEST_SIGNERS, ServiceRunner, envelope, eventually, homeward_cli

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("arrival")]

Headers = list[tuple[str, bytes]]


@pytest.fixture(scope="module")
def arrival(infra: Infra) -> Iterator[ServiceRunner]:
    yield from start_service("arrival", infra)


async def register(infra: Infra, source: str, *, office_code: str | None = None) -> tuple[str, Ed25519PrivateKey]:
    """A new signer of its own for one test, registered as `homeward signers add` does."""
    signer_id, key = f"{source}-{uuid4().hex[:8]}", Ed25519PrivateKey.generate()
    connection = await connect(infra.database_url, schema="arrival")
    try:
        await signers.add(connection, signer_id, source, public_key_pem(key), office_code)
    finally:
        await connection.close()
    return signer_id, key


async def revoke(infra: Infra, signer_id: str) -> None:
    connection = await connect(infra.database_url, schema="arrival")
    try:
        await signers.revoke(connection, signer_id)
    finally:
        await connection.close()


def office_evidence(case_id: Any, *, office_code: str = "TGU-01") -> tuple[dict[str, Any], bytes]:
    data = partner_office(case_id, observed_at=now()) | {"office_code": office_code}
    return data, json.dumps(envelope(EVIDENCE, data, source="partner-office")).encode()


async def send(kafka: Collector, value: bytes, key: str, headers: Headers | None) -> None:
    await kafka.producer.send_and_wait(EVIDENCE, value, key=key.encode(), headers=headers)


async def dead_letter(kafka: Collector, value: bytes) -> dict[str, str]:
    [(headers, _)] = await eventually(
        lambda: [(h, v) for h, v in kafka.dead_letters(EVIDENCE) if v == value], what="evidence dead letter"
    )
    return headers


async def stored(database: asyncpg.Connection, evidence_id: str) -> bool:
    found = await database.fetchval("SELECT count(*) FROM arrival.evidence WHERE evidence_id = $1", evidence_id)
    return bool(found)


async def assert_refused(kafka: Collector, database: asyncpg.Connection, case: Any, data: dict[str, Any],
                         value: bytes, reason: str) -> None:  # fmt: skip
    headers = await dead_letter(kafka, value)
    assert headers["x-error-code"] == "evidence_unauthenticated"
    assert headers["x-error-detail"].startswith(reason), headers["x-error-detail"]
    assert headers["x-original-topic"] == EVIDENCE
    assert not await stored(database, data["evidence_id"])
    assert await outbox_count(database, "arrival", VERIFIED, case.key) == 0


def carrier_signed(value: bytes) -> Headers:
    signer_id, key = TEST_SIGNERS["carrier"]
    return signature_headers(signer_id, key, value)


OFFICE_SIGNER = TEST_SIGNERS["partner_office"][0].encode()


def unsigned(value: bytes) -> Headers | None:
    return None


def without_signer(value: bytes) -> Headers:
    return [header for header in carrier_signed(value) if header[0] == SIGNATURE_HEADER]


def signed_over_other_bytes(value: bytes) -> Headers:
    return [
        (SIGNER_HEADER, OFFICE_SIGNER),
        (SIGNATURE_HEADER, sign(TEST_SIGNERS["partner_office"][1], b"other").encode()),
    ]


def by_an_unknown_signer(value: bytes) -> Headers:
    return signature_headers("nobody-registered-this", Ed25519PrivateKey.generate(), value)


def malformed(value: bytes) -> Headers:
    return [(SIGNER_HEADER, OFFICE_SIGNER), (SIGNATURE_HEADER, b"x" * 10)]


async def test_evidence_signed_by_its_sources_signer_counts(infra: Infra, database):
    case = new_case(infra)
    signer_id, key = await register(infra, "partner_office")
    data, value = office_evidence(case.case_id)
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        await send(kafka, value, case.key, signature_headers(signer_id, key, value))
        event = await verification(kafka, case)
    assert event["data"]["evidence_ids"] == [data["evidence_id"]]


@pytest.mark.parametrize(
    ("reason", "headers_for"),
    [
        ("missing_signature", unsigned),
        ("missing_signature", without_signer),
        ("wrong_source", carrier_signed),  # a carrier's key on a partner office's record
        ("bad_signature", signed_over_other_bytes),
        ("unknown_signer", by_an_unknown_signer),
        ("malformed_signature", malformed),
    ],
    ids=["unsigned", "no-signer-header", "another-sources-key", "bad-signature", "unknown-signer", "malformed"],
)
async def test_evidence_not_signed_by_a_registered_signer_never_counts(infra: Infra, database, reason, headers_for):
    case = new_case(infra)
    data, value = office_evidence(case.case_id)
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        await send(kafka, value, case.key, headers_for(value))
        await assert_refused(kafka, database, case, data, value, reason)


async def test_a_signature_over_other_bytes_does_not_verify(infra: Infra, database):
    """Signed, then changed in transit: the signature covers the exact bytes."""
    case = new_case(infra)
    signer_id, key = await register(infra, "partner_office")
    data, value = office_evidence(case.case_id)
    tampered = value.replace(b'"officer-7"', b'"officer-8"')
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        await send(
            kafka,
            tampered,
            case.key,
            [(SIGNER_HEADER, signer_id.encode()), (SIGNATURE_HEADER, sign(key, value).encode())],
        )
        await assert_refused(kafka, database, case, data, tampered, "bad_signature")


async def test_a_revoked_signer_counts_until_its_revocation_time_only(infra: Infra, database):
    signer_id, key = await register(infra, "partner_office")
    before, after = new_case(infra), new_case(infra)
    async with collector(infra) as kafka:
        await open_case(kafka, database, before)
        await open_case(kafka, database, after)
        _, value = office_evidence(before.case_id)
        await send(kafka, value, before.key, signature_headers(signer_id, key, value))
        await verification(kafka, before)  # received before T: counts, and stays counted
        await revoke(infra, signer_id)
        data, value = office_evidence(after.case_id)
        await send(kafka, value, after.key, signature_headers(signer_id, key, value))
        await assert_refused(kafka, database, after, data, value, "revoked_signer")


async def test_an_office_bound_signer_counts_only_for_its_office(infra: Infra, database):
    signer_id, key = await register(infra, "partner_office", office_code="GUA-01")
    own, other = new_case(infra), new_case(infra)
    async with collector(infra) as kafka:
        await open_case(kafka, database, own)
        await open_case(kafka, database, other)
        data, value = office_evidence(other.case_id, office_code="TGU-02")
        await send(kafka, value, other.key, signature_headers(signer_id, key, value))
        await assert_refused(kafka, database, other, data, value, "office_mismatch")
        _, value = office_evidence(own.case_id, office_code="GUA-01")
        await send(kafka, value, own.key, signature_headers(signer_id, key, value))
        await verification(kafka, own)


async def test_duplicate_signed_evidence_counts_once(infra: Infra, database):
    case = new_case(infra)
    signer_id, key = await register(infra, "partner_office")
    data, value = office_evidence(case.case_id)
    headers = signature_headers(signer_id, key, value)
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        for _ in range(3):
            await send(kafka, value, case.key, headers)
        await verification(kafka, case)
        # A second copy with a new envelope id but the same evidence id is the same evidence.
        again = json.loads(value) | {"id": str(uuid4())}
        raw = json.dumps(again).encode()
        await send(kafka, raw, case.key, signature_headers(signer_id, key, raw))
        await eventually(lambda: _processed(database, again["id"]), what="the second copy processed")
    assert (
        await database.fetchval("SELECT count(*) FROM arrival.evidence WHERE evidence_id = $1", data["evidence_id"])
        == 1
    )
    assert await outbox_count(database, "arrival", VERIFIED, case.key) == 1


async def test_a_forged_copy_sent_first_does_not_shadow_the_genuine_one(infra: Infra, database):
    """The refused copy is dead-lettered under its offsets, not its envelope id: the genuine record
    with the same id, coming after it, still counts."""
    case = new_case(infra)
    signer_id, key = await register(infra, "partner_office")
    data, value = office_evidence(case.case_id)
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        await send(kafka, value, case.key, None)
        await dead_letter(kafka, value)
        await send(kafka, value, case.key, signature_headers(signer_id, key, value))
        event = await verification(kafka, case)
    assert event["data"]["evidence_ids"] == [data["evidence_id"]]


async def _processed(database: asyncpg.Connection, event_id: str) -> bool:
    return bool(await database.fetchval("SELECT count(*) FROM arrival.processed_events WHERE event_id = $1", event_id))


async def test_evidence_refused_before_its_signer_was_registered_counts_once_replayed(infra: Infra, database):
    """Nobody owed goes unpaid: the dead-letter copy keeps the signature headers, so once the
    signer is registered an operator's `dlq replay` makes the genuine evidence count."""
    case = new_case(infra)
    signer_id, key = f"partner_office-{uuid4().hex[:8]}", Ed25519PrivateKey.generate()
    data, value = office_evidence(case.case_id)
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        await send(kafka, value, case.key, signature_headers(signer_id, key, value))
        headers = await dead_letter(kafka, value)
        assert headers["x-error-detail"].startswith("unknown_signer")
        assert headers["x-signer"] == signer_id and headers["x-signature"]
        connection = await connect(infra.database_url, schema="arrival")
        try:
            await signers.add(connection, signer_id, "partner_office", public_key_pem(key))
        finally:
            await connection.close()
        replayed = await asyncio.to_thread(
            homeward_cli, "dlq", "replay", "--topic", EVIDENCE, "--id", json.loads(value)["id"],
            HOMEWARD_KAFKA_BOOTSTRAP=infra.kafka_bootstrap, HOMEWARD_DATABASE_URL=infra.database_url,
            HOMEWARD_OPERATOR="tester",
        )  # fmt: skip
        assert replayed.returncode == 0, replayed.stderr
        event = await verification(kafka, case)
    assert event["data"]["evidence_ids"] == [data["evidence_id"]]


async def test_hostile_headers_and_keys_are_refused_without_stopping_the_partition(infra: Infra, database):
    """A NUL in `x-signer` or in the key (PostgreSQL text holds none) is one more refusal, coded as
    such; the genuine evidence behind it still counts."""
    case = new_case(infra)
    signer_id, key = await register(infra, "partner_office")
    hostile_data, hostile = office_evidence(case.case_id)
    _, genuine = office_evidence(case.case_id)
    async with collector(infra) as kafka:
        await open_case(kafka, database, case)
        signature = signature_headers(signer_id, key, hostile)[1]
        await send(kafka, hostile, case.key, [(SIGNER_HEADER, b"office\x00tgu"), signature])
        await kafka.producer.send_and_wait(EVIDENCE, hostile + b" ", key=b"\x00" + case.key.encode())
        await send(kafka, genuine, case.key, signature_headers(signer_id, key, genuine))
        await verification(kafka, case)
        codes = await eventually(
            lambda: [h["x-error-code"] for h, v in kafka.dead_letters(EVIDENCE) if v in (hostile, hostile + b" ")],
            what="both hostile records dead-lettered",
        )  # fmt: skip
    assert codes == ["evidence_unauthenticated", "evidence_unauthenticated"]
    assert not await stored(database, hostile_data["evidence_id"])
