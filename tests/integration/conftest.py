"""A connection to the services' PostgreSQL, for reading the rows they wrote."""

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.conftest import Infra


@pytest.fixture
async def database(infra: Infra) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(infra.database_url)
    try:
        yield connection
    finally:
        await connection.close()
