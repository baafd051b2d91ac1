"""The relay's wake-up on real PostgreSQL: a commit that writes outbox rows wakes the listener
(never before the commit), and a listener whose connection is killed comes back by itself."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest

from services.runtime.wakeup import Wakeup, outbox_channel
from tests.conftest import Infra
from tests.support import eventually

pytestmark = pytest.mark.integration

TRIGGER_SQL = (
    Path(__file__).resolve().parents[2] / "services" / "runtime" / "migrations" / "0003_runtime_outbox_notify.sql"
)
FALLBACK_SECONDS = 30.0
WOKEN_WITHIN_SECONDS = 5.0
NOT_WOKEN_SECONDS = 0.3


@pytest.fixture
async def schema(database: asyncpg.Connection) -> AsyncIterator[str]:
    """A schema of its own with an outbox and the runtime's notify trigger, so no service relays its rows."""
    name = f"wakeup_{uuid4().hex[:8]}"
    await database.execute(f'CREATE SCHEMA "{name}"; SET search_path = "{name}";'
                           "CREATE TABLE outbox (id bigint GENERATED ALWAYS AS IDENTITY, value text);")  # fmt: skip
    await database.execute(TRIGGER_SQL.read_text())
    await database.execute("RESET search_path")
    yield name
    await database.execute(f'DROP SCHEMA "{name}" CASCADE')


async def woken(wakeup: Wakeup, seconds: float) -> bool:
    started = time.monotonic()
    await wakeup.wait(asyncio.Event(), seconds)
    return time.monotonic() - started < seconds


async def test_a_commit_wakes_the_listener_and_an_open_transaction_does_not(
    infra: Infra, database: asyncpg.Connection, schema: str
):
    wakeup, stopping = Wakeup(infra.database_url, outbox_channel(schema)), asyncio.Event()
    listening = asyncio.create_task(wakeup.listen(stopping))
    try:
        await eventually(lambda: wakeup.listening, what="the listener")
        await wakeup.wait(stopping, NOT_WOKEN_SECONDS)  # the wake-up it gives itself on connecting
        async with database.transaction():
            await database.execute(f'INSERT INTO "{schema}".outbox (value) VALUES ($1), ($2)', "a", "b")
            assert not await woken(wakeup, NOT_WOKEN_SECONDS), "woken before the commit"
        assert await woken(wakeup, WOKEN_WITHIN_SECONDS)
    finally:
        stopping.set()
        await listening


async def test_a_killed_listener_connection_comes_back(infra: Infra, database: asyncpg.Connection, schema: str):
    wakeup, stopping = Wakeup(infra.database_url, outbox_channel(schema)), asyncio.Event()
    listening = asyncio.create_task(wakeup.listen(stopping))
    try:
        await eventually(lambda: wakeup.listening, what="the listener")
        killed = await database.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE $1",
            f'LISTEN "{outbox_channel(schema)}"%',
        )
        assert killed == 1
        await eventually(lambda: wakeup.listening and wakeup.sessions == 2, what="the listener back")
        await wakeup.wait(stopping, NOT_WOKEN_SECONDS)
        await database.execute(f'INSERT INTO "{schema}".outbox (value) VALUES ($1)', "c")
        assert await woken(wakeup, WOKEN_WITHIN_SECONDS)
    finally:
        stopping.set()
        await listening
