"""The payout provider's callbacks as disbursement receives them over HTTP: unsigned, mis-signed and
stale ones are refused and counted; a signed `payout.returned` reverses the stipend exactly once."""

import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from services.disbursement import domain
from tests.conftest import Infra
from tests.integration.helpers import (
    DISBURSED,
    STIPEND_FAILED,
    Collector,
    ledger_breaches,
    outbox_count,
    send_pair,
    signed_headers,
    start_service,
)
from tests.support import ServiceRunner, eventually, outbound_and_dlq_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("disbursement")]

STIPEND_WAIT_SECONDS = 30.0
CLIENT_TIMEOUT_SECONDS = 10.0
STALE_SECONDS = 600


@pytest.fixture(scope="module")
def disbursement(infra: Infra) -> Iterator[ServiceRunner]:
    yield from start_service("disbursement", infra)


@pytest.fixture
async def endpoint(infra: Infra) -> AsyncIterator[httpx.AsyncClient]:
    """Where the provider sends its callbacks: disbursement's callback port."""
    base_url = f"http://127.0.0.1:{infra.callback_port}"
    async with httpx.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT_SECONDS) as client:
        yield client


def notification(
    kind: str, payment_id: str, provider_ref: str, *, notification_id: str | None = None, amount: str = "1000.00"
) -> bytes:
    """A notification as the provider words it."""
    return json.dumps(
        {
            "id": notification_id or str(uuid4()),
            "type": kind,
            "key": payment_id,
            "provider_ref": provider_ref,
            "status": {"payout.returned": "returned", "payout.settled": "paid"}.get(kind, "declined"),
            "amount": amount,
            "currency": "USD",
            "occurred_at": "2025-06-01T12:00:00+00:00",
        },
        separators=(",", ":"),
    ).encode()


async def health(infra: Infra) -> dict[str, Any]:
    """Disbursement's /health, on its own port (not the callbacks')."""
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        response = await client.get(f"http://127.0.0.1:{infra.http_port}/health")
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


async def refused_counts(infra: Infra) -> dict[str, int]:
    counts: dict[str, int] = (await health(infra))["callbacks_refused"]
    return counts


async def paid_stipend(kafka: Any, infra: Infra, case_id: UUID) -> dict[str, Any]:
    """Sends a case's acceptance and verified arrival; its `stipend.disbursed.v1`, once paid."""
    await send_pair(kafka, infra, case_id)
    [paid] = await eventually(
        lambda: kafka.events(DISBURSED, case_id=str(case_id)), timeout=STIPEND_WAIT_SECONDS, what="the stipend"
    )
    return paid


