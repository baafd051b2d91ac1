"""Migrations that change data, run on a real PostgreSQL holding rows written before them."""

import asyncio
import hashlib
from datetime import UTC, datetime
from uuid import UUID, uuid4

import asyncpg
import psycopg
import pytest
from yoyo import get_backend, read_migrations

from services.runtime.messages import Record, Undeliverable
from services.runtime.migrate import RUNTIME_MIGRATIONS, _yoyo_url, migrate, migrations_dir
from tests.conftest import Infra
from tests.integration.helpers import new_database

pytestmark = [pytest.mark.integration]

SERVICE = "arrival"


def migrate_until(database_url: str, last: str) -> None:
    """Applies the service's migrations in their order, up to and including `last`."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{SERVICE}"')
    backend = get_backend(_yoyo_url(database_url, SERVICE))
    migrations = read_migrations(str(RUNTIME_MIGRATIONS), str(migrations_dir(SERVICE)))
    ids = [migration.id for migration in migrations]
    wanted = migrations.filter(lambda migration: ids.index(migration.id) <= ids.index(last))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(wanted))


async def test_the_inbox_keeps_every_key_it_had_when_keyed_by_uuid(infra: Infra) -> None:
    url = new_database(infra, "inbox_uuid")
    await asyncio.to_thread(migrate_until, url, "0003_runtime_outbox_notify")
    event_id, broken_at = uuid4(), "arrival.evidence.v1:2:17"
    connection = await asyncpg.connect(url, server_settings={"search_path": SERVICE})
    try:
        await connection.executemany(
            "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)",
            [(SERVICE, str(event_id)), (SERVICE, broken_at), ("payout-callbacks", str(event_id))],
        )
        await asyncio.to_thread(migrate, url, SERVICE)

        keys = {row["event_id"] for row in await connection.fetch("SELECT event_id FROM processed_events")}
        # The record a broken key named is keyed now as the consumer keys it, so its redelivery
        # is still a duplicate; the event claimed under two names is one row.
        broken = Undeliverable(Record("arrival.evidence.v1", 2, 17, None, b"{"), "invalid_json", "unreadable")
        assert keys == {event_id, broken.inbox_key}
        assert broken.inbox_key == UUID(hashlib.md5(broken_at.encode()).hexdigest())
        claimed = await connection.fetch(
            "INSERT INTO processed_events (event_id) VALUES ($1), ($2) ON CONFLICT DO NOTHING RETURNING event_id",
            event_id,
            broken.inbox_key,
        )
        assert claimed == []
    finally:
        await connection.close()


async def test_dead_letter_copies_already_published_are_deleted_and_the_rest_marked(infra: Infra) -> None:
    url = new_database(infra, "dead_letters")
    await asyncio.to_thread(migrate_until, url, "0004_runtime_inbox_uuid")
    connection = await asyncpg.connect(url, server_settings={"search_path": SERVICE})
    try:
        await connection.executemany(
            "INSERT INTO outbox (topic, key, value, sent_at) VALUES ($1, $2, $3, $4)",
            [
                ("arrival.evidence.v1.dlq", "sent", b"{personal}", datetime.now(UTC)),
                ("arrival.evidence.v1.dlq", "waiting", b"{personal}", None),
                ("arrival.verified.v1", "event", b"{}", datetime.now(UTC)),
            ],
        )
        await asyncio.to_thread(migrate, url, SERVICE)
        rows = await connection.fetch("SELECT key, dead_letter, sealed FROM outbox ORDER BY id")
    finally:
        await connection.close()
    assert [tuple(row) for row in rows] == [("waiting", True, False), ("event", False, False)]
