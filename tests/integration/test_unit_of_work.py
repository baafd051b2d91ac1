"""The unit of work owns its transaction: leaving the block writes the outbox and commits; an
error anywhere, in the block or in writing the outbox, leaves nothing behind."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from uuid import UUID, uuid4

import asyncpg
import pytest

from contracts.events import RegistrationAccepted
from services.runtime.db import init_connection, runtime_queries
from services.runtime.ids import new_id
from services.runtime.migrate import migrate
from services.runtime.uow import ServiceDatabase
from tests.conftest import Infra
from tests.integration.helpers import new_database, now, until_waiting_on_a_lock

pytestmark = [pytest.mark.integration]


class Refused(Exception):
    pass


@pytest.fixture
async def database(infra: Infra) -> AsyncIterator[ServiceDatabase]:
    url = new_database(infra, "uow")
    await asyncio.to_thread(migrate, url, "registration")
    pool = await asyncpg.create_pool(
        url, min_size=1, max_size=4, server_settings={"search_path": "registration"}, init=init_connection
    )
    try:
        opens = frozenset({RegistrationAccepted.TOPIC})
        yield ServiceDatabase(pool, "registration", runtime_queries(), redrive_topics=opens)
    finally:
        await pool.close()


def accepted() -> RegistrationAccepted:
    return RegistrationAccepted(
        case_id=uuid4(), application_id=uuid4(), identity_key="a" * 64, destination_country="HN",
        destination_airport="TGU", origin_airport="IAH", accepted_at=now(), sealed="sealed",
    )  # fmt: skip


async def count(database: ServiceDatabase, table: str) -> int:
    async with database.pool.acquire() as connection:
        found: int = await connection.fetchval(f"SELECT count(*) FROM {table}")
        return found


async def test_leaving_the_block_writes_the_outbox_in_order_and_opens_the_case(database: ServiceDatabase) -> None:
    events = [accepted() for _ in range(5)]
    async with database.unit() as uow:
        for event in events:
            uow.emit(event, correlationid=uuid4(), causationid=None)
        assert await count(database, "outbox") == 0, "nothing is visible before the commit"
    async with database.pool.acquire() as connection:
        keys = [row["key"] for row in await connection.fetch("SELECT key FROM outbox ORDER BY id")]
    assert keys == [str(event.case_id) for event in events]
    assert await count(database, "open_cases") == len(events)


async def test_an_error_in_the_block_rolls_everything_back(database: ServiceDatabase) -> None:
    with pytest.raises(Refused):
        async with database.unit() as uow:
            await uow.connection.execute("INSERT INTO open_cases (case_key) VALUES ('written, then undone')")
            uow.emit(accepted(), correlationid=uuid4(), causationid=None)
            raise Refused
    assert await count(database, "outbox") == 0
    assert await count(database, "open_cases") == 0


async def test_an_outbox_that_cannot_be_written_undoes_the_block(database: ServiceDatabase) -> None:
    broken = ServiceDatabase(database.pool, "registration", None)  # no queries: writing the outbox fails
    with pytest.raises(AttributeError):
        async with broken.unit() as uow:
            await uow.connection.execute("INSERT INTO open_cases (case_key) VALUES ('written, then undone')")
            uow.emit(accepted(), correlationid=uuid4(), causationid=None)
    assert await count(database, "open_cases") == 0
    # The connection went back to the pool healthy, outside any transaction.
    async with database.pool.acquire() as connection:
        assert not connection.is_in_transaction()


async def test_batches_touching_the_same_case_take_turns(database: ServiceDatabase) -> None:
    """Replicas: a batch that touches a case another batch holds waits for that one's commit, so
    it sees what the other wrote (a batch on other cases does not wait)."""
    a, b, c, z = (new_id() for _ in range(4))
    async with database.unit() as first:
        await first.lock_cases([a, b])
        async with database.unit() as elsewhere:
            await elsewhere.lock_cases([c, "not-a-uuid"])  # not held: no wait
        waiting = asyncio.create_task(_locked_later(database, [z, a]))
        await until_waiting_on_a_lock(database.pool, "a batch on case-a to wait while another holds it")
        assert not waiting.done()
    await asyncio.wait_for(waiting, 5)


async def test_another_service_never_waits_for_a_case_this_one_holds(database: ServiceDatabase) -> None:
    """Advisory locks are the whole database's: each service locks its cases in a class of its own,
    so travel closing a case never waits for disbursement paying it."""
    case_id = new_id()
    travel = replace(database, service="travel")
    async with database.unit() as registration:
        await registration.lock_cases([case_id])
        async with travel.unit() as elsewhere:
            await asyncio.wait_for(elsewhere.lock_cases([case_id]), 5)


async def _locked_later(database: ServiceDatabase, cases: list[UUID]) -> None:
    async with database.unit() as second:
        await second.lock_cases(cases)
