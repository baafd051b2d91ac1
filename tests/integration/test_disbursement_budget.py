"""Disbursement with a small budget: a stipend that does not fit is held, then paid after a top-up.

The budget is funded once per database by the service's first start, so this module gives the
process a database of its own (on the same server) with a budget of one and a half stipends. It
shares the consumer group "homeward-disbursement" with test_disbursement.py, whose process has
stopped by now and committed its offsets, so this one sees only the events published here.
Joining the group again takes tansu about 18 s, hence `slow`.
"""

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import psycopg
import pytest

from services.disbursement.app import queries
from tests.conftest import Infra
from tests.integration.helpers import (
    ACCEPTED,
    DISBURSED,
    HELD,
    VERIFIED,
    Collector,
    accepted,
    start_service,
    verified,
)
from tests.support import ServiceRunner, envelope, eventually, outbound_and_dlq_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("small_budget_disbursement")]

BUDGET = Decimal("1500.00")
STIPEND = Decimal("1000.00")


@pytest.fixture(scope="module")
def budget_database_url(infra: Infra) -> str:
    name = f"homeward_budget_{uuid4().hex[:8]}"
    with psycopg.connect(infra.database_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return infra.database_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
def small_budget_disbursement(infra: Infra, budget_database_url: str) -> Iterator[ServiceRunner]:
    yield from start_service(
        "disbursement", infra, HOMEWARD_DATABASE_URL=budget_database_url, HOMEWARD_PROGRAM_BUDGET=str(BUDGET)
    )


@pytest.fixture
async def ledger(budget_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(budget_database_url, server_settings={"search_path": "disbursement"})
    try:
        yield connection
    finally:
        await connection.close()


async def balance(ledger: asyncpg.Connection, code: str) -> Decimal:
    value: Decimal = await ledger.fetchval("SELECT balance FROM accounts WHERE code = $1", code)
    return value


async def pay(kafka: Collector, infra: Infra, case_id: UUID) -> dict[str, Any]:
    proven = envelope(VERIFIED, verified(case_id))
    await kafka.send(ACCEPTED, envelope(ACCEPTED, accepted(infra, case_id=case_id)), str(case_id))
    await kafka.send(VERIFIED, proven, str(case_id))
    return proven


async def test_stipend_beyond_the_budget_is_held_then_paid_after_a_top_up(infra: Infra, ledger: asyncpg.Connection):
    first, second = uuid4(), uuid4()
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        await pay(kafka, infra, first)
        await eventually(lambda: kafka.events(DISBURSED, case_id=str(first)), what="the first stipend")
        proven = await pay(kafka, infra, second)
        [held] = await eventually(lambda: kafka.events(HELD, case_id=str(second)), what="the second stipend held")

        assert held["data"]["reason"] == "budget_exhausted"
        assert held["causationid"] == proven["id"]
        assert await ledger.fetchval("SELECT status FROM payments WHERE case_id = $1", second) == "held"
        assert await balance(ledger, "program_budget") == BUDGET - STIPEND
        assert kafka.events(DISBURSED, case_id=str(second)) == []

        # An operator tops the budget up through the ledger, as a transfer from the funding account.
        async with ledger.transaction():
            moved = await queries().ledger.record_transfer(
                ledger,
                transfer_id=f"funding:top-up:{uuid4()}",
                from_account="program_funding",
                to_account="program_budget",
                amount=Decimal("500.00"),
                currency="USD",
                payment_id=None,
            )
        assert moved is not None
        [paid] = await eventually(lambda: kafka.events(DISBURSED, case_id=str(second)), what="the held stipend paid")

    assert paid["data"]["payment_id"] == held["data"]["payment_id"]
    assert paid["data"]["amount"] == "1000.00"
    balances = {row["code"]: row["balance"] for row in await ledger.fetch("SELECT code, balance FROM accounts")}
    assert balances["program_budget"] == Decimal("0.00")
    assert balances["stipends_paid"] == 2 * STIPEND
    assert sum(balances.values()) == 0