async def post(endpoint: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await endpoint.post("/callbacks/payouts", content=body, headers=headers)


async def test_unsigned_mis_signed_and_stale_callbacks_are_refused_and_counted(
    infra: Infra, endpoint: httpx.AsyncClient, database: asyncpg.Connection
):
    payment_id = str(uuid4())
    body = notification("payout.returned", payment_id, "SBXPAY-FORGED")
    before = await refused_counts(infra)

    unsigned = await post(endpoint, body, {"Content-Type": "application/json"})
    wrong_secret = await post(endpoint, body, signed_headers(secrets.token_hex(32), body))
    stale = await post(
        endpoint, body, signed_headers(infra.callback_secret, body, timestamp=int(time.time()) - STALE_SECONDS)
    )
    # A signature over another body does not carry over to this one.
    tampered = await post(
        endpoint, body, signed_headers(infra.callback_secret, notification("payout.settled", payment_id, "X"))
    )

    answers = [
        (response.status_code, response.json()["error"]) for response in (unsigned, wrong_secret, stale, tampered)
    ]
    assert answers == [
        (401, "missing_signature"),
        (401, "bad_signature"),
        (401, "stale_timestamp"),
        (401, "bad_signature"),
    ]
    after = await refused_counts(infra)
    grown = {reason: after.get(reason, 0) - before.get(reason, 0) for reason in after}
    assert {reason: count for reason, count in grown.items() if count} == {
        "missing_signature": 1,
        "bad_signature": 2,
        "stale_timestamp": 1,
    }
    recorded = await database.fetchval(
        "SELECT count(*) FROM disbursement.payout_callbacks WHERE notification_id = $1", json.loads(body)["id"]
    )
    assert recorded == 0


async def test_a_signed_callback_that_is_not_a_notification_is_refused(infra: Infra, endpoint: httpx.AsyncClient):
    body = b'{"type": "payout.exploded"}'
    response = await post(endpoint, body, signed_headers(infra.callback_secret, body))
    assert (response.status_code, response.json()["error"]) == (400, "malformed_notification")


async def test_callbacks_and_metrics_are_served_on_ports_of_their_own(infra: Infra, endpoint: httpx.AsyncClient):
    """The provider reaches the callbacks and nothing else; the scraper, the metrics and no callback."""
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        callbacks_beside_metrics = await client.post(f"http://127.0.0.1:{infra.http_port}/callbacks/payouts")
        metrics = await client.get(f"http://127.0.0.1:{infra.http_port}/metrics")
    assert (callbacks_beside_metrics.status_code, metrics.status_code) == (404, 200)
    assert [(await endpoint.get(path)).status_code for path in ("/metrics", "/health", "/ready")] == [404] * 3


async def test_a_signed_notification_without_an_id_is_a_bad_request(infra: Infra, endpoint: httpx.AsyncClient):
    document = json.loads(notification("payout.settled", str(uuid4()), "SBXPAY-1"))
    del document["id"]
    body = json.dumps(document).encode()
    response = await post(endpoint, body, signed_headers(infra.callback_secret, body))
    assert (response.status_code, response.json()["error"]) == (400, "malformed_notification")


async def test_a_body_over_the_bound_is_refused_as_it_streams_in(infra: Infra, endpoint: httpx.AsyncClient):
    before = (await refused_counts(infra)).get("body_too_large", 0)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the bound holds while reading
        for _ in range(3):
            yield b" " * (512 * 1024)

    streamed = await endpoint.post("/callbacks/payouts", content=chunks(), headers={"Content-Type": "application/json"})
    declared = await post(endpoint, b" " * (1024 * 1024 + 1), {"Content-Type": "application/json"})
    assert [(r.status_code, r.json()["error"]) for r in (streamed, declared)] == [(413, "body_too_large")] * 2
    assert (await refused_counts(infra))["body_too_large"] == before + 2


async def test_a_notification_for_another_amount_is_never_applied_and_holds_nothing_up(
    infra: Infra, endpoint: httpx.AsyncClient, database: asyncpg.Connection
):
    case_id = uuid4()
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        paid = await paid_stipend(kafka, infra, case_id)
        payment_id, provider_ref = paid["data"]["payment_id"], paid["data"]["provider_ref"]
        odd = notification("payout.returned", payment_id, provider_ref, amount="1.00")
        assert (await post(endpoint, odd, signed_headers(infra.callback_secret, odd))).status_code == 200
        refused = await eventually(
            lambda: database.fetchval(
                "SELECT refused_reason FROM disbursement.payout_callbacks WHERE notification_id = $1",
                json.loads(odd)["id"],
            ),
            timeout=STIPEND_WAIT_SECONDS, what="the odd notification set aside",
        )  # fmt: skip
        assert refused == "amount_mismatch"
        status = await database.fetchval("SELECT status FROM disbursement.payments WHERE case_id = $1", case_id)
        assert status == "disbursed"
        # The payment's genuine notification comes next and is applied.
        body = notification("payout.returned", payment_id, provider_ref)
        assert (await post(endpoint, body, signed_headers(infra.callback_secret, body))).status_code == 200
        await eventually(
            lambda: kafka.events(STIPEND_FAILED, case_id=str(case_id)), timeout=STIPEND_WAIT_SECONDS, what="failed"
        )
    assert await outbox_count(database, "disbursement", STIPEND_FAILED, str(case_id)) == 1
    assert await ledger_breaches(infra.database_url, infra.payouts_url) == []


async def test_a_returned_payout_reverses_the_stipend_once(
    infra: Infra, endpoint: httpx.AsyncClient, database: asyncpg.Connection
):
    case_id = uuid4()
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        paid = await paid_stipend(kafka, infra, case_id)
        payment_id, provider_ref = paid["data"]["payment_id"], paid["data"]["provider_ref"]
        applied_before = (await health(infra))["callbacks_applied"]
        body = notification("payout.returned", payment_id, provider_ref)

        response = await post(endpoint, body, signed_headers(infra.callback_secret, body))
        assert (response.status_code, response.json()) == (200, {"status": "accepted"})
        [failed] = await eventually(
            lambda: kafka.events(STIPEND_FAILED, case_id=str(case_id)), timeout=STIPEND_WAIT_SECONDS, what="failed"
        )
        # The provider sends the same notification again (its answer was lost), freshly signed.
        again = await post(endpoint, body, signed_headers(infra.callback_secret, body))
        assert again.status_code == 200

    assert (failed["data"]["reason"], failed["data"]["payment_id"]) == (domain.FAILED_RETURNED, payment_id)
    assert failed["correlationid"] == paid["correlationid"]
    payment = await database.fetchrow("SELECT * FROM disbursement.payments WHERE case_id = $1", case_id)
    assert payment is not None
    assert (payment["status"], payment["last_error"]) == ("returned", domain.FAILED_RETURNED)
    assert await transfer_kinds(database, payment_id) == [
        ("pending", domain.reserve_transfer_id(UUID(payment_id), 1)),
        ("post_pending", domain.post_transfer_id(UUID(payment_id))),
        ("single_phase", domain.return_transfer_id(UUID(payment_id))),
    ]
    assert await outbox_count(database, "disbursement", STIPEND_FAILED, str(case_id)) == 1
    # Applied once: one notification on record, and the repeat changed nothing (one reversal, one event).
    applied = await database.fetch(
        "SELECT applied_at, refused_reason FROM disbursement.payout_callbacks WHERE notification_id = $1",
        json.loads(body)["id"],
    )
    assert [(row["applied_at"] is not None, row["refused_reason"]) for row in applied] == [(True, None)]
    assert (await health(infra))["callbacks_applied"] >= applied_before + 1
    assert await ledger_breaches(infra.database_url, infra.payouts_url) == []


async def test_a_callback_for_an_unknown_payment_changes_nothing(
    infra: Infra, endpoint: httpx.AsyncClient, database: asyncpg.Connection
):
    payment_id = str(uuid4())
    body = notification("payout.returned", payment_id, "SBXPAY-UNKNOWN")
    await post(endpoint, body, signed_headers(infra.callback_secret, body))
    assert await transfer_kinds(database, payment_id) == []
    assert (
        await database.fetchval("SELECT count(*) FROM disbursement.payments WHERE payment_id = $1", UUID(payment_id))
        == 0
    )


async def test_a_batch_of_callbacks_is_recorded_at_once_and_unknown_payments_are_named(
    infra: Infra, endpoint: httpx.AsyncClient, database: asyncpg.Connection
):
    case_id = uuid4()
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        paid = await paid_stipend(kafka, infra, case_id)
        payment_id, provider_ref = paid["data"]["payment_id"], paid["data"]["provider_ref"]
        returned = json.loads(notification("payout.returned", payment_id, provider_ref))
        stranger = json.loads(notification("payout.settled", str(uuid4()), "SBXPAY-STRANGER"))
        body = json.dumps({"notifications": [returned, stranger]}).encode()

        response = await post(endpoint, body, signed_headers(infra.callback_secret, body))
        assert (response.status_code, response.json()) == (
            200, {"accepted": [returned["id"]], "unknown": [stranger["id"]]},
        )  # fmt: skip
        again = await post(endpoint, body, signed_headers(infra.callback_secret, body))
        assert again.json()["accepted"] == [returned["id"]]
        [failed] = await eventually(
            lambda: kafka.events(STIPEND_FAILED, case_id=str(case_id)), timeout=STIPEND_WAIT_SECONDS, what="failed"
        )
    assert failed["data"]["reason"] == domain.FAILED_RETURNED
    recorded = await database.fetch(
        "SELECT notification_id, applied_at IS NOT NULL AS applied FROM disbursement.payout_callbacks"
        " WHERE notification_id = ANY($1::text[])",
        [returned["id"], stranger["id"]],
    )
    assert [(row["notification_id"], row["applied"]) for row in recorded] == [(returned["id"], True)]


async def transfer_kinds(database: asyncpg.Connection, payment_id: str) -> list[tuple[str, str]]:
    rows = await database.fetch(
        "SELECT kind, transfer_id FROM disbursement.transfers WHERE payment_id = $1::uuid ORDER BY seq", payment_id
    )
    return [(row["kind"], row["transfer_id"]) for row in rows]
