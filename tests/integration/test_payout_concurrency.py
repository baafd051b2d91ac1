"""Fifty attempts at once to pay the same person: one stipend, one payout at the provider.

Once through the whole service (fifty cases carrying the same identity, accepted and verified
together) and once straight at the provider (fifty simultaneous requests with one idempotency key).
"""

import asyncio
import secrets
from collections.abc import Iterator
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import pytest

from services.disbursement import domain
from services.disbursement.adapters.provider import Payout
from tests.conftest import Infra
from tests.integration.helpers import (
    DISBURSED,
    MOBILE_MONEY,
    STIPEND_FAILED,
    Collector,
    Outcomes,
    logged_errors,
    pair,
    payout_provider,
    provider_payouts,
    publish_all,
    start_service,
)
from tests.support import ServiceRunner, eventually, outbound_and_dlq_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("disbursement")]

ATTEMPTS = 50
OUTCOME_WAIT_SECONDS = 60.0


@pytest.fixture(scope="module")
def disbursement(infra: Infra) -> Iterator[ServiceRunner]:
    yield from start_service("disbursement", infra)


async def test_fifty_cases_of_one_identity_are_paid_once(
    infra: Infra, database: asyncpg.Connection, disbursement: ServiceRunner
):
    identity_key = secrets.token_hex(32)
    cases = [uuid4() for _ in range(ATTEMPTS)]
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        outcomes = Outcomes(kafka, cases)
        await publish_all(
            kafka, [record for case_id in cases for record in pair(infra, case_id, identity_key=identity_key)]
        )
        try:
            await eventually(
                lambda: outcomes.decided() == ATTEMPTS, timeout=OUTCOME_WAIT_SECONDS, what="an outcome for every case"
            )
        except AssertionError as timeout:
            raise AssertionError(f"{timeout}; service errors: {logged_errors(disbursement)[-3:]}") from None
        paid, failed = outcomes.of(DISBURSED), outcomes.of(STIPEND_FAILED)

    assert len(paid) == 1 and [len(events) for events in paid.values()] == [1]
    [paid_case] = paid
    assert len(failed) == ATTEMPTS - 1 and paid_case not in failed
    assert {event["data"]["reason"] for events in failed.values() for event in events} == {domain.REFUSED_IDENTITY_PAID}
    payment_ids = {str(domain.payment_id_for(case_id)) for case_id in cases}
    at_provider = [payout for payout in await provider_payouts(infra.payouts_url) if payout.key in payment_ids]
    assert [payout.key for payout in at_provider] == [str(domain.payment_id_for(UUID(paid_case)))]
    assert at_provider[0].status == "paid"
    rows = await database.fetch(
        "SELECT case_id, status FROM disbursement.payments WHERE identity_key = $1", identity_key
    )
    assert [(str(row["case_id"]), row["status"]) for row in rows] == [(paid_case, "disbursed")]
    refusals = await database.fetchval(
        "SELECT count(*) FROM disbursement.refusals WHERE case_id = ANY($1::uuid[])", cases
    )
    assert refusals == ATTEMPTS - 1


async def test_fifty_simultaneous_requests_with_one_key_make_one_payout(infra: Infra):
    key = f"concurrency-{uuid4()}"
    provider = payout_provider(infra.payouts_url)

    async def pay() -> Payout:
        return await provider.pay(
            key=key, amount=Decimal("1000.00"), currency="USD", method="mobile_money", instrument=MOBILE_MONEY,
            resolve_first=False,
        )  # fmt: skip

    try:
        payouts = await asyncio.gather(*(pay() for _ in range(ATTEMPTS)))
    finally:
        await provider.close()

    assert len({payout.provider_ref for payout in payouts}) == 1
    assert {(payout.key, payout.status, payout.amount) for payout in payouts} == {(key, "paid", Decimal("1000.00"))}
    listed = [payout for payout in await provider_payouts(infra.payouts_url) if payout.key == key]
    assert [payout.provider_ref for payout in listed] == [payouts[0].provider_ref]
