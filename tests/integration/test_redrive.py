"""The re-drive sweeper on a real PostgreSQL: a case handed downstream whose progress stalls has
its hand-over events queued again, with a doubling deadline, until a downstream event closes it;
old sent events of closed cases are forgotten, those of open cases kept."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.runtime.db import runtime_queries
from services.runtime.migrate import migrate
from services.runtime.redrive import Redrive, RedriveSweeper
from tests.conftest import Infra
from tests.integration.helpers import new_database

pytestmark = [pytest.mark.integration]

ACCEPTED = "registration.accepted.v1"
REJECTED = "registration.rejected.v1"
AFTER_SECONDS = 60
CAP_SECONDS = 600
RETENTION_HOURS = 24


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[asyncpg.Pool]:
    url = new_database(infra, "redrive")
    await asyncio.to_thread(migrate, url, "registration")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2, server_settings={"search_path": "registration"})
    try:
        yield pool
    finally:
        await pool.close()


def sweeper(pool: asyncpg.Pool) -> RedriveSweeper:
    return RedriveSweeper(
        pool=pool, runtime_queries=runtime_queries(),
        redrive=Redrive(opens_on=frozenset({ACCEPTED}), closes_on=frozenset({"stipend.disbursed.v1"})),
        after_seconds=AFTER_SECONDS, cap_seconds=CAP_SECONDS, batch_size_max=100, retention_hours=RETENTION_HOURS,
    )  # fmt: skip


async def hand_over(pool: asyncpg.Pool, case: str, *, idle_seconds: int) -> None:
    """A case whose accepted event went out `idle_seconds` ago, with no sign of progress since."""
    async with pool.acquire() as connection:
        await runtime_queries().open_cases(connection, keys=[case])
        for topic in (ACCEPTED, REJECTED):  # only the hand-over topic is sent again
            await connection.execute(
                "INSERT INTO outbox (topic, key, value, sent_at) VALUES ($1, $2, '{}', now())", topic, case
            )
        await connection.execute(
            "UPDATE open_cases SET progressed_at = now() - make_interval(secs => $2) WHERE case_key = $1",
            case, float(idle_seconds),
        )  # fmt: skip


async def unsent(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT key, topic FROM outbox WHERE sent_at IS NULL ORDER BY key, topic")
    return [(row["key"], row["topic"]) for row in rows]


async def test_a_stalled_case_is_redriven_and_a_recent_or_closed_one_is_not(pool: asyncpg.Pool) -> None:
    await hand_over(pool, "stalled", idle_seconds=AFTER_SECONDS + 1)
    await hand_over(pool, "recent", idle_seconds=AFTER_SECONDS - 10)
    await hand_over(pool, "closed", idle_seconds=AFTER_SECONDS + 1)
    async with pool.acquire() as connection:
        await runtime_queries().close_cases(connection, keys=["closed"])

    assert await sweeper(pool).sweep() == 1
    assert await unsent(pool) == [("stalled", ACCEPTED)]
    assert await pool.fetchval("SELECT redrives FROM open_cases WHERE case_key = 'stalled'") == 1
    # Just re-driven: its clock restarted, so the next sweep leaves it alone.
    assert await sweeper(pool).sweep() == 0


async def test_the_deadline_doubles_with_each_redrive_up_to_the_cap(pool: asyncpg.Pool) -> None:
    await hand_over(pool, "case", idle_seconds=0)
    for redrives, waited, expected in [(1, AFTER_SECONDS * 2 - 5, 0), (1, AFTER_SECONDS * 2 + 5, 1),
                                       (6, CAP_SECONDS - 5, 0), (6, CAP_SECONDS + 5, 1)]:  # fmt: skip
        await pool.execute(
            "UPDATE open_cases SET redrives = $1, progressed_at = now() - make_interval(secs => $2)",
            redrives, float(waited),
        )  # fmt: skip
        assert await sweeper(pool).sweep() == expected, (redrives, waited)


async def test_old_sent_events_of_closed_cases_are_forgotten_and_open_ones_kept(pool: asyncpg.Pool) -> None:
    await hand_over(pool, "open", idle_seconds=0)
    await hand_over(pool, "closed", idle_seconds=0)
    async with pool.acquire() as connection:
        await runtime_queries().close_cases(connection, keys=["closed"])
    await pool.execute("UPDATE outbox SET sent_at = now() - make_interval(hours => $1)", RETENTION_HOURS + 1)

    await sweeper(pool).forget_old_events()
    assert await pool.fetchval("SELECT array_agg(DISTINCT key) FROM outbox") == ["open"]
