"""A case gets one verdict: the window sweeper and an evidence batch deciding it at once cannot
both emit one, and the sweeper looks only at bookings still undecided."""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from services.arrival.app import SQL
from services.runtime.db import fetch_all, init_connection, load_queries
from services.runtime.migrate import migrate
from tests.conftest import Infra
from tests.integration.helpers import new_database, now, until_waiting_on_a_lock

pytestmark = [pytest.mark.integration]

WINDOW_SECONDS = 3600


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[asyncpg.Pool]:
    url = new_database(infra, "arrival_decisions")
    await asyncio.to_thread(migrate, url, "arrival")
    created = await asyncpg.create_pool(url, server_settings={"search_path": "arrival"}, init=init_connection)
    try:
        yield created
    finally:
        await created.close()


async def booked_long_ago(pool: asyncpg.Pool) -> UUID:
    case_id, landed = uuid4(), now() - timedelta(seconds=2 * WINDOW_SECONDS)
    await pool.execute(
        "INSERT INTO cases (case_id, correlationid, destination_country, accepted_event_id) VALUES ($1, $2, 'HN', $3)",
        case_id, uuid4(), uuid4(),
    )  # fmt: skip
    await pool.execute(
        "INSERT INTO bookings (case_id, flight_number, scheduled_departure, scheduled_arrival, booked_event_id)"
        " VALUES ($1, 'XH1', $2, $3, $4)",
        case_id, landed - timedelta(hours=5), landed, uuid4(),
    )  # fmt: skip
    return case_id


async def test_the_second_of_two_decisions_decides_nothing(pool: asyncpg.Pool) -> None:
    queries = load_queries(SQL)
    case_id = await booked_long_ago(pool)
    expired = await fetch_all(queries.expired_cases(pool, window_seconds=WINDOW_SECONDS, limit=10))
    assert [row["case_id"] for row in expired] == [case_id]

    async with pool.acquire() as first, pool.acquire() as second:
        async with first.transaction():
            won = await fetch_all(
                queries.decide(first, case_ids=[case_id], outcome="verified", rules=["carrier_and_app"])
            )
            # The other decides meanwhile; it waits for the first to commit, then finds the case taken.
            late = asyncio.create_task(
                fetch_all(queries.decide(second, case_ids=[case_id], outcome="rejected", rules=[None]))
            )
            await until_waiting_on_a_lock(pool, "the second decision to wait for the first")
            assert not late.done()
        lost = await late
    assert [row["case_id"] for row in won] == [case_id] and lost == []
    assert await pool.fetchval("SELECT outcome FROM outcomes WHERE case_id = $1", case_id) == "verified"
    assert await fetch_all(queries.expired_cases(pool, window_seconds=WINDOW_SECONDS, limit=10)) == []
